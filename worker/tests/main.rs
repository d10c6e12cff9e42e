//! The crate's integration tests, one module per file, linked into one test
//! binary: each binary links the whole stack, and one per file cost CI
//! minutes of linking and gigabytes of disk.

#[macro_use]
mod support;

mod attack_credentials;
mod attack_fair_lease;
mod attack_fencing;
mod attack_grants;
mod attack_tls;
mod attack_worker_io;
mod attempt_manifests;
mod backup;
mod bandwidth;
mod commands;
mod copies;
mod download;
mod end_to_end;
mod exclusions;
mod failures;
mod format_v2;
mod healthcheck;
mod key_slots;
mod metrics;
mod object_lock;
mod object_lock_runs;
mod progress;
mod python_client;
mod replicas;
mod retention;
mod snapshot_scope;
mod storage_classes;
mod trees;
