//! [`WebhookOutbox`] on PostgreSQL, where several nodes claim from one outbox:
//! a claim locks the rows it takes and skips the rows another node is taking.
//!
//! The writer stages a batch as rows of one publisher's events each (at most
//! [`BATCH_EVENTS`](crate::domain::events::BATCH_EVENTS)), packed as SQLite's outbox packs them ([`staged`]);
//! the delivery moves staged batches into rows, one node at a time and in the
//! batches' order, before it claims ([`move_staged`]). A
//! row has its body rendered, so a node of any version delivers it. Why: a row
//! per event written by the writer cost a saturated node a rendered body and
//! seven array elements an event, and PostgreSQL a heap row and four index
//! entries an event (bench/analysis.md, "Round twenty-two"); the move does that
//! work when the delivery runs, which on a saturated node is later
//! (`SCHED_IDLE`).

use std::borrow::Cow;
use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::Row;

use super::staged::{self, StagedBody};
use super::{WAITING, claimed_of, db_err, events_column, events_per_publisher, short, to_i64, webhook_of};
use crate::domain::Millis;
use crate::domain::events::{
    Claimed, Enqueued, OutboxBatch, OutboxCounts, OutboxEvent, SessionEvent, Settled, Webhook, WebhookOutbox,
};
use crate::domain::ports::SettingsError;
use crate::event_body;
use crate::store::postgres::PostgresSettings;

#[async_trait]
impl WebhookOutbox for PostgresSettings {
    async fn webhook(&self, publisher_id: &str) -> Result<Option<Webhook>, SettingsError> {
        let row = sqlx::query("SELECT publisher_id, url, secret, events FROM webhooks WHERE publisher_id = $1")
            .bind(publisher_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(webhook_of).transpose()
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, SettingsError> {
        let rows = sqlx::query("SELECT publisher_id, url, secret, events FROM webhooks ORDER BY publisher_id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(webhook_of).collect()
    }

    async fn put_webhook(&self, w: &Webhook) -> Result<(), SettingsError> {
        sqlx::query(
            "INSERT INTO webhooks (publisher_id, url, secret, events) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (publisher_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
             events = excluded.events, updated_at = now()",
        )
        .bind(&w.publisher_id)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(events_column(&w.events))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_webhook(&self, publisher_id: &str) -> Result<bool, SettingsError> {
        let mut tx = self.pool().begin().await.map_err(db_err)?;
        let gone = sqlx::query("DELETE FROM webhooks WHERE publisher_id = $1")
            .bind(publisher_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        for table in ["webhook_outbox", "webhook_outbox_staged"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE publisher_id = $1"))
                .bind(publisher_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(gone > 0)
    }

    fn pack(&self, batch: &mut OutboxBatch, event: &OutboxEvent) -> Result<(), SettingsError> {
        staged::pack_into(batch, event)
    }

    fn pack_reported(&self, batch: &mut OutboxBatch, message_id: [u8; 16], event: &SessionEvent, created_at: Millis) {
        staged::pack_reported_into(batch, message_id, event, created_at);
    }

    async fn enqueue_packed(&self, mut batches: Vec<OutboxBatch>, cap: u64) -> Result<Enqueued, SettingsError> {
        // The common case, one publisher whose batches fit under its cap: one
        // statement for all its rows, which reads the count itself. Nodes
        // writing at once may each see room for their batch, as they did with a
        // row per event: the cap is exact on one node, and a batch per node over
        // it across nodes.
        let alone = match events_per_publisher(&batches).as_slice() {
            [(publisher_id, n)] => Some(((*publisher_id).to_owned(), *n)),
            _ => None,
        };
        if let Some((publisher_id, n)) = alone {
            let mut sizes = Vec::with_capacity(batches.len());
            let mut packed = Vec::with_capacity(batches.len());
            for batch in &mut batches {
                sizes.push(i64::try_from(batch.len()).unwrap_or(i64::MAX));
                packed.push(std::mem::take(&mut batch.packed));
            }
            // The rows' ids are taken in the order of the arrays (ORDER BY the
            // ordinality): a publisher's rows are delivered in id order.
            let staged = sqlx::query(
                "INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) \
                 SELECT $1, t.events, t.batch, $4 FROM unnest($2::int8[], $3::bytea[]) WITH ORDINALITY AS t(events, batch, n) \
                 WHERE COALESCE((SELECT held FROM webhook_outbox_counts WHERE publisher_id = $1), 0) + $5 <= $6 \
                 ORDER BY t.n",
            )
            .bind(&publisher_id)
            .bind(sizes)
            .bind(&packed)
            .bind(staged::PACKED)
            .bind(to_i64(n))
            .bind(to_i64(cap))
            .execute(self.pool())
            .await
            .map_err(db_err)?
            .rows_affected();
            if staged > 0 {
                return Ok(Enqueued {
                    written: n,
                    refused_full: 0,
                });
            }
            for (batch, bytes) in batches.iter_mut().zip(packed) {
                batch.packed = bytes;
            }
        }
        // Otherwise each staged row cut to the room its publisher's outbox has
        // (its oldest dead letters dropped to make some), in one transaction.
        let mut tx = self.pool().begin().await.map_err(db_err)?;
        let mut done = Enqueued::default();
        for mut batch in batches {
            let left = usize::try_from(room_for(&mut tx, &batch.publisher_id, cap).await?).unwrap_or(usize::MAX);
            if batch.len() > left {
                done.refused_full += (batch.len() - left) as u64;
                batch.truncate(left);
            }
            if batch.is_empty() {
                continue;
            }
            done.written += batch.len() as u64;
            sqlx::query(
                "INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES ($1, $2, $3, $4)",
            )
            .bind(&batch.publisher_id)
            .bind(i64::try_from(batch.len()).unwrap_or(i64::MAX))
            .bind(batch.packed)
            .bind(staged::PACKED)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(done)
    }

    async fn claim(&self, now: Millis, lease: Millis, limit: u32) -> Result<Vec<Claimed>, SettingsError> {
        // Rows first; staged batches are moved only when the rows fall short,
        // a few claims' worth at a time: a move is seven round trips, which a
        // claim paid every time made the delivery's loop slower.
        let mut claimed = claim_rows(self.pool(), now, lease, limit).await?;
        let short = limit.saturating_sub(u32::try_from(claimed.len()).unwrap_or(u32::MAX));
        if short > 0 && move_staged(self.pool(), limit.saturating_mul(MOVE_AHEAD)).await? {
            claimed.extend(claim_rows(self.pool(), now, lease, short).await?);
        }
        Ok(claimed)
    }

    async fn settle(&self, outcomes: &[Settled]) -> Result<(), SettingsError> {
        // A round's deliveries leave in one statement and the next rows of their
        // keys are promoted in one more (was two statements per event); retries
        // and dead letters are rare and stay one statement each.
        let mut tx = self.pool().begin().await.map_err(db_err)?;
        let mut delivered_ids: Vec<i64> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for outcome in outcomes {
            match outcome {
                Settled::Delivered { id } => delivered_ids.push(*id),
                Settled::Retry {
                    id,
                    attempts,
                    next_at,
                    error,
                } => retry(&mut tx, *id, *attempts, *next_at, error).await?,
                Settled::Dead { id, attempts, error } => {
                    keys.extend(dead_letter(&mut tx, *id, *attempts, error).await?);
                }
            }
        }
        if !delivered_ids.is_empty() {
            let gone: Vec<String> =
                sqlx::query_scalar("DELETE FROM webhook_outbox WHERE id = ANY($1::bigint[]) RETURNING ordering_key")
                    .bind(&delivered_ids)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
            keys.extend(gone);
        }
        if !keys.is_empty() {
            keys.sort_unstable();
            keys.dedup();
            promote_next(&mut tx, &keys).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn outbox_counts(&self, publisher_id: &str) -> Result<OutboxCounts, SettingsError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE NOT dead) \
               + (SELECT COALESCE(SUM(events), 0) FROM webhook_outbox_staged WHERE publisher_id = $1)::bigint \
               AS pending, \
             COUNT(*) FILTER (WHERE dead) AS dead FROM webhook_outbox WHERE publisher_id = $1",
        )
        .bind(publisher_id)
        .fetch_one(self.pool())
        .await
        .map_err(db_err)?;
        let count = |name| -> Result<u64, SettingsError> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(db_err)?).unwrap_or(0))
        };
        Ok(OutboxCounts {
            pending: count("pending")?,
            dead: count("dead")?,
        })
    }
}

/// Claims due rows: the oldest undelivered row of each key, at most `limit`.
async fn claim_rows(
    pool: &sqlx::PgPool,
    now: Millis,
    lease: Millis,
    limit: u32,
) -> Result<Vec<Claimed>, SettingsError> {
    // The rows chosen are locked, and rows another node has locked are
    // skipped; the outer condition is checked again on the locked row, so a
    // row another node leased meanwhile is not taken twice.
    let rows = sqlx::query(
        "UPDATE webhook_outbox SET next_attempt_at = $1 WHERE id IN ( \
           SELECT o.id FROM webhook_outbox o \
           WHERE NOT o.dead AND o.next_attempt_at <= $2 \
             AND o.id = (SELECT MIN(i.id) FROM webhook_outbox i \
                         WHERE i.ordering_key = o.ordering_key AND NOT i.dead) \
           ORDER BY o.next_attempt_at, o.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         AND next_attempt_at <= $2 \
         RETURNING id, message_id, publisher_id, body, created_at, attempts",
    )
    .bind(to_i64(now.saturating_add(lease)))
    .bind(to_i64(now))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let mut claimed = rows.iter().map(claimed_of).collect::<Result<Vec<_>, SettingsError>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

async fn retry(
    tx: &mut sqlx::PgConnection,
    id: i64,
    attempts: u32,
    next_at: Millis,
    error: &str,
) -> Result<(), SettingsError> {
    sqlx::query("UPDATE webhook_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4")
        .bind(i64::from(attempts))
        .bind(to_i64(next_at))
        .bind(short(error))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Dead-letters the row; its key, whose next row is then due, if it was there.
async fn dead_letter(
    tx: &mut sqlx::PgConnection,
    id: i64,
    attempts: u32,
    error: &str,
) -> Result<Option<String>, SettingsError> {
    sqlx::query_scalar(
        "UPDATE webhook_outbox SET dead = TRUE, attempts = $1, last_error = $2 WHERE id = $3 RETURNING ordering_key",
    )
    .bind(i64::from(attempts))
    .bind(short(error))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)
}

/// How many more rows the publisher's outbox takes under `cap`, after dropping
/// as many of its oldest dead letters as the room needs.
async fn room_for(tx: &mut sqlx::PgConnection, publisher_id: &str, cap: u64) -> Result<u64, SettingsError> {
    let held = u64::try_from(count_rows(&mut *tx, publisher_id).await?).unwrap_or(0);
    if held < cap {
        return Ok(cap - held);
    }
    // Full: make room from the dead letters, oldest first (a slice at a time).
    sqlx::query(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox \
         WHERE publisher_id = $1 AND dead ORDER BY id LIMIT 1000)",
    )
    .bind(publisher_id)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let held = u64::try_from(count_rows(&mut *tx, publisher_id).await?).unwrap_or(0);
    Ok(cap.saturating_sub(held))
}

/// The events the publisher's outbox holds (rows and staged), as the triggers count them.
async fn count_rows(tx: &mut sqlx::PgConnection, publisher_id: &str) -> Result<i64, SettingsError> {
    sqlx::query_scalar("SELECT COALESCE((SELECT held FROM webhook_outbox_counts WHERE publisher_id = $1), 0)")
        .bind(publisher_id)
        .fetch_one(tx)
        .await
        .map_err(db_err)
}

/// The row after the one that left (of each key) is due now.
async fn promote_next(tx: &mut sqlx::PgConnection, keys: &[String]) -> Result<(), SettingsError> {
    sqlx::query(
        "UPDATE webhook_outbox SET next_attempt_at = 0 WHERE id IN (SELECT MIN(id) FROM webhook_outbox \
         WHERE ordering_key = ANY($1::text[]) AND NOT dead GROUP BY ordering_key) AND next_attempt_at = $2",
    )
    .bind(keys)
    .bind(WAITING)
    .execute(tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Staged batches moved into rows at most per call: up to 8 staged rows, 4,096
/// events (a row holds at most 512, `BATCH_EVENTS`).
const BATCHES_PER_MOVE: i64 = 8;

/// A move takes the staged batches that hold this many claims' events.
const MOVE_AHEAD: u32 = 4;

/// The advisory lock (a transaction's) of the node that moves staged batches:
/// one node at a time, so rows are made in the batches' order.
const MOVE_LOCK: i64 = 0x6472_6973_635f_6d76; // "drisc_mv"

/// Moves the oldest staged batches into rows, in their order, if no other node
/// is moving them: as many as hold `wanted` events (at least one batch, at
/// most [`BATCHES_PER_MOVE`]). Moving eight batches whatever the claim made a
/// delivery with a staged backlog spend its time moving it (rendering and
/// inserting) before it sent anything. A batch this version cannot read (a
/// newer node's form, or damage) stops the move there, logged, so that no event
/// passes it. Whether anything was moved.
async fn move_staged(pool: &sqlx::PgPool, wanted: u32) -> Result<bool, SettingsError> {
    // By the primary key's index: the table's heap holds the batches moved
    // since the last vacuum, which a scan of it would read through first.
    let first: Option<i64> = sqlx::query_scalar("SELECT id FROM webhook_outbox_staged ORDER BY id LIMIT 1")
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    if first.is_none() {
        return Ok(false);
    }
    let mut tx = pool.begin().await.map_err(db_err)?;
    let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(MOVE_LOCK)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if !mine {
        tx.rollback().await.map_err(db_err)?;
        return Ok(false);
    }
    // The batches before the one that reaches `wanted` events, and it; their
    // bytes (stored apart, TOAST) are read only for those.
    let rows = sqlx::query(
        "SELECT id, publisher_id, batch, form FROM webhook_outbox_staged WHERE id IN ( \
           SELECT id FROM (SELECT id, events, SUM(events) OVER (ORDER BY id) AS upto \
                           FROM (SELECT id, events FROM webhook_outbox_staged ORDER BY id LIMIT $1) f) w \
           WHERE upto - events < $2) \
         ORDER BY id",
    )
    .bind(BATCHES_PER_MOVE)
    .bind(i64::from(wanted.max(1)))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut read = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(db_err)?;
        let publisher_id: &str = row.try_get("publisher_id").map_err(db_err)?;
        let batch: &[u8] = row.try_get("batch").map_err(db_err)?;
        let form: i64 = row.try_get("form").map_err(db_err)?;
        match staged::unstage(form, batch, publisher_id) {
            Ok(events) => read.push((id, publisher_id, events)),
            Err(e) => {
                tracing::error!(error = %e, staged = id, "unreadable staged webhook events: left in webhook_outbox_staged");
                break;
            }
        }
    }
    if read.is_empty() {
        // Ended now: a dropped transaction is rolled back by a task sqlx
        // spawns when the connection goes back to the pool, and until that
        // task runs the move's lock stays held, so a claim on another
        // connection would find it taken and move nothing.
        tx.rollback().await.map_err(db_err)?;
        return Ok(false);
    }
    let mut batch = Batch::with_capacity(read.iter().map(|(_, _, events)| events.len()).sum());
    let mut keys_seen: HashSet<&str> = HashSet::new();
    let mut n = 0usize;
    for (_, publisher_id, events) in &read {
        for e in events {
            // The bodies are rendered here, on the server's runtime (the
            // delivery's database calls run there): a chunk at a time.
            if n > 0 && n % staged::CHUNK == 0 {
                tokio::task::yield_now().await;
            }
            n += 1;
            // The statement sees the table as it was before it: a key's later
            // events in this move wait behind its first one here.
            let behind = !keys_seen.insert(&e.ordering_key);
            batch.push(publisher_id, e, behind);
        }
    }
    batch.insert(&mut tx).await?;
    let ids: Vec<i64> = read.iter().map(|(id, _, _)| *id).collect();
    sqlx::query("DELETE FROM webhook_outbox_staged WHERE id = ANY($1::bigint[])")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(true)
}

/// Staged events as columns, written by one `INSERT … SELECT FROM UNNEST`:
/// one statement (and one prepared shape, whatever the batch's size) where
/// there was one per event.
struct Batch<'a> {
    message_id: Vec<&'a str>,
    publisher_id: Vec<&'a str>,
    ordering_key: Vec<&'a str>,
    event_type: Vec<&'a str>,
    body: Vec<Cow<'a, str>>,
    created_at: Vec<i64>,
    /// An earlier event of the same key is in this batch.
    behind: Vec<bool>,
}

impl<'a> Batch<'a> {
    /// Room for the whole batch at once: grown a push at a time, the seven
    /// columns' reallocations and copies were a tenth of what a batch cost the
    /// writer when it wrote rows (callgrind, `bench/admission-instructions
    /// --webhooks --settings postgres`).
    fn with_capacity(n: usize) -> Self {
        Self {
            message_id: Vec::with_capacity(n),
            publisher_id: Vec::with_capacity(n),
            ordering_key: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            behind: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, publisher_id: &'a str, e: &'a staged::Unstaged<'a>, behind: bool) {
        self.message_id.push(&e.message_id);
        self.publisher_id.push(publisher_id);
        self.ordering_key.push(&e.ordering_key);
        self.event_type.push(&e.event_type);
        // The body is rendered here, where nodes of any version read it as it is.
        self.body.push(match &e.body {
            StagedBody::Event(event) => Cow::Owned(event_body::render_at(event, e.created_at)),
            StagedBody::Text(text) => Cow::Borrowed(text),
        });
        self.created_at.push(to_i64(e.created_at));
        self.behind.push(behind);
    }

    /// Rows are inserted in the batch's order (`ORDER BY` the ordinality), so
    /// their ids, which order a key's events, follow it. A row is due at once
    /// only if it is the first of its key here and its key has nothing
    /// undelivered in the table; otherwise it waits for the one before.
    async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<(), SettingsError> {
        sqlx::query(
            "INSERT INTO webhook_outbox \
             (message_id, publisher_id, ordering_key, event_type, body, created_at, next_attempt_at) \
             SELECT e.m, e.p, e.k, e.t, e.b, e.c, CASE WHEN e.behind OR EXISTS (SELECT 1 FROM webhook_outbox o \
             WHERE o.ordering_key = e.k AND NOT o.dead) THEN $8 ELSE e.c END \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bool[]) \
             WITH ORDINALITY AS e(m, p, k, t, b, c, behind, n) ORDER BY e.n",
        )
        .bind(&self.message_id)
        .bind(&self.publisher_id)
        .bind(&self.ordering_key)
        .bind(&self.event_type)
        .bind(self.body.iter().map(AsRef::as_ref).collect::<Vec<&str>>())
        .bind(&self.created_at)
        .bind(&self.behind)
        .bind(WAITING)
        .execute(tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
