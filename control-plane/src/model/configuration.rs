//! Domain types for configurations.
