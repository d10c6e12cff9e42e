//! The crate's integration tests, one module per file, linked into one test
//! binary: each binary links the whole stack, and one per file cost CI
//! minutes of linking and gigabytes of disk.

#[macro_use]
mod support;

mod cli_copy;
mod cli_notifications;
mod cli_scenario;
mod progress_terminal;
mod readme_cli_walkthrough;
