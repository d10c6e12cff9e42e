//! A backup's pre- and post-hooks. Pre-hooks run in order before the backup
//! reads or writes anything, and the first that fails (or times out) fails
//! the run. Post-hooks run in order after the attempt, whatever its
//! outcome, with `COFFER_RUN_STATE` and `COFFER_RUN_ERROR` added; each runs
//! even when an earlier one failed, and their failures are returned to be
//! recorded, never changing the attempt's outcome.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::allow::CommandAllowList;
use super::spawn::Invocation;

/// The variables describing a run that its commands get.
pub fn run_environment(
    run_id: Uuid,
    job_id: Option<Uuid>,
    kind: &str,
    source_path: &str,
) -> Vec<(String, String)> {
    vec![
        ("COFFER_RUN_ID".into(), run_id.to_string()),
        (
            "COFFER_JOB_ID".into(),
            job_id.map(|id| id.to_string()).unwrap_or_default(),
        ),
        ("COFFER_RUN_KIND".into(), kind.into()),
        ("COFFER_SOURCE_PATH".into(), source_path.into()),
    ]
}

/// Runs `hooks` in order, stopping at the first that fails; its error
/// names the hook. A cancelled run stops them too.
pub async fn run_pre_hooks(
    hooks: &[Invocation],
    allow: &CommandAllowList,
    env: &[(String, String)],
    cancel: &CancellationToken,
) -> Result<(), String> {
    for hook in hooks {
        let (running, _) = hook
            .spawn(allow, env, false)
            .map_err(|e| format!("pre-hook: {e}"))?;
        running
            .wait(cancel)
            .await
            .check()
            .map_err(|e| format!("pre-hook: {e}"))?;
    }
    Ok(())
}

/// Runs every post-hook in order with the attempt's outcome (`error`
/// `None`: it succeeded) and returns the failures. They are not cancelled
/// with the run: a cancelled run is an outcome they are told about; each
/// still ends by its own timeout.
pub async fn run_post_hooks(
    hooks: &[Invocation],
    allow: &CommandAllowList,
    env: &[(String, String)],
    error: Option<&str>,
) -> Vec<String> {
    let mut env = env.to_vec();
    env.push((
        "COFFER_RUN_STATE".into(),
        if error.is_some() {
            "failed"
        } else {
            "succeeded"
        }
        .into(),
    ));
    env.push(("COFFER_RUN_ERROR".into(), error.unwrap_or_default().into()));
    let mut failures = Vec::new();
    let never = CancellationToken::new();
    for hook in hooks {
        let result = match hook.spawn(allow, &env, false) {
            Ok((running, _)) => running.wait(&never).await.check(),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            failures.push(format!("post-hook: {error}"));
        }
    }
    failures
}
