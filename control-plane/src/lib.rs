//! Coffer control plane: the catalog, the gRPC API, leasing and the job
//! scheduler. The binary in `main.rs` wires these together; tests use the
//! library directly to serve on ephemeral ports.

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod console;
pub mod error;
pub mod healthcheck;
pub mod leasing;
pub mod model;
pub mod monitoring;
pub mod notifications;
pub mod runs;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod startup;
pub mod state;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod testing;
pub mod tls;
