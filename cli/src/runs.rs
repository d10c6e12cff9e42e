//! Starting runs (backup, restore, verify, garbage collection, retention)
//! and following them to their end.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use coffer_proto::v1 as pb;
use pb::create_run_request::Spec;

use crate::connection::{to_dynamic, Api};
use crate::failure::{RunNotSucceeded, Usage};
use crate::output::{Column, Printer};
use crate::progress::{Display, Figures};
use crate::resources::uuid_like;

/// The columns of a run.
pub const RUN_COLUMNS: &[Column] = &[
    Column::text("ID", "id"),
    Column::enumeration("KIND", "kind"),
    Column::enumeration("STATE", "state"),
    Column::text("JOB", "jobId"),
    Column::text("FILES", "progress.filesDone"),
    Column::bytes("SIZE", "progress.bytesDone"),
    Column::text("ERRORS", "progress.errorCount"),
    Column::time("CREATED", "createTime"),
    Column::time("FINISHED", "finishTime"),
    Column::text("ERROR", "error"),
];

/// `--wait` and what goes with it.
#[derive(Debug, clap::Args)]
pub struct Wait {
    /// Follow the run to its end with live progress; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// `--job JOB` or `--bucket ID [--prefix P]`: a repository.
#[derive(Debug, clap::Args)]
pub struct RepositoryArgs {
    /// The job whose repository it is (id or name).
    #[arg(long, conflicts_with = "bucket")]
    pub job: Option<String>,
    /// A bucket (id).
    #[arg(long)]
    pub bucket: Option<String>,
    /// The repository's prefix in the bucket.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// Resolves a job given by id or by its (unique) name.
pub async fn job_id(api: &Api, job: &str) -> anyhow::Result<String> {
    if let Some(id) = uuid_like(job) {
        return Ok(id.to_string());
    }
    let response = api
        .jobs()
        .list_jobs(pb::ListJobsRequest {
            name_prefix: job.to_string(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .context("looking the job up by name")?
        .into_inner();
    let matching: Vec<&pb::Job> = response.jobs.iter().filter(|j| j.name == job).collect();
    match matching.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => bail!(Usage(format!("no job named {job:?}"))),
        _ => bail!(Usage(format!(
            "several jobs are named {job:?}: give its id"
        ))),
    }
}

/// Creates a run; with `wait`, follows it to the end.
pub async fn start(api: &Api, printer: &Printer, spec: Spec, wait: bool) -> anyhow::Result<()> {
    let run = api
        .runs()
        .create_run(pb::CreateRunRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await?
        .into_inner()
        .run
        .context("CreateRun answered without the run")?;
    finish(api, printer, run.id, wait).await
}

/// Prints a run; with `wait`, after following it to the end.
pub async fn finish(api: &Api, printer: &Printer, id: String, wait: bool) -> anyhow::Result<()> {
    let run = if wait {
        watch(api, &id).await?
    } else {
        api.runs()
            .get_run(pb::GetRunRequest { id: id.clone() })
            .await?
            .into_inner()
            .run
            .context("GetRun answered without the run")?
    };
    printer.item(&to_dynamic(api.pool(), "Run", &run)?, RUN_COLUMNS)?;
    if wait && run.state() != pb::RunState::Succeeded {
        return Err(RunNotSucceeded {
            id: run.id.clone(),
            state: crate::output::short_enum(run.state().as_str_name()),
            error: run.error.clone(),
        }
        .into());
    }
    if wait {
        if let Some(progress) = run.progress.as_ref().filter(|p| p.error_count > 0) {
            eprintln!(
                "{} files had errors: coffer runs errors {}",
                progress.error_count, run.id
            );
        }
    }
    Ok(())
}

/// Follows a run's changes until it ends, showing its progress on stderr.
pub async fn watch(api: &Api, id: &str) -> anyhow::Result<pb::Run> {
    let mut stream = api
        .runs()
        .watch_run(pb::WatchRunRequest { id: id.to_string() })
        .await?
        .into_inner();
    let mut display = Display::for_stderr();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        let Some(run) = message.run else { continue };
        let done = is_final(&run);
        if done {
            display.finish(&Figures::of(&run));
            return Ok(run);
        }
        display.show(&Figures::of(&run));
        last = Some(run);
    }
    // The stream ended early (a replica went away): ask once more.
    let run = api
        .runs()
        .get_run(pb::GetRunRequest { id: id.to_string() })
        .await?
        .into_inner()
        .run
        .or(last)
        .context("run vanished")?;
    display.finish(&Figures::of(&run));
    if !is_final(&run) {
        bail!(
            "the watch ended before run {id} did (it is {:?}); watch again",
            run.state()
        );
    }
    Ok(run)
}

fn is_final(run: &pb::Run) -> bool {
    matches!(
        run.state(),
        pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Cancelled
    )
}

/// The target of a repository given by job or by bucket.
pub async fn repository_target(
    api: &Api,
    repository: &RepositoryArgs,
) -> anyhow::Result<pb::Target> {
    if let Some(bucket) = &repository.bucket {
        return Ok(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket.clone(),
                prefix: repository.prefix.clone(),
            })),
        });
    }
    let Some(job) = &repository.job else {
        bail!(Usage("give --job JOB or --bucket ID".into()));
    };
    let id = job_id(api, job).await?;
    let job = api
        .jobs()
        .get_job(pb::GetJobRequest { id })
        .await?
        .into_inner()
        .job
        .context("GetJob answered without the job")?;
    job.target.context("the job has no target")
}

/// Restore options.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot: the id of the backup run that made it.
    pub snapshot: String,
    /// Where to restore to (a directory beneath a restore grant).
    #[arg(long = "to", value_name = "DIR")]
    pub to: PathBuf,
    /// Only these paths of the snapshot (repeatable).
    #[arg(long = "include", value_name = "PATH")]
    pub include: Vec<String>,
    /// Overwrite files at the destination that are newer than the snapshot's.
    #[arg(long)]
    pub overwrite_newer: bool,
    /// Limit reads from storage to this rate per second, e.g. `10MiB`
    /// (the worker's own limit applies too).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub limit_download: Option<i64>,
    #[command(flatten)]
    pub wait: Wait,
}

impl RestoreArgs {
    /// The run spec.
    pub fn spec(&self) -> anyhow::Result<Spec> {
        let destination =
            std::path::absolute(&self.to).with_context(|| format!("--to {}", self.to.display()))?;
        Ok(Spec::Restore(pb::RestoreSpec {
            snapshot_run_id: self.snapshot.clone(),
            paths: self.include.clone(),
            destination_path: destination.to_string_lossy().into_owned(),
            overwrite_newer: self.overwrite_newer,
            download_limit_bytes_per_second: self.limit_download.unwrap_or(0),
            ..Default::default()
        }))
    }
}

/// A rate per second such as `10MiB`, `500kB` or `65536` (bytes); `off` is 0.
/// The server checks the range.
pub fn parse_rate(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let size: bytesize::ByteSize = text
        .strip_suffix("/s")
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. 512KiB, 10MiB or off)"))?;
    i64::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

/// `1h`, `30m`, `45s`, `2d`, `0s`.
pub fn parse_duration(text: &str) -> Result<prost_types::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 1h, 2d"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    Ok(prost_types::Duration {
        seconds: number.saturating_mul(seconds),
        nanos: 0,
    })
}

/// `coffer retention plan` as rows.
pub async fn plan(api: &Api, printer: &Printer, repository: &RepositoryArgs) -> anyhow::Result<()> {
    let request = retention_scope(api, repository).await?;
    let plan = api
        .retention()
        .plan_retention(pb::PlanRetentionRequest {
            job_id: request.0,
            bucket_id: request.1,
        })
        .await?
        .into_inner();
    let rows: Vec<serde_json::Value> = plan
        .decisions
        .iter()
        .map(|d| to_dynamic(api.pool(), "RetentionDecision", d).map(|m| crate::output::to_json(&m)))
        .collect::<anyhow::Result<_>>()?;
    printer.values(
        &rows,
        &[
            Column::text("SNAPSHOT", "runId"),
            Column::time("TIME", "snapshotTime"),
            Column::text("KEEP", "keep"),
            Column::text("REASONS", "reasons"),
            Column::enumeration("POLICY FROM", "policySource"),
        ],
    )?;
    eprintln!("keep {}, remove {}", plan.keep_count, plan.remove_count);
    Ok(())
}

/// `coffer retention apply`.
pub async fn apply(
    api: &Api,
    printer: &Printer,
    repository: &RepositoryArgs,
    wait: bool,
) -> anyhow::Result<()> {
    let (job_id, bucket_id) = retention_scope(api, repository).await?;
    let run_id = api
        .retention()
        .apply_retention(pb::ApplyRetentionRequest { job_id, bucket_id })
        .await?
        .into_inner()
        .run_id;
    if run_id.is_empty() {
        eprintln!("nothing to remove");
        return Ok(());
    }
    finish(api, printer, run_id, wait).await
}

async fn retention_scope(
    api: &Api,
    repository: &RepositoryArgs,
) -> anyhow::Result<(String, String)> {
    match (&repository.job, &repository.bucket) {
        (Some(job), _) => Ok((job_id(api, job).await?, String::new())),
        (None, Some(bucket)) => Ok((String::new(), bucket.clone())),
        (None, None) => bail!(Usage("give --job JOB or --bucket ID".into())),
    }
}
