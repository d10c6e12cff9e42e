//! Notifications: the notifier every control-plane replica runs.
//!
//! Each round it finds the events rules fire on ([`events`]) and records
//! one delivery per event and channel, then claims the deliveries that are
//! due and attempts them: a webhook POST ([`webhook`]) or an e-mail
//! ([`email`]), to an address the SSRF policy allows ([`address`]). A
//! failed attempt is retried with exponential backoff (from
//! `notification_retry_base_seconds`, doubling, at most an hour) until
//! `notification_max_attempts`; every attempt is recorded on the delivery.
//! Deliveries live in the catalog, so a restart loses none, and a claim
//! makes each attempt one replica's.
//!
//! Runs never wait for notifications: the notifier reads what the catalog
//! recorded, after the fact.

pub mod address;
pub mod email;
pub mod events;
pub mod slack;
pub mod webhook;

use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_telemetry::names;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::catalog::notifications::{AttemptOutcome, NewDelivery};
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::configuration::{NOTIFICATION_MAX_ATTEMPTS, NOTIFICATION_RETRY_BASE_SECONDS};
use crate::model::notification::{
    Channel, ChannelSecrets, ChannelTarget, Delivery, DeliveryState, EmailTarget, Event,
    WebhookFormat,
};
use crate::secrets::Keyring;
use address::AddressPolicy;

/// Attempts of a delivery when `notification_max_attempts` is not set.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 8;
/// First retry delay when `notification_retry_base_seconds` is not set.
pub const DEFAULT_RETRY_BASE_SECONDS: i64 = 30;
/// Longest delay between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// Deliveries claimed per round.
const CLAIM_BATCH: i64 = 20;
/// Shortest pause between two rounds, however busy the runs are.
const MIN_ROUND_GAP: Duration = Duration::from_millis(250);

/// Why an attempt did not deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptError {
    /// What went wrong, for the delivery's `last_error`.
    pub message: String,
    /// The HTTP status a webhook answered (0: none).
    pub http_status: u16,
    /// Whether trying again cannot help (an address that is not allowed).
    pub permanent: bool,
}

impl AttemptError {
    /// An error another attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
        AttemptError {
            message: message.into(),
            http_status: 0,
            permanent: false,
        }
    }

    /// An error every attempt would meet.
    pub fn permanent(message: impl Into<String>) -> Self {
        AttemptError {
            message: message.into(),
            http_status: 0,
            permanent: true,
        }
    }

    /// A webhook's non-2xx answer.
    pub fn http(status: u16, message: impl Into<String>) -> Self {
        AttemptError {
            message: message.into(),
            http_status: status,
            permanent: false,
        }
    }
}

/// The notifier's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifierSettings {
    /// Longest pause between rounds (a run's change starts one sooner).
    pub poll_interval: Duration,
    /// How long a claim on a delivery lasts: a replica that dies while
    /// sending leaves it to another after this.
    pub claim_ttl: Duration,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        NotifierSettings {
            poll_interval: Duration::from_secs(2),
            claim_ttl: Duration::from_secs(120),
        }
    }
}

/// One replica's notifier. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    catalog: Catalog,
    keyring: Keyring,
    settings: NotifierSettings,
    /// This notifier's name in its claims.
    holder: String,
}

impl Notifier {
    /// A notifier over `catalog`, opening channels with `keyring`.
    pub fn new(catalog: Catalog, keyring: Keyring, settings: NotifierSettings) -> Self {
        Notifier {
            catalog,
            keyring,
            settings,
            holder: format!("notifier/{}", Uuid::new_v4().simple()),
        }
    }

    /// Runs rounds until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        if !self.keyring.is_configured() {
            tracing::info!("notifications disabled: no secrets key");
            return;
        }
        let mut runs = self.catalog.subscribe_runs();
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "notification round failed; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(MIN_ROUND_GAP) => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                // Lagging only means many changes: a round covers them all.
                _ = runs.recv() => {}
            }
        }
    }

    /// Finds new events, then attempts every due delivery.
    pub async fn round(&self) -> DomainResult<()> {
        let now = self.catalog.now().await?;
        let found = events::find(&self.catalog, now).await?;
        if found > 0 {
            tracing::debug!(found, "notifications recorded");
        }
        let until = now + chrono::Duration::from_std(self.settings.claim_ttl).unwrap_or_default();
        let claimed = self
            .catalog
            .claim_notification_deliveries(&self.holder, now, until, CLAIM_BATCH)
            .await?;
        // Concurrently, so one slow receiver does not hold up the others.
        let attempts = claimed
            .into_iter()
            .map(|(delivery, payload)| self.attempt(delivery, payload));
        for result in futures::future::join_all(attempts).await {
            if let Err(error) = result {
                tracing::warn!(%error, "recording a notification attempt failed");
            }
        }
        Ok(())
    }

    /// Sends a test notice through `channel` now and returns its delivery
    /// as the attempt left it.
    pub async fn send_test(&self, channel: &Channel) -> DomainResult<Delivery> {
        let now = self.catalog.now().await?;
        let id = crate::catalog::new_id();
        let payload = events::test_payload(id, channel.spec.owner_id, now).to_string();
        let delivery = NewDelivery {
            id,
            channel_id: channel.id,
            rule_id: None,
            owner_id: channel.spec.owner_id,
            event: Event::Test,
            subject_id: id,
            episode: String::new(),
            run_id: None,
            job_id: None,
            payload: payload.clone(),
        };
        let until = now + chrono::Duration::from_std(self.settings.claim_ttl).unwrap_or_default();
        self.catalog
            .insert_notification_delivery(&delivery, now, Some((&self.holder, until)))
            .await?;
        let recorded = self.catalog.get_notification_delivery(id, None).await?;
        self.attempt(recorded, payload).await?;
        self.catalog.get_notification_delivery(id, None).await
    }

    /// One attempt at a claimed delivery, recorded.
    async fn attempt(&self, delivery: Delivery, payload: String) -> DomainResult<()> {
        let result = self.send(&delivery, &payload).await;
        let now = self.catalog.now().await?;
        let (kind, outcome) = match result {
            Ok((kind, status)) => (
                kind,
                AttemptOutcome {
                    state: DeliveryState::Delivered,
                    error: String::new(),
                    http_status: i32::from(status),
                    next_attempt_time: now,
                },
            ),
            Err((kind, error)) => (kind, self.after_failure(&delivery, error, now).await?),
        };
        let label = match outcome.state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retry",
            DeliveryState::Failed => "failed",
        };
        metrics::counter!(names::NOTIFICATION_DELIVERIES, "channel" => kind, "outcome" => label)
            .increment(1);
        if outcome.state != DeliveryState::Delivered {
            tracing::info!(
                delivery = %delivery.id,
                channel = %delivery.channel_id,
                attempt = delivery.attempts + 1,
                error = %outcome.error,
                "notification not delivered ({label})"
            );
        }
        let recorded = self
            .catalog
            .record_notification_attempt(delivery.id, &self.holder, &outcome, now)
            .await?;
        if !recorded {
            tracing::warn!(delivery = %delivery.id, "claim lost before the attempt was recorded");
        }
        Ok(())
    }

    /// Where a delivery stands after a failed attempt: pending again after
    /// a backoff, or failed for good.
    async fn after_failure(
        &self,
        delivery: &Delivery,
        error: AttemptError,
        now: DateTime<Utc>,
    ) -> DomainResult<AttemptOutcome> {
        let max_attempts = configured_integer(
            &self.catalog,
            NOTIFICATION_MAX_ATTEMPTS,
            DEFAULT_MAX_ATTEMPTS,
        )
        .await?;
        let base = configured_integer(
            &self.catalog,
            NOTIFICATION_RETRY_BASE_SECONDS,
            DEFAULT_RETRY_BASE_SECONDS,
        )
        .await?;
        let made = i64::from(delivery.attempts) + 1;
        let give_up = error.permanent || made >= max_attempts || delivery.event == Event::Test;
        let delay = retry_delay(base, made);
        Ok(AttemptOutcome {
            state: if give_up {
                DeliveryState::Failed
            } else {
                DeliveryState::Pending
            },
            error: error.message,
            http_status: i32::from(error.http_status),
            next_attempt_time: now + chrono::Duration::from_std(delay).unwrap_or_default(),
        })
    }

    /// Sends one notice; the channel kind (for the metrics) with the HTTP
    /// status, or with the error.
    async fn send(
        &self,
        delivery: &Delivery,
        payload: &str,
    ) -> Result<(&'static str, u16), (&'static str, AttemptError)> {
        let (channel, sealed) = self
            .catalog
            .notification_channel(delivery.channel_id, None)
            .await
            .map_err(|e| ("unknown", AttemptError::transient(e.to_string())))?;
        let kind = channel.spec.target.kind();
        let fail = |error: DomainError| (kind, AttemptError::transient(error.to_string()));
        let secrets: ChannelSecrets = self
            .keyring
            .open_channel(channel.id, channel.spec.owner_id, &sealed)
            .map_err(fail)?;
        let policy = AddressPolicy::current(&self.catalog).await.map_err(fail)?;
        match &channel.spec.target {
            ChannelTarget::Webhook(target) => {
                let body = match target.format {
                    WebhookFormat::Coffer => payload.to_string(),
                    WebhookFormat::Slack => slack::body(payload),
                };
                let notice = webhook::Notice {
                    delivery_id: delivery.id,
                    event: delivery.event,
                    body: &body,
                    now: Utc::now(),
                };
                webhook::post(target, &secrets, &policy, &notice)
                    .await
                    .map(|status| (kind, status))
                    .map_err(|error| (kind, error))
            }
            ChannelTarget::Email(target) => {
                let login = self
                    .smtp_login(&channel, target, &secrets)
                    .await
                    .map_err(|error| (kind, error))?;
                let (subject, text) = email_text(delivery.event, payload);
                email::send(target, login, &policy, &subject, &text)
                    .await
                    .map(|()| (kind, 0))
                    .map_err(|error| (kind, error))
            }
        }
    }

    /// An e-mail channel's login: its own (the password sealed with the
    /// channel), or the older way, a secret of the channel's owner it names.
    async fn smtp_login(
        &self,
        channel: &Channel,
        target: &EmailTarget,
        secrets: &ChannelSecrets,
    ) -> Result<Option<email::Login>, AttemptError> {
        if let Some(username) = &target.username {
            return Ok(Some(email::Login {
                user: zeroize::Zeroizing::new(username.clone()),
                password: zeroize::Zeroizing::new(secrets.smtp_password.clone()),
            }));
        }
        let Some(secret_id) = target.credentials_secret_id else {
            return Ok(None);
        };
        let (owner, sealed) = self
            .catalog
            .sealed_secret(secret_id)
            .await
            .map_err(|e| AttemptError::permanent(format!("the login's secret: {e}")))?;
        if owner != channel.spec.owner_id {
            return Err(AttemptError::permanent(
                "the login's secret belongs to someone else",
            ));
        }
        let values = self
            .keyring
            .open(secret_id, owner, &sealed)
            .map_err(|e| AttemptError::permanent(format!("the login's secret: {e}")))?;
        Ok(Some(email::Login {
            user: zeroize::Zeroizing::new(values.access_key_id.clone()),
            password: zeroize::Zeroizing::new(values.secret_access_key.clone()),
        }))
    }
}

/// The integer configuration `key` (validated when written), or `default`.
async fn configured_integer(catalog: &Catalog, key: &str, default: i64) -> DomainResult<i64> {
    Ok(catalog
        .configuration_value(key)
        .await?
        .and_then(|value| value.parse().ok())
        .unwrap_or(default))
}

/// The delay before attempt `made + 1`: `base` seconds doubled per attempt
/// made beyond the first, at most [`MAX_RETRY_DELAY`].
fn retry_delay(base_seconds: i64, made: i64) -> Duration {
    let base = Duration::from_secs(u64::try_from(base_seconds.max(1)).unwrap_or(1));
    let doublings = u32::try_from((made - 1).clamp(0, 20)).unwrap_or(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// An e-mail's subject and body from a notice's JSON body.
fn email_text(event: Event, payload: &str) -> (String, String) {
    let parsed: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    let text = parsed
        .get("text")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("Coffer notification")
        .to_string();
    // One line, bounded: the subject is a header.
    let summary: String = text.chars().filter(|c| !c.is_control()).take(120).collect();
    let subject = format!("[coffer] {}: {summary}", event.as_str());
    let pretty = serde_json::to_string_pretty(&parsed).unwrap_or_default();
    (subject, format!("{text}\n\n{pretty}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour() {
        assert_eq!(retry_delay(30, 1), Duration::from_secs(30));
        assert_eq!(retry_delay(30, 2), Duration::from_secs(60));
        assert_eq!(retry_delay(30, 4), Duration::from_secs(240));
        assert_eq!(retry_delay(30, 12), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(30, 1000), MAX_RETRY_DELAY);
    }

    #[test]
    fn an_email_subject_is_one_line() {
        let payload = r#"{"text":"line one\r\nBcc: someone@example.com"}"#;
        let (subject, _) = email_text(Event::RunFailed, payload);
        assert!(
            !subject.contains('\n') && !subject.contains('\r'),
            "{subject}"
        );
    }

    #[test]
    fn not_allowed_is_permanent_and_an_answer_is_not() {
        assert!(AttemptError::permanent("x").permanent);
        assert!(!AttemptError::http(500, "x").permanent);
    }
}
