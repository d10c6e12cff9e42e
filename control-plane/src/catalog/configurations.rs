//! Catalog queries for configurations.
