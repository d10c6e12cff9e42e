//! The key slots of encrypted repositories as the last run that opened
//! each one found them in storage (`repository_key_slots`, migration 0016).
//! A report replaces the repository's rows, fenced by the reporting lease
//! like every worker write. Display only: nothing reads these rows to open
//! a repository.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{from_json, in_transaction, now_micros, on_pool, on_read_pool, to_json, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::DomainResult;
use crate::model::key_slot::{KeySlotKind, KeySlotRecord, ReportedKeySlot};

#[derive(sqlx::FromRow)]
struct KeySlotRow {
    repository_id: Uuid,
    slot_id: String,
    kind: String,
    generations: String,
    create_time: DateTime<Utc>,
    report_time: DateTime<Utc>,
}

impl TryFrom<KeySlotRow> for KeySlotRecord {
    type Error = crate::error::DomainError;

    fn try_from(row: KeySlotRow) -> DomainResult<Self> {
        Ok(KeySlotRecord {
            repository_id: row.repository_id,
            slot: ReportedKeySlot {
                slot_id: row.slot_id,
                kind: KeySlotKind::parse(&row.kind)?,
                generations: from_json(&row.generations, "repository_key_slots.generations")?,
                create_time: row.create_time,
            },
            report_time: row.report_time,
        })
    }
}

impl Catalog {
    /// Replaces the recorded key slots of repository `repository_id` with
    /// `slots`, only while `lease` (run id, lease token) still holds a run
    /// on that repository; a zombie attempt records nothing.
    pub async fn record_key_slots(
        &self,
        repository_id: Uuid,
        slots: &[ReportedKeySlot],
        lease: (Uuid, i64),
    ) -> DomainResult<()> {
        let now = now_micros();
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let holds: Option<i64> = sqlx::query_scalar(
                "SELECT lease_token FROM runs WHERE id = $1 AND lease_token = $2 \
                 AND state = 'running' AND repository_id = $3",
            )
            .bind(lease.0)
            .bind(lease.1)
            .bind(repository_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "run"))?;
            if holds.is_none() {
                return Ok(());
            }
            sqlx::query("DELETE FROM repository_key_slots WHERE repository_id = $1")
                .bind(repository_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "key slots"))?;
            for slot in slots {
                sqlx::query(
                    "INSERT INTO repository_key_slots (repository_id, slot_id, kind, \
                     generations, create_time, report_time) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (repository_id, slot_id) DO NOTHING",
                )
                .bind(repository_id)
                .bind(&slot.slot_id)
                .bind(slot.kind.as_str())
                .bind(to_json(&slot.generations))
                .bind(slot.create_time)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "key slots"))?;
            }
            Ok(())
        }))
    }

    /// The recorded key slots of repository `repository_id`, by slot id.
    pub async fn repository_key_slots(
        &self,
        repository_id: Uuid,
    ) -> DomainResult<Vec<KeySlotRecord>> {
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, KeySlotRow>(
            "SELECT repository_id, slot_id, kind, generations, create_time, report_time \
             FROM repository_key_slots WHERE repository_id = $1 ORDER BY slot_id"
        )
        .bind(repository_id)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "key slots"))?;
        rows.into_iter().map(KeySlotRecord::try_from).collect()
    }

    /// The recorded key slots of every repository that runs into bucket
    /// `bucket_id` used, by repository and slot id.
    pub async fn bucket_key_slots(&self, bucket_id: Uuid) -> DomainResult<Vec<KeySlotRecord>> {
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, KeySlotRow>(
            "SELECT repository_id, slot_id, kind, generations, create_time, report_time \
             FROM repository_key_slots WHERE repository_id IN \
             (SELECT repository_id FROM runs WHERE target_bucket_id = $1 \
             AND repository_id IS NOT NULL) ORDER BY repository_id, slot_id"
        )
        .bind(bucket_id)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "key slots"))?;
        rows.into_iter().map(KeySlotRecord::try_from).collect()
    }
}
