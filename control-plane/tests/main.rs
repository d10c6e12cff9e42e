//! The crate's integration tests, one module per file, linked into one test
//! binary: each binary links the whole stack, and one per file cost CI
//! minutes of linking and gigabytes of disk.

#[macro_use]
mod support;

mod api_buckets;
mod api_commands;
mod api_configurations;
mod api_exclusions;
mod api_jobs;
mod api_metadata;
mod api_objects;
mod api_retention;
mod api_runs;
mod api_tags;
mod api_users;
mod attack_audit;
mod attack_credentials;
mod attack_fair_lease;
mod attack_fencing;
mod attack_grants;
mod attack_tls;
mod console_assets;
mod console_browser;
mod lease_settings;
mod leasing;
mod metrics;
mod notifications;
mod notifications_email;
mod python_client;
mod readme_walkthrough;
mod replica_bootstrap;
mod replicas;
mod repository_upgrade;
mod scheduler;
mod schema_parity;
mod serving;
mod worker_classes;
