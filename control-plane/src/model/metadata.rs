//! Domain types for metadata.
