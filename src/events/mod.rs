//! Session events on their way out: to the operators' live stream
//! (`GET /admin/v1/events`) and to the publishers' signed webhooks.
//!
//! [`Events`] hears every event the [`Meter`](crate::meter::Meter) forwards
//! (control's grants, refusals, takeovers, kicks and ends, and the ends a store
//! prunes) and never waits: an event that nobody wants (no stream open, no
//! webhook of its publisher for its type) costs one map look-up; one that is
//! wanted is rendered once for the streams and broadcast (a ring buffer: a slow
//! reader skips, see [`Published`]), and packed once for the outbox, onto a
//! bounded queue ([`writer::Queue`]).
//!
//! Durability starts when [`writer`] has written the event to the outbox in the
//! settings database (in batches, in one transaction each). Until then it is in
//! that queue: a full queue drops new events (counted), a crash loses what it
//! holds, a graceful stop writes it first. From the outbox, [`delivery`] sends
//! each event at least once, in order per session, with exponential backoff,
//! and dead-letters it after `webhooks.max_attempts` or `webhooks.max_age`. It
//! runs on a thread of its own that only gets the CPU admissions leave ([`idle`]):
//! a saturated node admits as if it had no webhook, and sends the backlog after.

pub mod delivery;
pub mod idle;
pub mod signature;
pub mod target;
pub mod writer;

use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::domain::events::{EventType, OutboxCounts, SessionEvent, Webhook, WebhookOutbox, message_id_text};
use crate::domain::ports::{EndCause, SessionEvents, SettingsError};
use crate::domain::{PoolKey, SessionId};
use crate::meter::{EventCounters, Meter};
use crate::telemetry::throttle::{self, Throttle};

/// One event as the live stream sends it.
#[derive(Debug)]
pub struct Published {
    /// The message id (`webhook-id` when the event is also sent to a webhook).
    pub id: String,
    pub event_type: EventType,
    pub publisher_id: String,
    /// The JSON body ([`crate::event_body::render`]).
    pub body: String,
}

pub struct Events {
    /// Each publisher with a webhook, and the types it wants ([`EventType::bit`]).
    subscriptions: DashMap<String, u8, foldhash::fast::RandomState>,
    stream: broadcast::Sender<Arc<Published>>,
    queue: Arc<writer::Queue>,
    outbox: Arc<dyn WebhookOutbox>,
    counters: EventCounters,
    /// One permit per open stream (`events.max_streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Wakes the delivery when events were written.
    written: Arc<Notify>,
    /// The log lines for events the queue had no room for.
    queue_full: Throttle,
    /// The delivery's log lines for failed attempts and dead letters: a receiver
    /// down fails every waiting event at each retry wave, up to `outbox_cap` a
    /// publisher, and one line each would crowd every other line out of the
    /// log's bounded buffer. Each is also a `debug` line of its own.
    delivery_failed: Throttle,
    dead_lettered: Throttle,
}

/// The loops that move events out, spawned by [`Loops::spawn`].
pub struct Loops {
    events: Arc<Events>,
    settings: Arc<Settings>,
}

impl Events {
    /// The fan-out and its loops; the webhooks already configured are read now.
    pub async fn open(
        settings: &Arc<Settings>,
        outbox: Arc<dyn WebhookOutbox>,
        meter: &Meter,
    ) -> Result<(Arc<Self>, Loops), SettingsError> {
        let (stream, _) = broadcast::channel(settings.events.stream_buffer);
        let events = Arc::new(Self {
            subscriptions: DashMap::default(),
            stream,
            queue: Arc::new(writer::Queue::new(
                settings.events.outbox_queue,
                settings.events.outbox_batch,
            )),
            outbox,
            counters: meter.event_counters(),
            streams: Arc::new(Semaphore::new(settings.events.max_streams)),
            max_streams: settings.events.max_streams,
            written: Arc::new(Notify::new()),
            queue_full: Throttle::new(throttle::EVERY, |dropped| {
                tracing::warn!(
                    dropped,
                    "session events dropped: the webhook outbox's queue is full (events.outbox_queue) \
                     or the server is stopping (one line per 10 s at most, with the count since the last)"
                );
            }),
            // Their lines tell the latest event's details; a burst's rest, said
            // when its period ends with no event after it, has none to tell.
            delivery_failed: Throttle::new(throttle::EVERY, |failed| {
                tracing::info!(
                    failed,
                    "webhook deliveries failed; each will retry (the count since the last such line; \
                     each at debug)"
                );
            }),
            dead_lettered: Throttle::new(throttle::EVERY, |dead_lettered| {
                tracing::warn!(
                    dead_lettered,
                    "webhook events dead-lettered: webhooks.max_attempts or webhooks.max_age reached \
                     (the count since the last such line; each at debug)"
                );
            }),
        });
        events.reload().await?;
        let loops = Loops {
            events: events.clone(),
            settings: settings.clone(),
        };
        Ok((events, loops))
    }

    /// Reads every webhook again (another node may have changed one).
    pub async fn reload(&self) -> Result<(), SettingsError> {
        let hooks = self.outbox.webhooks().await?;
        self.subscriptions
            .retain(|publisher, _| hooks.iter().any(|h| &h.publisher_id == publisher));
        for hook in hooks {
            self.subscriptions.insert(hook.publisher_id.clone(), hook.mask());
        }
        Ok(())
    }

    pub async fn webhook(&self, publisher_id: &str) -> Result<Option<Webhook>, SettingsError> {
        self.outbox.webhook(publisher_id).await
    }

    pub async fn outbox_counts(&self, publisher_id: &str) -> Result<OutboxCounts, SettingsError> {
        self.outbox.outbox_counts(publisher_id).await
    }

    /// Stores the webhook; its events are queued from now on (on this node at
    /// once, on others after their next reload).
    pub async fn put_webhook(&self, webhook: &Webhook) -> Result<(), SettingsError> {
        self.outbox.put_webhook(webhook).await?;
        self.subscriptions.insert(webhook.publisher_id.clone(), webhook.mask());
        Ok(())
    }

    /// Removes the webhook and the events still waiting for it.
    pub async fn delete_webhook(&self, publisher_id: &str) -> Result<bool, SettingsError> {
        self.subscriptions.remove(publisher_id);
        self.outbox.delete_webhook(publisher_id).await
    }

    /// A new reader of the live stream, if fewer than `events.max_streams` are
    /// open: the permit is held for as long as the stream.
    pub fn subscribe(&self) -> Option<(broadcast::Receiver<Arc<Published>>, tokio::sync::OwnedSemaphorePermit)> {
        let permit = self.streams.clone().try_acquire_owned().ok()?;
        Some((self.stream.subscribe(), permit))
    }

    /// Whether the publisher has a webhook for events of this type.
    pub fn wanted(&self, publisher_id: &str, event_type: EventType) -> bool {
        self.subscriptions
            .get(publisher_id)
            .is_some_and(|mask| *mask & event_type.bit() != 0)
    }

    /// A reader skipped `n` events.
    pub fn lagged(&self, n: u64) {
        self.counters.stream_lagged.increment(n);
    }
}

impl SessionEvents for Events {
    fn ended(&self, pool: &PoolKey, id: SessionId, cause: EndCause) {
        self.report(SessionEvent::ended(pool, id, None, cause));
    }

    fn report(&self, event: SessionEvent) {
        let event_type = event.event_type();
        let wanted = self.wanted(event.pool.publisher_id(), event_type);
        // The permits tell with an atomic read, where the broadcast's own count
        // takes a lock: this runs for every event.
        let streamed = self.streams.available_permits() < self.max_streams;
        if !wanted && !streamed {
            return;
        }
        let now = SystemTime::now();
        let message_id = *uuid::Uuid::new_v4().as_bytes();
        if streamed {
            // An error only means the last reader left meanwhile.
            let _ = self.stream.send(Arc::new(Published {
                id: message_id_text(message_id),
                event_type,
                publisher_id: event.pool.publisher_id().to_owned(),
                body: crate::event_body::render(&event, now),
            }));
        }
        if wanted {
            let created_at = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            let outbox = self.outbox.as_ref();
            let pushed = self.queue.push(event.pool.publisher_id(), |batch| {
                outbox.pack_reported(batch, message_id, &event, created_at);
            });
            if pushed.is_err() {
                // Full (the database is behind) or closed (stopping): never wait.
                self.counters.dropped_queue_full.increment(1);
                self.queue_full.count(1);
            }
        }
    }
}

impl Loops {
    /// Starts the outbox writer and the delivery, until `shutdown`.
    pub fn spawn(self, tracker: &TaskTracker, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let Self { events, settings } = self;
        let client = delivery::client(&settings.webhooks)?;
        tracker.spawn(writer::run(
            events.queue.clone(),
            events.outbox.clone(),
            writer::Limits {
                batch: settings.events.outbox_batch,
                gather: settings.events.outbox_gather,
                cap: settings.webhooks.outbox_cap,
            },
            events.counters.clone(),
            events.written.clone(),
            shutdown.clone(),
        ));
        // Delivery yields to admissions (see `idle`); the tracker waits for its
        // thread like for any task, so a graceful stop still settles its round.
        let main = idle::OnMain(tokio::runtime::Handle::current());
        let priority = settings.webhooks.delivery_priority;
        let stopping = shutdown.clone();
        let finished = idle::spawn("drisc-webhooks", priority, move || {
            delivery::run(events, main, client, settings, stopping)
        })?;
        tracker.spawn(async move {
            let _ = finished.await;
        });
        Ok(())
    }
}
