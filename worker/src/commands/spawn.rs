//! Spawning one admin-defined command: the program with its fixed
//! arguments, no shell, an environment of `PATH`, the definition's
//! variables and the run's `COFFER_*` variables only (the worker's own
//! environment, which may hold its token, is never passed on), standard
//! input closed, in a process group of its own. The group is killed when
//! the command times out, when the run is cancelled, and once the command
//! has exited (so nothing it left behind keeps running or holds its
//! output open). The last [`STDERR_TAIL`] bytes of its standard error are
//! kept for the run's error.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use coffer_proto::v1 as pb;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::allow::CommandAllowList;

/// Bytes of a command's standard error kept (its end).
pub const STDERR_TAIL: usize = 4096;
/// The `PATH` a command gets.
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long the standard error of an ended command is read on, for what
/// is still buffered.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// A command as the lease describes it, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The command's name, which the worker's allow list names.
    pub name: String,
    /// The program's absolute path.
    pub executable: PathBuf,
    /// The arguments after the program name.
    pub args: Vec<String>,
    /// The variables the definition sets.
    pub environment: Vec<(String, String)>,
    /// The absolute working directory.
    pub working_directory: PathBuf,
    /// Longest run.
    pub timeout: Duration,
    /// For a source: the snapshot file its output becomes.
    pub file_name: String,
}

impl TryFrom<&pb::CommandInvocation> for Invocation {
    type Error = String;

    fn try_from(proto: &pb::CommandInvocation) -> Result<Self, String> {
        let path = |what: &str, value: &str| {
            crate::paths::normalise(value)
                .map_err(|e| format!("command {:?}: {what} {value:?}: {e}", proto.name))
        };
        let timeout = proto
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero())
            .ok_or_else(|| format!("command {:?} has no timeout", proto.name))?;
        Ok(Invocation {
            name: proto.name.clone(),
            executable: path("program", &proto.executable)?,
            args: proto.args.clone(),
            environment: proto
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            working_directory: path("working directory", &proto.working_directory)?,
            timeout,
            file_name: proto.file_name.clone(),
        })
    }
}

impl Invocation {
    /// Checks the command against `allow` (again: whoever calls this has
    /// checked before any I/O) and starts it with `run_env` added to its
    /// environment; with `capture_stdout` its standard output is returned
    /// to be read, else it is discarded.
    pub fn spawn(
        &self,
        allow: &CommandAllowList,
        run_env: &[(String, String)],
        capture_stdout: bool,
    ) -> Result<(RunningCommand, Option<ChildStdout>), String> {
        allow.check(self)?;
        let mut command = tokio::process::Command::new(&self.executable);
        command
            .args(&self.args)
            .env_clear()
            .env("PATH", COMMAND_PATH)
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .envs(run_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.working_directory)
            .stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("command {:?} could not start: {e}", self.name))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(|stderr| tokio::spawn(tail(stderr)));
        let running = RunningCommand {
            name: self.name.clone(),
            group: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
            child,
            deadline: Instant::now() + self.timeout,
            timeout: self.timeout,
            stderr,
        };
        Ok((running, stdout))
    }
}

/// A started command.
#[derive(Debug)]
pub struct RunningCommand {
    name: String,
    child: Child,
    /// Its process group (the child's pid, as it leads the group).
    group: Option<rustix::process::Pid>,
    deadline: Instant,
    timeout: Duration,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// The run was cancelled and it was killed.
    Cancelled,
    /// Waiting for it failed.
    Lost(String),
}

/// A command that ended, with the end of its standard error.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The command's name.
    pub name: String,
    /// How it ended.
    pub end: CommandEnd,
    /// The last [`STDERR_TAIL`] bytes of its standard error, lossily decoded.
    pub stderr: String,
}

impl Finished {
    /// Ok for an exit with status 0; else why the command failed, with
    /// its standard error.
    pub fn check(&self) -> Result<(), String> {
        let why = match &self.end {
            CommandEnd::Exited(0) => return Ok(()),
            CommandEnd::Exited(code) => format!("exited with status {code}"),
            CommandEnd::Signalled(signal) => format!("was killed by signal {signal}"),
            CommandEnd::TimedOut(timeout) => {
                format!("timed out after {}s and was killed", timeout.as_secs())
            }
            CommandEnd::Cancelled => "was killed: the run was cancelled".to_string(),
            CommandEnd::Lost(error) => format!("could not be waited for: {error}"),
        };
        let stderr = self.stderr.trim();
        if stderr.is_empty() {
            Err(format!("command {:?} {why}", self.name))
        } else {
            Err(format!("command {:?} {why}; stderr: {stderr}", self.name))
        }
    }

    /// Whether the command ended because the run was cancelled.
    pub fn cancelled(&self) -> bool {
        self.end == CommandEnd::Cancelled
    }
}

impl RunningCommand {
    /// When the command's time is up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Waits for the command to end, killing its process group when its
    /// time is up or `stop` fires, and in any case once it has ended.
    pub async fn wait(mut self, stop: &CancellationToken) -> Finished {
        let end = tokio::select! {
            status = self.child.wait() => match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => CommandEnd::Exited(code),
                    (None, Some(signal)) => CommandEnd::Signalled(signal),
                    (None, None) => CommandEnd::Lost(format!("unknown status {status}")),
                },
                Err(e) => CommandEnd::Lost(e.to_string()),
            },
            () = tokio::time::sleep_until(self.deadline) => CommandEnd::TimedOut(self.timeout),
            () = stop.cancelled() => CommandEnd::Cancelled,
        };
        self.kill_group();
        if !matches!(end, CommandEnd::Exited(_) | CommandEnd::Signalled(_)) {
            // Reaped, so no zombie stays behind.
            let _ = self.child.wait().await;
        }
        let stderr = match self.stderr.take() {
            Some(mut task) => match tokio::time::timeout(STDERR_GRACE, &mut task).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => {
                    task.abort();
                    String::new()
                }
            },
            None => String::new(),
        };
        Finished {
            name: self.name,
            end,
            stderr,
        }
    }

    fn kill_group(&mut self) {
        if let Some(group) = self.group {
            // ESRCH: the group is gone already.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

/// Reads `stderr` to its end, keeping the last [`STDERR_TAIL`] bytes.
async fn tail(mut stderr: ChildStderr) -> Vec<u8> {
    let mut kept = Vec::with_capacity(STDERR_TAIL);
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(read) => {
                kept.extend_from_slice(&buffer[..read]);
                if kept.len() > STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &str, script: &str, timeout: Duration) -> Invocation {
        Invocation {
            name: name.into(),
            executable: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            environment: vec![("GREETING".into(), "hello".into())],
            working_directory: "/".into(),
            timeout,
            file_name: String::new(),
        }
    }

    fn allowing(name: &str) -> CommandAllowList {
        CommandAllowList::parse(name).expect("valid list")
    }

    #[tokio::test]
    async fn a_command_sees_only_its_own_environment() {
        let command = shell(
            "env",
            "env | sort; echo oops >&2; exit 3",
            Duration::from_secs(10),
        );
        let run_env = [("COFFER_RUN_ID".to_string(), "r1".to_string())];
        let (running, stdout) = command
            .spawn(&allowing("env"), &run_env, true)
            .expect("spawned");
        let mut output = String::new();
        stdout
            .expect("captured")
            .read_to_string(&mut output)
            .await
            .expect("read");
        let finished = running.wait(&CancellationToken::new()).await;
        assert_eq!(finished.end, CommandEnd::Exited(3));
        let error = finished.check().expect_err("non-zero exit");
        assert!(
            error.contains("status 3") && error.contains("oops"),
            "{error}"
        );
        assert!(output.contains("GREETING=hello"), "{output}");
        assert!(output.contains("COFFER_RUN_ID=r1"), "{output}");
        // The worker's own environment (HOME, and a token if it had one in
        // its environment) is not passed on.
        assert!(std::env::var_os("HOME").is_some());
        assert!(!output.contains("HOME="), "{output}");
    }

    #[tokio::test]
    async fn a_timed_out_command_and_its_children_are_killed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("survivor");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let command = shell("slow", &script, Duration::from_millis(300));
        let (running, _) = command
            .spawn(&allowing("slow"), &[], false)
            .expect("spawned");
        let started = std::time::Instant::now();
        let finished = running.wait(&CancellationToken::new()).await;
        assert_eq!(
            finished.end,
            CommandEnd::TimedOut(Duration::from_millis(300))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "a child of the command outlived it");
    }

    #[tokio::test]
    async fn a_command_not_allowed_is_never_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("ran");
        let command = shell(
            "touch",
            &format!("touch {}", marker.display()),
            Duration::from_secs(5),
        );
        let refused = command
            .spawn(&allowing("other"), &[], false)
            .expect_err("not allowed");
        assert!(refused.contains("not allowed"), "{refused}");
        assert!(!marker.exists());
    }
}
