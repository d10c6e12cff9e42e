//! Catalog queries for jobs.
