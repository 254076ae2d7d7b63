//! Writes queued events to the outbox, a batch per transaction: the writes stay
//! off the admission path, and a burst costs one commit per batch, not per event.
//! The events wait in a [`Queue`], packed as they were reported.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::events::{OutboxBatch, OutboxQueue, WebhookOutbox};
use crate::meter::EventCounters;
use crate::telemetry::throttle::{self, Throttle};

/// Tries of one batch before it is dropped (the database is down): the queue
/// behind it must not grow without end.
const TRIES: u32 = 3;
const PAUSE: Duration = Duration::from_millis(500);
/// The longest a write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer's log lines for events it drops, one per [`throttle::EVERY`]
/// each. A full outbox refuses a whole write's events, and a burst writes back
/// to back: a million sessions ending at once (a restart nobody came back from)
/// logged 219 lines in 5 s, one per batch.
struct Drops {
    refused_full: Throttle,
    failed: Throttle,
}

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

/// The events reported and not written yet, bounded (`events.outbox_queue`):
/// the reports push, never waiting; the writer takes.
pub struct Queue {
    queued: Mutex<Queued>,
    most: usize,
    /// A write's events (`events.outbox_batch`): the push that makes the queue
    /// hold that many tells [`Self::batch_ready`].
    batch: usize,
    /// Told when the queue stops being empty.
    ready: Notify,
    /// Told when the queue comes to hold a write's events: a writer that waits
    /// out the gather writes them now. It waited out the whole gather before,
    /// and a burst of ends past `outbox_queue` / `outbox_gather` events a second
    /// (65,536 in 200 ms) filled the queue while it slept (bench/analysis.md,
    /// round thirty-eight).
    batch_ready: Notify,
}

#[derive(Default)]
struct Queued {
    events: OutboxQueue,
    /// The writer has stopped: nothing queued now would be written.
    closed: bool,
}

/// [`Queue::push`] dropped the event: the queue holds `events.outbox_queue`
/// events (the database is behind), or the writer has stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Queue {
    pub fn new(most: usize, batch: usize) -> Self {
        Self {
            queued: Mutex::new(Queued::default()),
            most,
            batch,
            ready: Notify::new(),
            batch_ready: Notify::new(),
        }
    }

    fn queued(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Packs an event of `publisher_id` onto the queue with `pack` (an outbox's
    /// [`WebhookOutbox::pack_reported`]) under the queue's lock: a few hundred
    /// instructions, and the writer holds the lock only to take the batches
    /// whole.
    pub fn push(&self, publisher_id: &str, pack: impl FnOnce(&mut OutboxBatch)) -> Result<(), Full> {
        let mut queued = self.queued();
        if queued.closed || queued.events.len() >= self.most {
            return Err(Full);
        }
        let was_empty = queued.events.is_empty();
        let packed: Result<(), std::convert::Infallible> = queued.events.push(publisher_id, |batch| {
            pack(batch);
            Ok(())
        });
        let Ok(()) = packed;
        let batch_ready = queued.events.len() == self.batch;
        drop(queued);
        if was_empty {
            self.ready.notify_one();
        }
        if batch_ready {
            self.batch_ready.notify_one();
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.queued().events.len()
    }

    fn take(&self, most: usize) -> Vec<OutboxBatch> {
        self.queued().events.take(most)
    }

    /// Refuses every push from now on.
    fn close(&self) {
        self.queued().closed = true;
    }
}

pub async fn run(
    queue: Arc<Queue>,
    outbox: Arc<dyn WebhookOutbox>,
    limits: Limits,
    counters: EventCounters,
    written: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut last_write: Option<Instant> = None;
    let cap = limits.cap;
    let drops = Drops {
        refused_full: Throttle::new(throttle::EVERY, move |refused| {
            tracing::warn!(
                refused,
                cap,
                "webhook outbox full (webhooks.outbox_cap): new events refused until deliveries catch up \
                 (one line per 10 s at most, with the count since the last)"
            );
        }),
        // Its lines tell the latest error; a burst's rest has none to tell.
        failed: Throttle::new(throttle::EVERY, |dropped| {
            tracing::error!(
                dropped,
                "could not write session events to the webhook outbox: dropped \
                 (the count since the last such line, which tells the error)"
            );
        }),
    };
    while !shutdown.is_cancelled() {
        if queue.len() == 0 {
            // A push between the look and the wait leaves a permit: the wait
            // then ends at once.
            tokio::select! {
                () = queue.ready.notified() => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        if let Some(due) = last_write.map(|last| last + limits.gather)
            && queue.len() < limits.batch
            && due > Instant::now()
        {
            // A permit left by a batch the last write took wakes this early:
            // the loop then looks again.
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = queue.batch_ready.notified() => {}
                () = shutdown.cancelled() => {}
            }
            if queue.len() < limits.batch && due > Instant::now() && !shutdown.is_cancelled() {
                continue;
            }
        }
        last_write = Some(Instant::now());
        write(queue.take(limits.batch), outbox.as_ref(), &limits, &counters, &drops).await;
        written.notify_one();
    }
    // A graceful stop: what is queued is written before the server exits.
    queue.close();
    loop {
        let batches = queue.take(limits.batch);
        if batches.is_empty() {
            break;
        }
        write(batches, outbox.as_ref(), &limits, &counters, &drops).await;
    }
}

async fn write(
    mut batches: Vec<OutboxBatch>,
    outbox: &dyn WebhookOutbox,
    limits: &Limits,
    counters: &EventCounters,
    drops: &Drops,
) {
    if batches.is_empty() {
        return;
    }
    let events: usize = batches.iter().map(OutboxBatch::len).sum();
    let mut last_error = String::new();
    for attempt in 1..=TRIES {
        // The last try gives the batches away; those before keep a copy to try again.
        let this = if attempt < TRIES {
            batches.clone()
        } else {
            std::mem::take(&mut batches)
        };
        match tokio::time::timeout(WRITE_TIMEOUT, outbox.enqueue_packed(this, limits.cap)).await {
            Ok(Ok(done)) => {
                if done.refused_full > 0 {
                    counters.dropped_outbox_full.increment(done.refused_full);
                    drops.refused_full.count(done.refused_full);
                }
                return;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {WRITE_TIMEOUT:?}"),
        }
        if attempt < TRIES {
            tokio::time::sleep(PAUSE).await;
        }
    }
    let events = events as u64;
    counters.dropped_outbox_error.increment(events);
    if let Some(dropped) = drops.failed.hit_many(events) {
        tracing::error!(
            dropped,
            error = %last_error,
            "could not write session events to the webhook outbox: dropped \
             (one line per 10 s at most, with the count since the last)"
        );
    }
}
