//! The life of a run before a worker takes it: admission (who may ask for
//! which run, how its spec is built, creating it in the catalog). Every way a
//! run comes into being goes through here: the RunService, the retention
//! service, catalog rebuilds, the scheduler and the retention that follows a
//! backup. Leasing takes over from there (`crate::leasing`).

pub mod admission;
pub mod commands;
pub mod downloads;
pub mod grants;
pub mod key_slots;
pub mod repositories;
pub mod watch_slots;
