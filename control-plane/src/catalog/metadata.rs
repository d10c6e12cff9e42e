//! Catalog queries for metadata.
