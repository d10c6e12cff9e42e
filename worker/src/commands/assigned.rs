//! The commands a backup's lease names, checked before any I/O: each
//! well-formed and allowed on this worker. Spawning checks the allow list
//! once more.

use coffer_proto::v1 as pb;
use uuid::Uuid;

use super::allow::CommandAllowList;
use super::hooks::run_environment;
use super::spawn::Invocation;

/// A backup's command sources and hooks, with the run's variables.
#[derive(Debug, Clone, Default)]
pub struct AssignedCommands {
    /// Sources, each with its file name.
    pub sources: Vec<Invocation>,
    /// Pre-hooks, in order.
    pub pre_hooks: Vec<Invocation>,
    /// Post-hooks, in order.
    pub post_hooks: Vec<Invocation>,
    /// `COFFER_RUN_ID`, `COFFER_JOB_ID`, `COFFER_RUN_KIND`, `COFFER_SOURCE_PATH`.
    pub env: Vec<(String, String)>,
}

impl AssignedCommands {
    /// The commands of `assignment`, refused as a whole when one is
    /// malformed or not allowed by `allow`.
    pub fn from_assignment(
        assignment: &pb::RunAssignment,
        allow: &CommandAllowList,
    ) -> Result<Self, String> {
        let parse = |list: &[pb::CommandInvocation]| -> Result<Vec<Invocation>, String> {
            list.iter()
                .map(|proto| {
                    let invocation = Invocation::try_from(proto)?;
                    allow.check(&invocation)?;
                    Ok(invocation)
                })
                .collect()
        };
        let sources = parse(&assignment.command_sources)?;
        if let Some(unnamed) = sources.iter().find(|s| s.file_name.is_empty()) {
            return Err(format!(
                "command source {:?} has no file name",
                unnamed.name
            ));
        }
        let run = assignment.run.as_ref();
        let backup = run.and_then(|run| match &run.spec {
            Some(pb::run::Spec::Backup(backup)) => Some(backup),
            _ => None,
        });
        let env = run_environment(
            run.and_then(|run| Uuid::parse_str(&run.id).ok())
                .unwrap_or_default(),
            backup.and_then(|b| Uuid::parse_str(&b.job_id).ok()),
            "backup",
            backup.map(|b| b.source_path.as_str()).unwrap_or_default(),
        );
        Ok(AssignedCommands {
            sources,
            pre_hooks: parse(&assignment.pre_hooks)?,
            post_hooks: parse(&assignment.post_hooks)?,
            env,
        })
    }
}
