//! Coffer worker library: reading source trees, writing to object stores and
//! running backups, restores and verifications. The binary (`main.rs`) drives these from lease sessions.

pub mod allocator;
pub mod backup;
pub mod config;
pub mod cpu_pool;
pub mod executor;
pub mod gc;
pub mod manifests;
pub mod rebuild;
pub mod report;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod session;
pub mod source;
pub mod store;
pub mod verify;
