//! The lease timing in effect: the server's own settings, overridden by the
//! configuration keys `lease_ttl_seconds`, `retry_backoff_seconds` and
//! `run_deadline_seconds` when they are set.
//!
//! Read again at every grant, heartbeat, completion and reaper pass rather
//! than once at start-up, so a changed key takes effect without a restart:
//! at the next lease operation on the replica that changed it, and within
//! [`MAX_AGE`] on every other (the keys are cached that long, so the hot
//! path does not query them at every heartbeat).

use std::time::Duration;

use crate::catalog::leases::LeaseSettings;
use crate::catalog::Catalog;
use crate::model::configuration::{LEASE_TTL_SECONDS, RETRY_BACKOFF_SECONDS, RUN_DEADLINE_SECONDS};

/// How long the configured keys are used before they are read again.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// `base` with every configured key applied. When the keys cannot be read,
/// or one does not parse (the API validates values, so only a hand-edited
/// catalog has such), that setting stays at `base`, with a warning.
pub async fn current(catalog: &Catalog, base: LeaseSettings) -> LeaseSettings {
    let keys = [
        LEASE_TTL_SECONDS,
        RETRY_BACKOFF_SECONDS,
        RUN_DEADLINE_SECONDS,
    ];
    let values = match catalog.recent_configuration_values(&keys, MAX_AGE).await {
        Ok(values) => values,
        Err(error) => {
            tracing::warn!(%error, "could not read the lease settings; using the server's");
            return base;
        }
    };
    let mut settings = base;
    for (key, value) in values {
        let Some(seconds) = seconds(&key, &value) else {
            continue;
        };
        match key.as_str() {
            LEASE_TTL_SECONDS => settings.ttl = seconds,
            RETRY_BACKOFF_SECONDS => {
                settings.backoff_base = seconds;
                settings.backoff_max = settings.backoff_max.max(seconds);
            }
            RUN_DEADLINE_SECONDS => settings.attempt_deadline = seconds,
            _ => {}
        }
    }
    settings
}

fn seconds(key: &str, value: &str) -> Option<Duration> {
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds > 0 => Some(Duration::from_secs(seconds)),
        _ => {
            tracing::warn!(
                key,
                value,
                "lease setting is not a positive number of seconds; using the server's"
            );
            None
        }
    }
}
