//! Coffer worker library: reading source trees, writing to object stores and
//! running backups. The binary (`main.rs`) drives these from lease sessions.

pub mod backup;
pub mod config;
pub mod executor;
pub mod session;
pub mod source;
pub mod store;
