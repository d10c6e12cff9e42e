//! Catalog queries for retention.
