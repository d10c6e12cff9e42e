//! Catalog queries for notifications: channels (their sensitive values
//! sealed), rules, and deliveries.
//!
//! Deliveries are created by every replica that notices an event, and the
//! unique key `(channel_id, event, subject_id, episode)` keeps one of each
//! (`ON CONFLICT DO NOTHING`). A replica claims due rows before it sends
//! them (`claim_until`, `claimed_by`; `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, the one writer on SQLite), and records an attempt only while
//! its claim stands, so a notice is sent by one replica at a time.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{fetch_scoped, from_json, on_pool, on_read_pool, to_json, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::catalog::secrets::SealedColumns;
use crate::error::{DomainError, DomainResult};
use crate::model::notification::{
    Channel, ChannelSpec, ChannelTarget, Delivery, DeliveryState, Event, EventSet, Rule, RuleSpec,
};
use crate::secrets::{Keyring, Sealed};

const CHANNEL_COLUMNS: &str =
    "id, owner_id, name, description, settings, key_id, nonce, ciphertext, create_time, update_time";

const RULE_COLUMNS: &str = "id, owner_id, channel_id, job_id, all_owners, on_run_failed, \
     on_run_succeeded, on_run_cancelled, on_job_stale, on_run_waiting, stale_after_seconds, \
     waiting_after_seconds, create_time";

const DELIVERY_COLUMNS: &str = "id, channel_id, rule_id, owner_id, event, run_id, job_id, state, \
     attempts, last_error, http_status, create_time, next_attempt_time, finish_time";

/// Which rules match which owner's things: one job, every job of the
/// owner, or (`all_owners`) everyone's. `{owner}` and `{job}` name the
/// thing's columns.
fn scope_condition(owner: &str, job: &str) -> String {
    format!(
        "(nr.job_id = {job} OR (nr.job_id IS NULL AND (nr.all_owners OR nr.owner_id = {owner})))"
    )
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    description: String,
    settings: String,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl ChannelRow {
    fn into_channel(self) -> DomainResult<(Channel, Sealed)> {
        let target: ChannelTarget = from_json(&self.settings, "notification_channels.settings")?;
        let channel = Channel {
            id: self.id,
            spec: ChannelSpec {
                owner_id: self.owner_id,
                name: self.name,
                description: self.description,
                target,
            },
            create_time: self.create_time,
            update_time: self.update_time,
        };
        let sealed = Sealed {
            key_id: self.key_id,
            nonce: self.nonce,
            ciphertext: self.ciphertext,
        };
        Ok((channel, sealed))
    }
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: Uuid,
    owner_id: Uuid,
    channel_id: Uuid,
    job_id: Option<Uuid>,
    all_owners: bool,
    on_run_failed: bool,
    on_run_succeeded: bool,
    on_run_cancelled: bool,
    on_job_stale: bool,
    on_run_waiting: bool,
    stale_after_seconds: i64,
    waiting_after_seconds: i64,
    create_time: DateTime<Utc>,
}

impl From<RuleRow> for Rule {
    fn from(row: RuleRow) -> Self {
        Rule {
            id: row.id,
            spec: RuleSpec {
                owner_id: row.owner_id,
                channel_id: row.channel_id,
                job_id: row.job_id,
                all_owners: row.all_owners,
                events: EventSet {
                    run_failed: row.on_run_failed,
                    run_succeeded: row.on_run_succeeded,
                    run_cancelled: row.on_run_cancelled,
                    job_stale: row.on_job_stale,
                    run_waiting: row.on_run_waiting,
                },
                stale_after_seconds: row.stale_after_seconds,
                waiting_after_seconds: row.waiting_after_seconds,
            },
            create_time: row.create_time,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    channel_id: Uuid,
    rule_id: Option<Uuid>,
    owner_id: Uuid,
    event: String,
    run_id: Option<Uuid>,
    job_id: Option<Uuid>,
    state: String,
    attempts: i32,
    last_error: String,
    http_status: i32,
    create_time: DateTime<Utc>,
    next_attempt_time: DateTime<Utc>,
    finish_time: Option<DateTime<Utc>>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = DomainError;

    fn try_from(row: DeliveryRow) -> DomainResult<Self> {
        Ok(Delivery {
            id: row.id,
            channel_id: row.channel_id,
            rule_id: row.rule_id,
            owner_id: row.owner_id,
            event: Event::parse(&row.event)?,
            run_id: row.run_id,
            job_id: row.job_id,
            state: DeliveryState::parse(&row.state)?,
            attempts: row.attempts,
            last_error: row.last_error,
            http_status: row.http_status,
            create_time: row.create_time,
            next_attempt_time: row.next_attempt_time,
            finish_time: row.finish_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    delivery: DeliveryRow,
    payload: String,
}

/// A new notice for one channel.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// Its id.
    pub id: Uuid,
    /// The channel.
    pub channel_id: Uuid,
    /// The rule that fired.
    pub rule_id: Option<Uuid>,
    /// The channel's owner.
    pub owner_id: Uuid,
    /// What it is about.
    pub event: Event,
    /// The run or job it is about (its identity with `event` and `episode`).
    pub subject_id: Uuid,
    /// Tells a job's stale episodes apart; empty for run events.
    pub episode: String,
    /// The run, if any.
    pub run_id: Option<Uuid>,
    /// The job, if any.
    pub job_id: Option<Uuid>,
    /// The JSON body.
    pub payload: String,
}

/// What an attempt at a delivery came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// Where the delivery stands after it.
    pub state: DeliveryState,
    /// The error (empty when delivered).
    pub error: String,
    /// The HTTP status (0: none).
    pub http_status: i32,
    /// The next attempt's time (pending only).
    pub next_attempt_time: DateTime<Utc>,
}

/// A run that ended, or waits, and a rule whose scope covers it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RunMatch {
    /// The rule.
    pub rule_id: Uuid,
    /// Its channel.
    pub channel_id: Uuid,
    /// Its owner (the channel's).
    pub rule_owner_id: Uuid,
    /// Its RUN_WAITING threshold.
    pub waiting_after_seconds: i64,
    /// The run.
    pub run_id: Uuid,
    /// The run's owner.
    pub run_owner_id: Uuid,
    /// The run's job.
    pub job_id: Option<Uuid>,
    /// The job's name.
    pub job_name: Option<String>,
    /// The run's kind.
    pub kind: String,
    /// The run's state.
    pub state: String,
    /// Its final or last error.
    pub error: String,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it may first be leased.
    pub not_before_time: DateTime<Utc>,
    /// When it ended.
    pub finish_time: Option<DateTime<Utc>>,
    /// Which run ends the rule fires on.
    #[sqlx(flatten)]
    pub events: RunEventFlags,
}

/// A rule's run-end events as selected with a [`RunMatch`].
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct RunEventFlags {
    /// Run failed.
    pub on_run_failed: bool,
    /// Run succeeded.
    pub on_run_succeeded: bool,
    /// Run cancelled.
    pub on_run_cancelled: bool,
}

/// A scheduled job and a JOB_STALE rule whose scope covers it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StaleCandidate {
    /// The rule.
    pub rule_id: Uuid,
    /// Its channel.
    pub channel_id: Uuid,
    /// Its owner.
    pub rule_owner_id: Uuid,
    /// Its threshold (0: twice the schedule interval).
    pub stale_after_seconds: i64,
    /// The job.
    pub job_id: Uuid,
    /// The job's owner.
    pub job_owner_id: Uuid,
    /// The job's name.
    pub job_name: String,
    /// Its cron expression.
    pub schedule_cron: String,
    /// Its time zone.
    pub schedule_time_zone: String,
    /// When it was created.
    pub job_create_time: DateTime<Utc>,
    /// When its last successful backup ended.
    pub last_success: Option<DateTime<Utc>>,
}

/// A stale notice with no recovery notice yet.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OpenStaleEpisode {
    /// The channel.
    pub channel_id: Uuid,
    /// The job.
    pub subject_id: Uuid,
    /// The episode.
    pub episode: String,
}

impl Catalog {
    /// Stores a new channel under `id` (the id its values were sealed for).
    pub async fn create_notification_channel(
        &self,
        id: Uuid,
        spec: &ChannelSpec,
        sealed: &Sealed,
    ) -> DomainResult<Channel> {
        let sql = format!(
            "INSERT INTO notification_channels (id, owner_id, name, description, kind, settings, \
             credentials_secret_id, key_id, nonce, ciphertext, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {CHANNEL_COLUMNS}"
        );
        let credentials = match &spec.target {
            ChannelTarget::Email(email) => email.credentials_secret_id,
            ChannelTarget::Webhook(_) => None,
        };
        let row = on_pool!(self, |pool| sqlx::query_as::<_, ChannelRow>(&sql)
            .bind(id)
            .bind(spec.owner_id)
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(spec.target.kind())
            .bind(to_json(&spec.target))
            .bind(credentials)
            .bind(&sealed.key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(super::now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, &format!("channel named {:?} for this owner", spec.name)))?;
        Ok(row.into_channel()?.0)
    }

    /// A channel within `owner_scope`, with its sealed values.
    pub async fn notification_channel(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<(Channel, Sealed)> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM notification_channels \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: ChannelRow = fetch_scoped(
            &self.read_pool,
            &sql,
            id,
            owner_scope,
            "notification channel",
        )
        .await?;
        row.into_channel()
    }

    /// Lists channels by id, of one owner or (None) of everyone.
    pub async fn list_notification_channels(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
    ) -> DomainResult<(Vec<Channel>, String)> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE ($1 IS NULL OR owner_id = $1) \
             AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, ChannelRow>(&sql)
            .bind(owner_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification channels"))?;
        page.finish_rows(rows, |row| Ok(row.into_channel()?.0), |c| c.id)
    }

    /// Replaces a channel's sealed values.
    pub async fn reseal_notification_channel(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
        sealed: &Sealed,
    ) -> DomainResult<Channel> {
        let sql = format!(
            "UPDATE notification_channels SET key_id = $3, nonce = $4, ciphertext = $5, \
             update_time = $6 WHERE id = $1 AND ($2 IS NULL OR owner_id = $2) \
             RETURNING {CHANNEL_COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, ChannelRow>(&sql)
            .bind(id)
            .bind(owner_scope)
            .bind(&sealed.key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(super::now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification channel"))?
        .ok_or_else(|| DomainError::not_found("notification channel", id))?;
        Ok(row.into_channel()?.0)
    }

    /// Seals again under the primary key the values (signing secret,
    /// headers, SMTP password) of every channel a previous key of `keyring`
    /// sealed, as [`Catalog::reseal_secrets`] does for secrets. A row is
    /// replaced only if no one resealed or rotated it meanwhile; rows no key
    /// opens are left and logged. Returns how many were resealed.
    pub async fn reseal_notification_channels(&self, keyring: &Keyring) -> DomainResult<usize> {
        let Some(primary) = keyring.primary_id() else {
            return Ok(0);
        };
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE key_id <> $1");
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, ChannelRow>(&sql)
            .bind(primary)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification channels"))?;
        let mut resealed = 0;
        for row in rows {
            let (channel, old) = row.into_channel()?;
            let (id, owner) = (channel.id, channel.spec.owner_id);
            let new = match keyring
                .open_channel(id, owner, &old)
                .and_then(|values| keyring.seal_channel(id, owner, &values))
            {
                Ok(new) => new,
                Err(error) => {
                    tracing::warn!(channel = %id, %error, "notification channel not resealed");
                    continue;
                }
            };
            let changed = self
                .replace_sealed(&SealedColumns::CHANNELS, id, &old, &new)
                .await?;
            resealed += usize::from(changed);
        }
        Ok(resealed)
    }

    /// Deletes a channel within `owner_scope`, with its rules and deliveries.
    pub async fn delete_notification_channel(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM notification_channels WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        )
        .bind(id)
        .bind(owner_scope)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, "notification channel"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("notification channel", id));
        }
        Ok(())
    }

    /// Stores a new rule.
    pub async fn create_notification_rule(&self, spec: &RuleSpec) -> DomainResult<Rule> {
        let sql = format!(
            "INSERT INTO notification_rules ({RULE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {RULE_COLUMNS}"
        );
        let events = spec.events;
        let row = on_pool!(self, |pool| sqlx::query_as::<_, RuleRow>(&sql)
            .bind(super::new_id())
            .bind(spec.owner_id)
            .bind(spec.channel_id)
            .bind(spec.job_id)
            .bind(spec.all_owners)
            .bind(events.run_failed)
            .bind(events.run_succeeded)
            .bind(events.run_cancelled)
            .bind(events.job_stale)
            .bind(events.run_waiting)
            .bind(spec.stale_after_seconds)
            .bind(spec.waiting_after_seconds)
            .bind(super::now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification rule"))?;
        Ok(row.into())
    }

    /// A rule within `owner_scope`.
    pub async fn get_notification_rule(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<Rule> {
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM notification_rules \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: RuleRow =
            fetch_scoped(&self.read_pool, &sql, id, owner_scope, "notification rule").await?;
        Ok(row.into())
    }

    /// Lists rules by id, of one owner or (None) everyone's, optionally of
    /// one channel.
    pub async fn list_notification_rules(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
        channel_id: Option<Uuid>,
    ) -> DomainResult<(Vec<Rule>, String)> {
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM notification_rules WHERE ($1 IS NULL OR owner_id = $1) \
             AND ($2 IS NULL OR channel_id = $2) AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, RuleRow>(&sql)
            .bind(owner_id)
            .bind(channel_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification rules"))?;
        let (rows, next) = page.finish(rows, |row| row.id);
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    /// Deletes a rule within `owner_scope`.
    pub async fn delete_notification_rule(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM notification_rules WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        )
        .bind(id)
        .bind(owner_scope)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, "notification rule"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("notification rule", id));
        }
        Ok(())
    }

    /// Lists deliveries by id, of one owner or (None) everyone's,
    /// optionally of one channel and in one state.
    pub async fn list_notification_deliveries(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
        channel_id: Option<Uuid>,
        state: Option<DeliveryState>,
    ) -> DomainResult<(Vec<Delivery>, String)> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM notification_deliveries \
             WHERE ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR channel_id = $2) \
             AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR id > $4) ORDER BY id LIMIT $5"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, DeliveryRow>(&sql)
            .bind(owner_id)
            .bind(channel_id)
            .bind(state.map(DeliveryState::as_str))
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "notification deliveries"))?;
        page.finish_rows(rows, Delivery::try_from, |d| d.id)
    }

    /// Records a notice unless the same one (channel, event, subject,
    /// episode) is recorded already; returns whether it was new. With
    /// `claimed_by`, the new row is claimed by that holder until `claim_until`.
    pub async fn insert_notification_delivery(
        &self,
        delivery: &NewDelivery,
        now: DateTime<Utc>,
        claim: Option<(&str, DateTime<Utc>)>,
    ) -> DomainResult<bool> {
        let inserted = on_pool!(self, |pool| sqlx::query(
            "INSERT INTO notification_deliveries (id, channel_id, rule_id, owner_id, event, \
             subject_id, episode, run_id, job_id, payload, state, next_attempt_time, create_time, \
             claimed_by, claim_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $11, $12, $13) \
             ON CONFLICT (channel_id, event, subject_id, episode) DO NOTHING"
        )
        .bind(delivery.id)
        .bind(delivery.channel_id)
        .bind(delivery.rule_id)
        .bind(delivery.owner_id)
        .bind(delivery.event.as_str())
        .bind(delivery.subject_id)
        .bind(&delivery.episode)
        .bind(delivery.run_id)
        .bind(delivery.job_id)
        .bind(&delivery.payload)
        .bind(now)
        .bind(claim.map(|(holder, _)| holder))
        .bind(claim.map(|(_, until)| until))
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, "notification delivery"))?;
        Ok(inserted > 0)
    }

    /// One delivery within `owner_scope`.
    pub async fn get_notification_delivery(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<Delivery> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM notification_deliveries \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: DeliveryRow =
            fetch_scoped(&self.pool, &sql, id, owner_scope, "notification delivery").await?;
        row.try_into()
    }

    /// Claims up to `limit` due deliveries for `holder` until `until`;
    /// returns them with their bodies. Rows another replica holds are
    /// skipped, not waited for.
    pub async fn claim_notification_deliveries(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> DomainResult<Vec<(Delivery, String)>> {
        let rows = on_pool!(self, |pool, dialect| {
            let lock = match dialect {
                super::Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                // One writer: the statement is atomic as it stands.
                super::Dialect::Sqlite => "",
            };
            let sql = format!(
                "UPDATE notification_deliveries SET claimed_by = $1, claim_until = $2 \
                 WHERE id IN (SELECT id FROM notification_deliveries WHERE state = 'pending' \
                 AND next_attempt_time <= $3 AND (claim_until IS NULL OR claim_until < $3) \
                 ORDER BY next_attempt_time LIMIT $4 {lock}) \
                 RETURNING {DELIVERY_COLUMNS}, payload"
            );
            sqlx::query_as::<_, ClaimedRow>(&sql)
                .bind(holder)
                .bind(until)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| from_sqlx(e, "notification deliveries"))?;
        rows.into_iter()
            .map(|row| Ok((row.delivery.try_into()?, row.payload)))
            .collect()
    }

    /// Records an attempt at a delivery `holder` claimed, and releases the
    /// claim. Returns false (and records nothing) when the claim was lost.
    pub async fn record_notification_attempt(
        &self,
        id: Uuid,
        holder: &str,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
    ) -> DomainResult<bool> {
        let finish = (outcome.state != DeliveryState::Pending).then_some(now);
        let updated = on_pool!(self, |pool| sqlx::query(
            "UPDATE notification_deliveries SET state = $1, attempts = attempts + 1, \
             last_error = $2, http_status = $3, next_attempt_time = $4, finish_time = $5, \
             claimed_by = NULL, claim_until = NULL WHERE id = $6 AND claimed_by = $7"
        )
        .bind(outcome.state.as_str())
        .bind(&outcome.error)
        .bind(outcome.http_status)
        .bind(outcome.next_attempt_time)
        .bind(finish)
        .bind(id)
        .bind(holder)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, "notification delivery"))?;
        Ok(updated > 0)
    }

    /// Runs that ended after `since` and after the rule that covers them
    /// was made, for every rule firing on how they ended, that have no
    /// delivery on the rule's channel yet.
    pub async fn ended_runs_to_notify(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> DomainResult<Vec<RunMatch>> {
        let sql = format!(
            "SELECT {RUN_MATCH_COLUMNS} FROM runs r \
             JOIN notification_rules nr ON {scope} LEFT JOIN jobs j ON j.id = r.job_id \
             WHERE r.finish_time > $1 AND r.finish_time >= nr.create_time \
             AND ((r.state = 'failed' AND nr.on_run_failed) \
               OR (r.state = 'succeeded' AND nr.on_run_succeeded) \
               OR (r.state = 'cancelled' AND nr.on_run_cancelled)) \
             AND NOT EXISTS (SELECT 1 FROM notification_deliveries d \
               WHERE d.channel_id = nr.channel_id AND d.subject_id = r.id AND d.event <> 'run.waiting') \
             ORDER BY r.finish_time LIMIT $2",
            scope = scope_condition("r.owner_id", "r.job_id"),
        );
        on_read_pool!(self, |pool| sqlx::query_as::<_, RunMatch>(&sql)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "runs to notify"))
    }

    /// Queued runs ready since before `ready_before` (the shortest
    /// threshold ago), with every RUN_WAITING rule covering them that has
    /// not told its channel yet; the caller applies each rule's threshold.
    pub async fn waiting_runs_to_notify(
        &self,
        ready_before: DateTime<Utc>,
        limit: i64,
    ) -> DomainResult<Vec<RunMatch>> {
        let sql = format!(
            "SELECT {RUN_MATCH_COLUMNS} FROM runs r \
             JOIN notification_rules nr ON {scope} LEFT JOIN jobs j ON j.id = r.job_id \
             WHERE r.state = 'queued' AND nr.on_run_waiting AND r.not_before_time <= $1 \
             AND NOT EXISTS (SELECT 1 FROM notification_deliveries d \
               WHERE d.channel_id = nr.channel_id AND d.subject_id = r.id AND d.event = 'run.waiting') \
             ORDER BY r.not_before_time LIMIT $2",
            scope = scope_condition("r.owner_id", "r.job_id"),
        );
        on_read_pool!(self, |pool| sqlx::query_as::<_, RunMatch>(&sql)
            .bind(ready_before)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "waiting runs to notify"))
    }

    /// Every active scheduled job with every JOB_STALE rule covering it,
    /// and the end of its last successful backup.
    pub async fn stale_candidates(&self) -> DomainResult<Vec<StaleCandidate>> {
        let sql = format!(
            "SELECT nr.id AS rule_id, nr.channel_id, nr.owner_id AS rule_owner_id, \
             nr.stale_after_seconds, j.id AS job_id, j.owner_id AS job_owner_id, \
             j.name AS job_name, j.schedule_cron, j.schedule_time_zone, \
             j.create_time AS job_create_time, \
             (SELECT MAX(r.finish_time) FROM runs r WHERE r.job_id = j.id \
              AND r.kind = 'backup' AND r.state = 'succeeded') AS last_success \
             FROM notification_rules nr JOIN jobs j ON {scope} \
             WHERE nr.on_job_stale AND j.schedule_cron <> '' AND NOT j.schedule_paused",
            scope = scope_condition("j.owner_id", "j.id"),
        );
        on_read_pool!(self, |pool| sqlx::query_as::<_, StaleCandidate>(&sql)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "stale jobs"))
    }

    /// Stale notices that no recovery notice has followed.
    pub async fn open_stale_episodes(&self) -> DomainResult<Vec<OpenStaleEpisode>> {
        on_read_pool!(self, |pool| sqlx::query_as::<_, OpenStaleEpisode>(
            "SELECT d.channel_id, d.subject_id, d.episode FROM notification_deliveries d \
             WHERE d.event = 'job.stale' AND NOT EXISTS (SELECT 1 FROM notification_deliveries e \
             WHERE e.channel_id = d.channel_id AND e.subject_id = d.subject_id \
             AND e.event = 'job.recovered' AND e.episode = d.episode)"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "stale episodes"))
    }

    /// Whether any rule fires on `column` (`on_job_stale`, `on_run_waiting`):
    /// the notifier skips those scans when none does.
    pub async fn any_notification_rule_with(&self, column: RuleFlag) -> DomainResult<bool> {
        let sql = format!(
            "SELECT COUNT(*) FROM notification_rules WHERE {}",
            column.column()
        );
        let count: i64 = on_read_pool!(self, |pool| sqlx::query_scalar(&sql).fetch_one(pool).await)
            .map_err(|e| from_sqlx(e, "notification rules"))?;
        Ok(count > 0)
    }
}

/// The rule flags the notifier asks about before a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleFlag {
    /// JOB_STALE.
    JobStale,
    /// RUN_WAITING.
    RunWaiting,
}

impl RuleFlag {
    fn column(self) -> &'static str {
        match self {
            RuleFlag::JobStale => "on_job_stale",
            RuleFlag::RunWaiting => "on_run_waiting",
        }
    }
}

/// The columns of a [`RunMatch`].
const RUN_MATCH_COLUMNS: &str = "nr.id AS rule_id, nr.channel_id, nr.owner_id AS rule_owner_id, \
     nr.waiting_after_seconds, r.id AS run_id, r.owner_id AS run_owner_id, r.job_id, \
     j.name AS job_name, r.kind, r.state, r.error, r.create_time, r.not_before_time, \
     r.finish_time, nr.on_run_failed, nr.on_run_succeeded, nr.on_run_cancelled";
