//! Catalog queries for buckets.
