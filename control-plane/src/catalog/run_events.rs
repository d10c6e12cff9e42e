//! Run announcements: the in-process channel every catalog method that
//! changes a run publishes on after its commit, and on PostgreSQL the relay
//! that puts other replicas' changes on the same channel.
//!
//! On PostgreSQL a row trigger on `runs` (migration 0013) notifies channel
//! `coffer_runs` inside the changing transaction, so a notification is
//! delivered on commit only, whoever made the change. Each replica listens
//! on one connection of its own and republishes what other replicas changed
//! (its own changes it announced already). Notifications sent while the
//! listening connection was down are lost, so after a reconnect the relay
//! announces every run changed since the connection was last known alive.
//! The subscribers' periodic re-reads stay as a fallback for what even that
//! misses (a deleted run, a clock step).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Catalog, Pool};

/// The connection setting that names the replica in a notification.
pub(super) const REPLICA_SETTING: &str = "coffer.replica";
/// The channel the trigger notifies.
const CHANNEL: &str = "coffer_runs";
/// Payload of the relay's own liveness probe (followed by the replica).
const PROBE: &str = "probe";
/// Silence after which the relay probes its connection with a notification
/// of its own; twice as long without hearing anything, it reconnects (a
/// connection can die without the socket noticing).
const PROBE_AFTER: Duration = Duration::from_secs(15);
/// Bounds of the pause between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Added to the catch-up window, for the time between a notification's
/// commit and its arrival.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(2);

/// The channel on which the catalog announces changed runs.
#[derive(Clone, Debug)]
pub(super) struct RunEvents(pub(super) Arc<broadcast::Sender<Uuid>>);

impl Default for RunEvents {
    fn default() -> Self {
        // A subscriber that falls this far behind is told it lagged and
        // re-reads what it watches; nothing waits on a slow subscriber.
        let (sender, _) = broadcast::channel(1024);
        RunEvents(Arc::new(sender))
    }
}

/// A notification as the trigger writes it: `<run id> <replica>`.
#[derive(Debug, PartialEq, Eq)]
enum Notice<'a> {
    /// Run `id` changed, through `sender` (empty: not a replica).
    Run { id: Uuid, sender: &'a str },
    /// A relay's liveness probe.
    Probe,
}

fn parse(payload: &str) -> Option<Notice<'_>> {
    let (first, sender) = payload.split_once(' ').unwrap_or((payload, ""));
    if first == PROBE {
        return Some(Notice::Probe);
    }
    let id = Uuid::parse_str(first).ok()?;
    Some(Notice::Run { id, sender })
}

impl Catalog {
    /// Relays the run changes other replicas make onto this catalog's run
    /// channel until `cancel` fires (PostgreSQL; returns at once on
    /// SQLite). `listening` says whether the relay is listening now.
    pub async fn relay_run_events(self, listening: watch::Sender<bool>, cancel: CancellationToken) {
        let Pool::Postgres(pool) = &self.pool else {
            return;
        };
        let pool = pool.clone();
        let mut pause = RECONNECT_MIN;
        // When the relay last knew its connection alive, once it had one.
        let mut alive: Option<Instant> = None;
        loop {
            let listener = tokio::select! {
                () = cancel.cancelled() => return,
                listener = listen(&pool) => listener,
            };
            let mut listener = match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for run changes of other replicas; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            pause = RECONNECT_MIN;
            listening.send_replace(true);
            if let Some(alive) = alive {
                self.catch_up(&pool, alive.elapsed() + CATCH_UP_MARGIN)
                    .await;
            }
            alive = Some(Instant::now());
            let lost = self.relay(&pool, &mut listener, &mut alive, &cancel).await;
            listening.send_replace(false);
            match lost {
                None => return,
                Some(why) => {
                    tracing::warn!(%why, "lost the connection listening for run changes; reconnecting")
                }
            }
        }
    }

    /// Republishes other replicas' changes until the connection is lost
    /// (returns why) or `cancel` fires (returns `None`).
    async fn relay(
        &self,
        pool: &PgPool,
        listener: &mut PgListener,
        alive: &mut Option<Instant>,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let mut probe = tokio::time::interval(PROBE_AFTER);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let own = self.replica.to_string();
        loop {
            let notification = tokio::select! {
                () = cancel.cancelled() => return None,
                _ = probe.tick() => {
                    let silent = alive.map_or(Duration::ZERO, |t| t.elapsed());
                    if silent >= PROBE_AFTER * 2 {
                        return Some("no notification, not even the relay's own probe, arrived".into());
                    }
                    if silent >= PROBE_AFTER {
                        self.send_probe(pool, &own).await;
                    }
                    continue;
                }
                notification = listener.try_recv() => notification,
            };
            let notification = match notification {
                Ok(Some(notification)) => notification,
                Ok(None) => return Some("the connection closed".into()),
                Err(error) => return Some(error.to_string()),
            };
            *alive = Some(Instant::now());
            match parse(notification.payload()) {
                Some(Notice::Run { id, sender }) if sender != own => self.publish_run(id),
                Some(_) => {}
                None => {
                    tracing::debug!(
                        payload = notification.payload(),
                        "ignoring a malformed run notification"
                    )
                }
            }
        }
    }

    /// Asks the database to notify the relay, so that a silent connection
    /// proves it still works.
    async fn send_probe(&self, pool: &PgPool, own: &str) {
        let result = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{PROBE} {own}"))
            .execute(pool)
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "could not send the run relay's probe");
        }
    }

    /// Announces every run changed within `window` before now (database
    /// clock): what was notified while the relay was not listening.
    async fn catch_up(&self, pool: &PgPool, window: Duration) {
        let changed: Result<Vec<Uuid>, _> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE update_time >= now() - make_interval(secs => $1)",
        )
        .bind(window.as_secs_f64())
        .fetch_all(pool)
        .await;
        match changed {
            Ok(changed) => {
                tracing::info!(
                    runs = changed.len(),
                    "announcing runs changed while the relay was not listening"
                );
                for id in changed {
                    self.publish_run(id);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the runs changed while the relay was not listening")
            }
        }
    }
}

/// A listener on [`CHANNEL`] over a connection of its own (not one of the
/// catalog pool's, which it would hold for good).
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let options = pool.connect_options().as_ref().clone();
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&own).await?;
    // A lost connection is re-established by the relay, which then catches up.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_the_run_and_the_sender() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse(&format!("{id} replica-a")),
            Some(Notice::Run {
                id,
                sender: "replica-a"
            })
        );
        assert_eq!(
            parse(&format!("{id} ")),
            Some(Notice::Run { id, sender: "" })
        );
        assert_eq!(parse("probe replica-a"), Some(Notice::Probe));
        assert_eq!(parse("not-a-run x"), None);
    }
}
