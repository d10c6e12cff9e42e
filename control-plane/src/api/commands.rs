//! CommandService: admin-defined commands. Only admins create and delete
//! them and see their definitions; a grantee sees what it needs to name one
//! (name, description, timeout, output file name), and everyone else gets
//! NOT_FOUND. Also the conversions of the command fields jobs and ad-hoc
//! backups carry.

use coffer_proto::v1 as pb;
use coffer_proto::v1::command_service_server::CommandService;
use tonic::Request;
use uuid::Uuid;

use super::convert::{duration, required, timestamp};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::command::{
    BackupCommands, Command, CommandSource, CommandSpec, DEFAULT_TIMEOUT, MAX_COMMANDS_PER_RUN,
};
use crate::model::parse_id;
use crate::state::AppState;

/// Handler of `coffer.v1.CommandService`.
#[derive(Clone, Debug)]
pub struct CommandApi {
    state: AppState,
}

impl CommandApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        CommandApi { state }
    }
}

impl TryFrom<pb::Command> for CommandSpec {
    type Error = DomainError;

    /// Converts the writable fields, reporting every bad one at once.
    fn try_from(command: pb::Command) -> DomainResult<Self> {
        let mut violations = Violations::new();
        let timeout = match command.timeout {
            None => Some(DEFAULT_TIMEOUT),
            Some(value) => violations.absorb(
                std::time::Duration::try_from(value)
                    .map_err(|_| DomainError::invalid("command.timeout", "must not be negative")),
            ),
        };
        let mut grantee_ids = Vec::with_capacity(command.grantee_ids.len());
        for (index, id) in command.grantee_ids.iter().enumerate() {
            if let Some(id) =
                violations.absorb(parse_id(&format!("command.grantee_ids[{index}]"), id))
            {
                grantee_ids.push(id);
            }
        }
        grantee_ids.sort_unstable();
        grantee_ids.dedup();
        let working_directory = if command.working_directory.is_empty() {
            "/".to_string()
        } else {
            command.working_directory
        };
        let spec = CommandSpec {
            name: command.name,
            description: command.description,
            executable: command.executable,
            args: command.args,
            environment: command.environment.into_iter().collect(),
            working_directory,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            output_file_name: command.output_file_name,
            grantee_ids,
        };
        violations.absorb(spec.validate("command."));
        violations.finish()?;
        Ok(spec)
    }
}

/// A command as `caller` may see it: whole for admins; for a grantee
/// without the program, arguments, environment, working directory and
/// grantees, which may hold the command's secrets.
fn command_to_proto(command: Command, caller: &Caller) -> pb::Command {
    let spec = command.spec;
    let mut proto = pb::Command {
        id: command.id.to_string(),
        name: spec.name,
        description: spec.description,
        timeout: Some(duration(spec.timeout)),
        output_file_name: spec.output_file_name,
        creator_id: command.creator_id.to_string(),
        create_time: Some(timestamp(command.create_time)),
        ..Default::default()
    };
    if caller.is_admin() {
        proto.executable = spec.executable;
        proto.args = spec.args;
        proto.environment = spec.environment.into_iter().collect();
        proto.working_directory = spec.working_directory;
        proto.grantee_ids = spec.grantee_ids.iter().map(Uuid::to_string).collect();
    }
    proto
}

/// The command fields of a job or an ad-hoc backup, validated; `prefix`
/// leads the field names (`job.`, `backup.`).
pub fn backup_commands_from_proto(
    prefix: &str,
    sources: &[pb::CommandSource],
    pre_hooks: &[String],
    post_hooks: &[String],
) -> DomainResult<BackupCommands> {
    let mut violations = Violations::new();
    let mut commands = BackupCommands::default();
    for (index, source) in sources.iter().enumerate() {
        let field = format!("{prefix}command_sources[{index}].command_id");
        if let Some(command_id) = violations.absorb(parse_id(&field, &source.command_id)) {
            commands.sources.push(CommandSource {
                command_id,
                file_name: source.file_name.clone(),
            });
        }
    }
    for (name, ids, into) in [
        ("pre_hook_command_ids", pre_hooks, &mut commands.pre_hooks),
        (
            "post_hook_command_ids",
            post_hooks,
            &mut commands.post_hooks,
        ),
    ] {
        for (index, id) in ids.iter().enumerate().take(MAX_COMMANDS_PER_RUN + 1) {
            if let Some(id) = violations.absorb(parse_id(&format!("{prefix}{name}[{index}]"), id)) {
                into.push(id);
            }
        }
    }
    violations.absorb(commands.validate(prefix));
    violations.finish()?;
    Ok(commands)
}

/// The proto of a backup's command sources.
pub fn sources_to_proto(commands: &BackupCommands) -> Vec<pb::CommandSource> {
    commands
        .sources
        .iter()
        .map(|source| pb::CommandSource {
            command_id: source.command_id.to_string(),
            file_name: source.file_name.clone(),
        })
        .collect()
}

/// The proto of a list of hook ids.
pub fn ids_to_proto(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

impl CommandApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    async fn create(&self, caller: &Caller, command: pb::Command) -> DomainResult<Command> {
        caller.require_admin("defining commands")?;
        let spec = CommandSpec::try_from(command)?;
        for (index, grantee) in spec.grantee_ids.iter().enumerate() {
            match self.state.catalog.get_user(*grantee).await {
                Err(DomainError::NotFound(_)) => {
                    return Err(DomainError::invalid(
                        format!("command.grantee_ids[{index}]"),
                        "no such user",
                    ))
                }
                other => {
                    other?;
                }
            }
        }
        self.state
            .catalog
            .create_command(&spec, caller.user.id)
            .await
    }

    /// A command the caller may see: admins see every command, others
    /// only those granted to them.
    async fn visible(&self, caller: &Caller, id: Uuid) -> DomainResult<Command> {
        let command = self.state.catalog.get_command(id).await?;
        if !caller.is_admin() && !command.granted_to(caller.user.id) {
            return Err(DomainError::not_found("command", id));
        }
        Ok(command)
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListCommandsRequest,
    ) -> DomainResult<pb::ListCommandsResponse> {
        let page = Page::parse(request.page_size, &request.page_token)?;
        let grantee = (!caller.is_admin()).then_some(caller.user.id);
        let (commands, next_page_token) = self.state.catalog.list_commands(page, grantee).await?;
        Ok(pb::ListCommandsResponse {
            commands: commands
                .into_iter()
                .map(|c| command_to_proto(c, caller))
                .collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl CommandService for CommandApi {
    async fn create_command(
        &self,
        request: Request<pb::CreateCommandRequest>,
    ) -> RpcResult<pb::CreateCommandResponse> {
        let caller = self.caller(&request).await?;
        let command = required("command", request.into_inner().command)?;
        let created = self.create(&caller, command).await?;
        respond(Ok(pb::CreateCommandResponse {
            command: Some(command_to_proto(created, &caller)),
        }))
    }

    async fn get_command(
        &self,
        request: Request<pb::GetCommandRequest>,
    ) -> RpcResult<pb::GetCommandResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let command = self.visible(&caller, id).await?;
        respond(Ok(pb::GetCommandResponse {
            command: Some(command_to_proto(command, &caller)),
        }))
    }

    async fn list_commands(
        &self,
        request: Request<pb::ListCommandsRequest>,
    ) -> RpcResult<pb::ListCommandsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn delete_command(
        &self,
        request: Request<pb::DeleteCommandRequest>,
    ) -> RpcResult<pb::DeleteCommandResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("deleting commands")?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.catalog.delete_command(id).await?;
        respond(Ok(pb::DeleteCommandResponse {}))
    }
}
