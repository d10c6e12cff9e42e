//! Catalog queries for objects.
