//! Coffer worker library: reading source trees, writing to object stores and
//! running backups, restores and verifications. The binary (`main.rs`) drives
//! these from lease sessions.
//!
//! - [`runs`]: one module per run kind (backup, restore, verify, garbage
//!   collection, retention, catalog rebuild) and the attempt harness they share.
//! - [`repository`]: a repository in a store (config, index, manifests) and the
//!   packer that backup and garbage collection write packs through.
//! - [`source`] reads the tree to back up, [`store`] talks to the storage;
//!   [`paths`] checks every local path against its grant and the worker's
//!   roots, and opens entries beneath a directory without following symlinks.
//! - [`session`] holds the lease session, [`executor`] turns its assignments
//!   into runs, [`report`] carries what a run reports and [`run_metrics`]
//!   turns it into the worker's Prometheus counters.

pub mod allocator;
pub mod bandwidth;
pub mod class;
pub mod commands;
pub mod config;
pub mod connect;
pub mod cpu_pool;
pub mod executor;
pub mod fence;
pub mod liveness;
pub mod paths;
pub mod process;
pub mod report;
pub mod repository;
pub mod run_metrics;
pub mod runs;
pub mod session;
pub mod source;
pub mod store;

pub use runs::{backup, gc, rebuild, restore, retention, verify};
