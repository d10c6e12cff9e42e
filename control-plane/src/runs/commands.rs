//! Command checks: every command a job or backup names must exist and be
//! granted to the run's owner. Checked when a job is written, at admission,
//! and again at the lease, where the definitions as they are then are
//! resolved into the assignment (`RunAssignment.command_sources`,
//! `pre_hooks`, `post_hooks`): a command deleted or withdrawn since
//! admission fails the run instead of running.

use coffer_proto::v1 as pb;
use uuid::Uuid;

use crate::api::convert::duration;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::command::{source_file_names, BackupCommands, Command};
use crate::model::run::{Run, RunSpec};

/// The definitions of every command a backup names.
#[derive(Debug)]
pub struct Resolved {
    /// The sources, each with the file its output becomes.
    pub sources: Vec<(Command, String)>,
    /// The pre-hooks, in order.
    pub pre_hooks: Vec<Command>,
    /// The post-hooks, in order.
    pub post_hooks: Vec<Command>,
}

/// The definitions of every command `commands` names, each granted to
/// `owner_id`. A command that
/// does not exist or is not granted is PERMISSION_DENIED naming the field,
/// the same answer for both, so that a tenant learns nothing of commands
/// not granted to them. Source file names are checked too.
pub async fn check(
    catalog: &Catalog,
    prefix: &str,
    owner_id: Uuid,
    commands: &BackupCommands,
) -> DomainResult<Resolved> {
    let mut resolved = Vec::new();
    for (field, id) in commands.named(prefix) {
        let command = match catalog.get_command(id).await {
            Ok(command) if command.granted_to(owner_id) => command,
            Ok(_) | Err(DomainError::NotFound(_)) => {
                return Err(DomainError::PermissionDenied(format!(
                    "{field}: command {id} is not granted to the owner"
                )))
            }
            Err(other) => return Err(other),
        };
        resolved.push(command);
    }
    let mut hooks = resolved.split_off(commands.sources.len());
    let post_hooks = hooks.split_off(commands.pre_hooks.len());
    let file_names = source_file_names(prefix, &commands.sources, &resolved)?;
    Ok(Resolved {
        sources: resolved.into_iter().zip(file_names).collect(),
        pre_hooks: hooks,
        post_hooks,
    })
}

/// Fills the command fields of a backup's assignment from the definitions
/// as they are now, checked again against the owner's grants.
pub async fn assign(
    catalog: &Catalog,
    run: &Run,
    assignment: &mut pb::RunAssignment,
) -> DomainResult<()> {
    let RunSpec::Backup(backup) = &run.spec else {
        return Ok(());
    };
    let commands = &backup.commands;
    if commands.is_empty() {
        return Ok(());
    }
    let resolved = check(catalog, "run.spec.backup.", run.owner_id, commands)
        .await
        .map_err(|error| DomainError::FailedPrecondition(error.to_string()))?;
    assignment.command_sources = resolved
        .sources
        .iter()
        .map(|(command, file_name)| invocation(command, file_name.clone()))
        .collect();
    assignment.pre_hooks = resolved
        .pre_hooks
        .iter()
        .map(|c| invocation(c, String::new()))
        .collect();
    assignment.post_hooks = resolved
        .post_hooks
        .iter()
        .map(|c| invocation(c, String::new()))
        .collect();
    Ok(())
}

fn invocation(command: &Command, file_name: String) -> pb::CommandInvocation {
    let spec = &command.spec;
    pb::CommandInvocation {
        command_id: command.id.to_string(),
        name: spec.name.clone(),
        executable: spec.executable.clone(),
        args: spec.args.clone(),
        environment: spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        working_directory: spec.working_directory.clone(),
        timeout: Some(duration(spec.timeout)),
        file_name,
    }
}
