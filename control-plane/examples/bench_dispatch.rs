//! Dispatch latency: how long a queued run waits for an idle worker, when it
//! is created through the replica the worker is connected to and through
//! another replica on the same PostgreSQL. Driven by `scripts/bench-dispatch.sh`.
//!
//! Two control-plane replicas serve one fresh PostgreSQL database (from
//! `DATABASE_URL`), over real gRPC sockets. `BENCH_WORKERS` idle workers
//! (lease sessions of 4 slots each, scripted here) connect to the first.
//! Runs are created one at a time, each only after the previous one reached
//! a worker, so every run finds the workers idle; a worker that receives a
//! run ends its attempt at once (failed, not retried), so nothing else loads
//! the replicas. Two figures per run:
//!
//! - **catalog**: `start_time − create_time`, both stamped by the database
//!   clock (queued → leased, as the catalog records it);
//! - **worker after create**: from `CreateRun` returning (the run is queued
//!   by then) to the assignment reaching the worker, on this process's clock
//!   (zero when the assignment arrived first);
//! - **worker round trip**: from just before `CreateRun` to the assignment
//!   reaching the worker, including the `CreateRun` call itself.
//!
//! And the catalog's load: transactions committed in the database per run
//! (PostgreSQL's statistics, read after they settle), everything included —
//! creation, assignment, the workers' completions and every replica's
//! background work — so that assignment strategies can be compared.

use std::time::{Duration, Instant, SystemTime};

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use coffer_proto::v1::lease_session_request::Message as Up;
use coffer_proto::v1::lease_session_response::Message as Down;
use coffer_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Slots each scripted worker announces.
const SLOTS: i32 = 4;
/// Longest a run may wait for a worker before the benchmark gives up.
const GIVE_UP: Duration = Duration::from_secs(30);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn request(message: Up) -> pb::LeaseSessionRequest {
    pb::LeaseSessionRequest {
        message: Some(message),
    }
}

/// A scripted idle worker over `channel`: reports every assignment's run id
/// with its arrival time on `received`, and fails the attempt at once.
async fn idle_worker(
    channel: Channel,
    token: String,
    name: String,
    received: mpsc::UnboundedSender<(String, Instant)>,
) -> anyhow::Result<()> {
    let (tx, up) = mpsc::channel(64);
    tx.send(request(Up::Hello(pb::WorkerHello {
        name,
        slots: SLOTS,
        ..Default::default()
    })))
    .await?;
    let mut client = WorkerServiceClient::new(channel);
    let mut call = tonic::Request::new(ReceiverStream::new(up));
    call.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut inbound = client.lease_session(call).await?.into_inner();
    tx.send(request(Up::Credit(pb::WorkerCredit { free_slots: SLOTS })))
        .await?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        let message = tokio::select! {
            message = inbound.message() => message?,
            _ = heartbeat.tick() => {
                tx.send(request(Up::Heartbeat(pb::WorkerHeartbeat::default()))).await?;
                continue;
            }
        };
        let Some(message) = message else {
            return Ok(());
        };
        let Some(Down::Assignment(assignment)) = message.message else {
            continue;
        };
        let arrived = Instant::now();
        let lease = assignment.lease.unwrap_or_default();
        let _ = received.send((lease.run_id.clone(), arrived));
        let failure = pb::RunFailure {
            error: "dispatch benchmark: not executed".into(),
            retryable: false,
        };
        tx.send(request(Up::Completion(pb::RunCompletion {
            lease: Some(lease),
            outcome: Some(pb::run_completion::Outcome::Failure(failure)),
            ..Default::default()
        })))
        .await?;
        // The slot is free again.
        tx.send(request(Up::Credit(pb::WorkerCredit { free_slots: SLOTS })))
            .await?;
    }
}

fn backup_spec(round: usize) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: format!("/bench/source-{round}"),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/bench/target".into(),
            )),
        }),
        ..Default::default()
    })
}

/// Latencies of one series, and catalog transactions per run.
struct Series {
    catalog: Vec<Duration>,
    after_create: Vec<Duration>,
    round_trip: Vec<Duration>,
    transactions_per_run: f64,
}

/// PostgreSQL flushes a connection's statistics within this long.
const STATISTICS_SETTLE: Duration = Duration::from_secs(11);

async fn settled_transactions(server: &TestServer) -> anyhow::Result<i64> {
    tokio::time::sleep(STATISTICS_SETTLE).await;
    Ok(server.catalog().committed_transactions().await?)
}

/// Creates `runs` runs through `through`, one after the other, each once
/// the previous one reached a worker.
async fn measure(
    through: &TestServer,
    runs: usize,
    received: &mut mpsc::UnboundedReceiver<(String, Instant)>,
) -> anyhow::Result<Series> {
    let mut after_create = Vec::with_capacity(runs);
    let mut round_trip = Vec::with_capacity(runs);
    let mut ids = Vec::with_capacity(runs);
    let transactions_before = settled_transactions(through).await?;
    for round in 0..runs {
        let started = Instant::now();
        let id = through.admin().queue_run(backup_spec(round)).await;
        let created = Instant::now();
        let arrived = tokio::time::timeout(GIVE_UP, async {
            loop {
                match received.recv().await {
                    Some((run_id, arrived)) if run_id == id => return Some(arrived),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("run {id} reached no worker within {GIVE_UP:?}"))?
        .ok_or_else(|| anyhow::anyhow!("every worker session ended"))?;
        after_create.push(arrived.saturating_duration_since(created));
        round_trip.push(arrived.duration_since(started));
        ids.push(id);
    }
    let transactions = settled_transactions(through).await? - transactions_before;
    let mut catalog = Vec::with_capacity(runs);
    for id in &ids {
        let run = through.get_run(id).await;
        let time = |t: Option<prost_types::Timestamp>| -> anyhow::Result<SystemTime> {
            let t = t.ok_or_else(|| anyhow::anyhow!("run {id} lacks a timestamp"))?;
            Ok(SystemTime::try_from(t)?)
        };
        let leased = time(run.start_time)?;
        let created = time(run.create_time)?;
        catalog.push(leased.duration_since(created).unwrap_or_default());
    }
    Ok(Series {
        catalog,
        after_create,
        round_trip,
        transactions_per_run: transactions as f64 / runs.max(1) as f64,
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, figure: &str, mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    format!(
        "| {label} | {figure} | {} | {} | {} | {} | {} |",
        latencies.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs = env_number("BENCH_RUNS", 500);
    let workers = env_number("BENCH_WORKERS", 4).max(1);
    let home = TestServer::start(Backend::Postgres).await;
    let other = home.start_replica().await;

    let (sender, mut received) = mpsc::unbounded_channel();
    for index in 0..workers {
        let name = format!("bench-{index}");
        let token = home.worker_token_for(&name).await;
        let channel = home.channel().await;
        let sender = sender.clone();
        // Each session lives as long as the benchmark.
        tokio::spawn(async move {
            if let Err(error) = idle_worker(channel, token, name, sender).await {
                eprintln!("a worker session ended: {error:#}");
            }
        });
    }
    drop(sender);
    // Warm-up: connections, caches and every session seated.
    measure(&home, workers * 4, &mut received).await?;

    let mut load = Vec::new();
    println!("| created through | figure | runs | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (label, through) in [("the worker's replica", &home), ("another replica", &other)] {
        let series = measure(through, runs, &mut received).await?;
        println!("{}", summary(label, "catalog", series.catalog));
        println!(
            "{}",
            summary(label, "worker after create", series.after_create)
        );
        println!("{}", summary(label, "worker round trip", series.round_trip));
        load.push(format!(
            "{:.1} through {label}",
            series.transactions_per_run
        ));
    }
    println!();
    println!("Catalog transactions per run: {}.", load.join(", "));
    Ok(())
}
