//! Domain types for buckets.
