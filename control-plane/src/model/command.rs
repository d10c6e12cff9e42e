//! Admin-defined commands: programs workers run as a backup's source (its
//! standard output becomes a file of the snapshot) or as its pre- and
//! post-hooks. An admin fixes the program, its arguments and environment;
//! a tenant only names a command granted to them, so nothing a tenant
//! writes reaches a command line.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::path::check_normalised_absolute;
use super::{check_len, check_name};
use crate::error::{DomainError, DomainResult, Violations};

/// Longest command name, in characters.
pub const MAX_NAME_LEN: usize = 63;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 2000;
/// Most arguments a command may have.
pub const MAX_ARGS: usize = 256;
/// Most environment variables a command may have.
pub const MAX_ENVIRONMENT: usize = 128;
/// Longest argument or environment value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;
/// Shortest and longest timeout.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// Timeout of a command that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most command sources, pre-hooks or post-hooks a job or run may name.
pub const MAX_COMMANDS_PER_RUN: usize = 16;
/// Environment names the worker sets itself; a definition may not set them.
const RESERVED_ENVIRONMENT: &[&str] = &["PATH"];

/// The definition an admin writes, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    /// Unique name; workers allow commands by it.
    pub name: String,
    /// Free-form description.
    pub description: String,
    /// Normalised absolute path of the program.
    pub executable: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Normalised absolute working directory.
    pub working_directory: String,
    /// Longest run.
    pub timeout: Duration,
    /// For a source: the file its output becomes (one component), or empty.
    pub output_file_name: String,
    /// Users who may name it.
    pub grantee_ids: Vec<Uuid>,
}

impl CommandSpec {
    /// Checks every field, reporting all violations at once under `prefix`.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_name(
            &format!("{prefix}name"),
            &self.name,
            MAX_NAME_LEN,
        ));
        violations.absorb(check_len(
            &format!("{prefix}description"),
            &self.description,
            0,
            MAX_DESCRIPTION_LEN,
        ));
        violations.absorb(check_normalised_absolute(
            &format!("{prefix}executable"),
            &self.executable,
        ));
        if self.executable == "/" {
            violations.add(format!("{prefix}executable"), "must name a program");
        }
        violations.absorb(check_normalised_absolute(
            &format!("{prefix}working_directory"),
            &self.working_directory,
        ));
        if self.args.len() > MAX_ARGS {
            violations.add(
                format!("{prefix}args"),
                format!("at most {MAX_ARGS} arguments are allowed"),
            );
        }
        for (index, arg) in self.args.iter().enumerate() {
            violations.absorb(check_value(&format!("{prefix}args[{index}]"), arg));
        }
        if self.environment.len() > MAX_ENVIRONMENT {
            violations.add(
                format!("{prefix}environment"),
                format!("at most {MAX_ENVIRONMENT} variables are allowed"),
            );
        }
        for (key, value) in &self.environment {
            let field = format!("{prefix}environment[{key:?}]");
            violations.absorb(check_environment_name(&field, key));
            violations.absorb(check_value(&field, value));
        }
        if !TIMEOUT_RANGE.contains(&self.timeout) {
            violations.add(
                format!("{prefix}timeout"),
                "must be between 1 second and 24 hours",
            );
        }
        if !self.output_file_name.is_empty() {
            violations.absorb(check_file_name(
                &format!("{prefix}output_file_name"),
                &self.output_file_name,
            ));
        }
        violations.finish()
    }
}

/// A stored command.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// Id.
    pub id: Uuid,
    /// The definition.
    pub spec: CommandSpec,
    /// The admin who created it.
    pub creator_id: Uuid,
    /// Creation time.
    pub create_time: DateTime<Utc>,
}

impl Command {
    /// Whether `user_id` may name this command.
    pub fn granted_to(&self, user_id: Uuid) -> bool {
        self.spec.grantee_ids.contains(&user_id)
    }
}

/// A command whose standard output a backup stores as a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSource {
    /// The command.
    pub command_id: Uuid,
    /// The file name in the snapshot; empty uses the command's.
    #[serde(default)]
    pub file_name: String,
}

/// The commands a backup runs: its sources and its hooks, each by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupCommands {
    /// Sources, stored at the top of the snapshot.
    pub sources: Vec<CommandSource>,
    /// Run in order before the backup reads anything.
    pub pre_hooks: Vec<Uuid>,
    /// Run in order after the attempt, whatever its outcome.
    pub post_hooks: Vec<Uuid>,
}

impl BackupCommands {
    /// Whether the backup runs no command at all.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.pre_hooks.is_empty() && self.post_hooks.is_empty()
    }

    /// Every command named, with the request field that names it.
    pub fn named(&self, prefix: &str) -> Vec<(String, Uuid)> {
        let sources = self.sources.iter().enumerate().map(|(i, s)| {
            (
                format!("{prefix}command_sources[{i}].command_id"),
                s.command_id,
            )
        });
        let pre = self
            .pre_hooks
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("{prefix}pre_hook_command_ids[{i}]"), *id));
        let post = self
            .post_hooks
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("{prefix}post_hook_command_ids[{i}]"), *id));
        sources.chain(pre).chain(post).collect()
    }

    /// Checks the counts and the explicit file names under `prefix`
    /// (e.g. `job.`).
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        for (field, count) in [
            ("command_sources", self.sources.len()),
            ("pre_hook_command_ids", self.pre_hooks.len()),
            ("post_hook_command_ids", self.post_hooks.len()),
        ] {
            if count > MAX_COMMANDS_PER_RUN {
                violations.add(
                    format!("{prefix}{field}"),
                    format!("at most {MAX_COMMANDS_PER_RUN} are allowed"),
                );
            }
        }
        for (index, source) in self.sources.iter().enumerate() {
            if !source.file_name.is_empty() {
                violations.absorb(check_file_name(
                    &format!("{prefix}command_sources[{index}].file_name"),
                    &source.file_name,
                ));
            }
        }
        violations.finish()
    }
}

/// The file names the sources of a backup write, each once: an explicit
/// name, else the command's `output_file_name`. `commands` are the
/// definitions in the order of `sources`.
pub fn source_file_names(
    prefix: &str,
    sources: &[CommandSource],
    commands: &[Command],
) -> DomainResult<Vec<String>> {
    let mut names: Vec<String> = Vec::with_capacity(sources.len());
    for (index, (source, command)) in sources.iter().zip(commands).enumerate() {
        let field = format!("{prefix}command_sources[{index}].file_name");
        let name = if source.file_name.is_empty() {
            command.spec.output_file_name.clone()
        } else {
            source.file_name.clone()
        };
        if name.is_empty() {
            return Err(DomainError::invalid(
                field,
                "is required: the command defines no output file name",
            ));
        }
        if names.contains(&name) {
            return Err(DomainError::invalid(
                field,
                format!("{name:?} is already the file of another command source"),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// One path component a snapshot file may be named: 1-255 bytes, no `/`,
/// NUL, `.` or `..`.
pub fn check_file_name(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() || value.len() > 255 {
        return Err(DomainError::invalid(field, "must have 1-255 bytes"));
    }
    if value.contains(['/', '\0']) || value == "." || value == ".." {
        return Err(DomainError::invalid(
            field,
            "must be one path component (no '/', NUL, '.' or '..')",
        ));
    }
    Ok(())
}

fn check_value(field: &str, value: &str) -> DomainResult<()> {
    if value.contains('\0') {
        return Err(DomainError::invalid(field, "must not contain NUL"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(DomainError::invalid(
            field,
            format!("must have at most {MAX_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

/// A portable environment name (`[A-Za-z_][A-Za-z0-9_]*`), not one the
/// worker sets itself.
fn check_environment_name(field: &str, name: &str) -> DomainResult<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        return Err(DomainError::invalid(
            field,
            "names must be [A-Za-z_][A-Za-z0-9_]*, at most 128 characters",
        ));
    }
    if RESERVED_ENVIRONMENT.contains(&name) || name.starts_with("COFFER_") {
        return Err(DomainError::invalid(
            field,
            "PATH and COFFER_* are set by the worker",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CommandSpec {
        CommandSpec {
            name: "pg-dump".into(),
            description: String::new(),
            executable: "/usr/bin/pg_dump".into(),
            args: vec!["--format=plain".into()],
            environment: BTreeMap::new(),
            working_directory: "/".into(),
            timeout: DEFAULT_TIMEOUT,
            output_file_name: "db.sql".into(),
            grantee_ids: Vec::new(),
        }
    }

    #[test]
    fn a_plain_definition_is_valid() {
        spec().validate("command.").expect("valid");
    }

    #[test]
    fn relative_executables_and_reserved_environment_are_refused() {
        let mut bad = spec();
        bad.executable = "pg_dump".into();
        bad.environment.insert("COFFER_RUN_ID".into(), "x".into());
        bad.environment.insert("PATH".into(), "/tmp".into());
        bad.output_file_name = "../etc/passwd".into();
        bad.timeout = Duration::ZERO;
        let DomainError::InvalidArgument(violations) =
            bad.validate("command.").expect_err("invalid")
        else {
            panic!("not a field violation");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        for field in [
            "command.executable",
            "command.environment[\"COFFER_RUN_ID\"]",
            "command.environment[\"PATH\"]",
            "command.output_file_name",
            "command.timeout",
        ] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
    }

    #[test]
    fn file_names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_file_name("f", bad).is_err(), "{bad:?}");
        }
        check_file_name("db.sql", "db.sql").expect("valid");
    }
}
