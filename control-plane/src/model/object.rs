//! Domain types for objects.
