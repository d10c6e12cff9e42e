//! Domain types for retention.
