//! Admin-defined commands on the worker: which ones this worker's operator
//! allows ([`allow`]), and spawning one with a clean environment in a
//! process group of its own that is killed on timeout or cancellation, its
//! standard error kept bounded ([`spawn`]). Backups use them as sources
//! (`runs::backup::command_source`) and as hooks ([`hooks`]).

pub mod allow;
pub mod assigned;
pub mod hooks;
pub mod spawn;

pub use allow::CommandAllowList;
pub use assigned::AssignedCommands;
pub use spawn::{CommandEnd, Invocation, RunningCommand};
