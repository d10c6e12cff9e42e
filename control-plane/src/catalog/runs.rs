//! Catalog queries for runs.
