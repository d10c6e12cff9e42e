//! Domain types for runs.
