//! Coffer control plane: the catalog, the gRPC API, and (later) leasing and
//! scheduling. The binary in `main.rs` wires these together; tests use the
//! library directly to serve on ephemeral ports.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod error;
pub mod leasing;
pub mod model;
pub mod server;
pub mod startup;
#[doc(hidden)]
pub mod testing;
