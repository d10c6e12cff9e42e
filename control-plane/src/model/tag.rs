//! Domain types for tags.
