//! Writes queued events to the outbox, a batch per transaction: the writes stay
//! off the admission path, and a burst costs one commit per batch, not per event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::events::{OutboxEvent, WebhookOutbox};
use crate::meter::EventCounters;

/// Tries of one batch before it is dropped (the database is down): the queue
/// behind it must not grow without end.
const TRIES: u32 = 3;
const PAUSE: Duration = Duration::from_millis(500);
/// The longest a write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub struct Limits {
    pub batch: usize,
    /// The least time between the starts of two writes, unless the batch fills
    /// first (`events.outbox_gather`). A commit (a transaction, an fsync, the
    /// WAL's pages) costs more than the events in it, and at saturation that cost
    /// is taken from admissions: a writer that keeps up would commit a few events
    /// at a time. An event that finds the last write older than this is written
    /// at once (an idle node sends its events without delay); one that comes
    /// sooner waits for the rest of it, so an event waits at most this much
    /// before its write begins.
    pub gather: Duration,
    /// Rows per publisher (`webhooks.outbox_cap`).
    pub cap: u64,
}

pub async fn run(
    mut queue: mpsc::Receiver<OutboxEvent>,
    outbox: Arc<dyn WebhookOutbox>,
    limits: Limits,
    counters: EventCounters,
    written: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(limits.batch);
    let mut last_write: Option<Instant> = None;
    loop {
        let got = tokio::select! {
            got = queue.recv_many(&mut batch, limits.batch) => got,
            () = shutdown.cancelled() => break,
        };
        if got == 0 {
            return;
        }
        if let Some(due) = last_write.map(|last| last + limits.gather)
            && batch.len() < limits.batch
            && due > Instant::now()
        {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = shutdown.cancelled() => {}
            }
            while batch.len() < limits.batch {
                match queue.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        last_write = Some(Instant::now());
        write(&mut batch, outbox.as_ref(), &limits, &counters).await;
        written.notify_one();
    }
    // A graceful stop: what is queued is written before the server exits.
    queue.close();
    while queue.recv_many(&mut batch, limits.batch).await > 0 {
        write(&mut batch, outbox.as_ref(), &limits, &counters).await;
    }
}

async fn write(batch: &mut Vec<OutboxEvent>, outbox: &dyn WebhookOutbox, limits: &Limits, counters: &EventCounters) {
    let mut last_error = String::new();
    for attempt in 1..=TRIES {
        match tokio::time::timeout(WRITE_TIMEOUT, outbox.enqueue(batch, limits.cap)).await {
            Ok(Ok(done)) => {
                if done.refused_full > 0 {
                    counters.dropped_outbox_full.increment(done.refused_full);
                    tracing::warn!(
                        refused = done.refused_full,
                        cap = limits.cap,
                        "webhook outbox full (webhooks.outbox_cap): new events refused until deliveries catch up"
                    );
                }
                batch.clear();
                return;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {WRITE_TIMEOUT:?}"),
        }
        if attempt < TRIES {
            tokio::time::sleep(PAUSE).await;
        }
    }
    counters.dropped_outbox_error.increment(batch.len() as u64);
    tracing::error!(
        dropped = batch.len(),
        error = %last_error,
        "could not write session events to the webhook outbox: dropped"
    );
    batch.clear();
}
