//! Domain types for jobs.
