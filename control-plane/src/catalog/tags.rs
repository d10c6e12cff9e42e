//! Catalog queries for tags.
