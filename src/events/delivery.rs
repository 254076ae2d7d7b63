//! Sends the outbox's events to the publishers' webhooks: claims the due ones
//! (the oldest undelivered event of each session only, so a session's events
//! arrive in order), sends at most `webhooks.max_in_flight` at once, each within
//! `webhooks.request_timeout`, and records each outcome: delivered (gone from the
//! outbox), retried later with exponential backoff, or dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::Events;
use super::idle::OnMain;
use super::signature;
use super::target::{self, GuardedResolver};
use crate::config::{Settings, WebhookSettings};
use crate::domain::Millis;
use crate::domain::events::{Claimed, Settled};
use crate::event_body as body;

/// How long a claimed event is kept from other claims beyond the requests' own
/// timeouts: a node that dies mid-attempt leaves it to be claimed again then.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Events claimed per round, in waves of `webhooks.max_in_flight`: a round costs
/// two write transactions (the claim, the outcomes), and each commit of SQLite
/// waits for the disk, so a round of one wave spent more time committing than
/// sending when the receiver is fast.
const WAVES_PER_ROUND: u32 = 8;
/// The longest one database call of the loop may take.
const DB_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client of the deliveries: no redirects (a 3xx is a failure, and a
/// redirect could lead anywhere), no proxy from the environment (it would connect
/// in our place, past the address check), every host resolved through the guard.
pub fn client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(GuardedResolver::shared(settings.allow_private_targets))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.request_timeout)
        .connect_timeout(settings.request_timeout)
        .user_agent(concat!("drisc-webhooks/", env!("CARGO_PKG_VERSION")));
    // Trusted besides the web's roots (checked at start by `Settings::validate`).
    if !settings.ca_file.is_empty() {
        let pem = std::fs::read(&settings.ca_file)
            .with_context(|| format!("webhooks.ca_file: cannot read {:?}", settings.ca_file))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem).context("webhooks.ca_file")? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder.build()?)
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A webhook ready to sign with.
struct Prepared {
    url: Url,
    key: Vec<u8>,
}

/// The delivery loop; `main` runs its database calls (see [`super::idle`]).
pub async fn run(
    events: Arc<Events>,
    main: OnMain,
    client: reqwest::Client,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let w = &settings.webhooks;
    let per_round = w.max_in_flight.saturating_mul(WAVES_PER_ROUND);
    // Long enough for every wave of a round to time out, one after the other.
    let lease = u64::try_from((w.request_timeout * WAVES_PER_ROUND + LEASE_MARGIN).as_millis()).unwrap_or(u64::MAX);
    let mut next_reload = tokio::time::Instant::now() + w.poll_interval;
    while !shutdown.is_cancelled() {
        if tokio::time::Instant::now() >= next_reload {
            next_reload = tokio::time::Instant::now() + w.poll_interval;
            let reading = events.clone();
            if let Some(Err(e)) = main.run(async move { reading.reload().await }).await {
                tracing::warn!(error = %e, "could not re-read the webhooks");
            }
        }
        let outbox = events.outbox.clone();
        let claiming =
            main.run(async move { tokio::time::timeout(DB_TIMEOUT, outbox.claim(now_ms(), lease, per_round)).await });
        let claimed = match claiming.await {
            Some(Ok(Ok(claimed))) => claimed,
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "could not read the webhook outbox");
                Vec::new()
            }
            Some(Err(_)) | None => Vec::new(),
        };
        if claimed.is_empty() {
            tokio::select! {
                () = events.written.notified() => {}
                () = tokio::time::sleep(w.poll_interval) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        let hooks = prepare(&events, &main, &claimed).await;
        let round = futures_util::stream::iter(claimed.iter().cloned())
            .map(|c| {
                let hook = hooks.get(&c.publisher_id).and_then(Option::as_ref);
                attempt(&client, hook, c, w)
            })
            .buffer_unordered(w.max_in_flight as usize)
            .collect::<Vec<_>>();
        let outcomes = tokio::select! {
            outcomes = round => outcomes,
            () = shutdown.cancelled() => {
                // Stopping mid-round: the claims are given back, due at once, so
                // the next start sends them without waiting out the lease (a
                // receiver that got one already sees it twice: at least once).
                let given_back: Vec<_> = claimed
                    .iter()
                    .map(|c| Settled::Retry {
                        id: c.id,
                        attempts: c.attempts,
                        next_at: now_ms(),
                        error: "interrupted by shutdown".into(),
                    })
                    .collect();
                let outbox = events.outbox.clone();
                let _ = main
                    .run(async move { tokio::time::timeout(DB_TIMEOUT, outbox.settle(&given_back)).await })
                    .await;
                return;
            }
        };
        // One transaction for the round: a commit per event would cost more
        // than the event's request.
        let settled: Vec<_> = outcomes
            .into_iter()
            .map(|(c, outcome)| settle(&c, outcome, &events, w))
            .collect();
        let outbox = events.outbox.clone();
        let settling = main.run(async move { tokio::time::timeout(DB_TIMEOUT, outbox.settle(&settled)).await });
        match settling.await {
            Some(Ok(Ok(()))) => {}
            // The claims' leases run out and the events are tried again: at least once.
            Some(Ok(Err(e))) => tracing::warn!(error = %e, "could not record webhook deliveries"),
            Some(Err(_)) => tracing::warn!("could not record webhook deliveries within {DB_TIMEOUT:?}"),
            None => return,
        }
    }
}

/// The webhooks of the publishers in this round, read once each.
async fn prepare(events: &Arc<Events>, main: &OnMain, claimed: &[Claimed]) -> HashMap<String, Option<Prepared>> {
    let mut hooks = HashMap::new();
    for c in claimed {
        if hooks.contains_key(&c.publisher_id) {
            continue;
        }
        let (reading, publisher) = (events.clone(), c.publisher_id.clone());
        let prepared = match main.run(async move { reading.webhook(&publisher).await }).await {
            Some(Ok(Some(hook))) => match (Url::parse(&hook.url), signature::key_of(&hook.secret)) {
                (Ok(url), Ok(key)) => Some(Prepared { url, key }),
                _ => None,
            },
            _ => None,
        };
        hooks.insert(c.publisher_id.clone(), prepared);
    }
    hooks
}

enum Outcome {
    Delivered,
    Failed(String),
    /// The publisher has no (usable) webhook any more.
    NoWebhook,
}

async fn attempt(
    client: &reqwest::Client,
    hook: Option<&Prepared>,
    c: Claimed,
    settings: &WebhookSettings,
) -> (Claimed, Outcome) {
    let Some(hook) = hook else {
        return (c, Outcome::NoWebhook);
    };
    if !settings.allow_private_targets
        && let Err(e) = target::check_literal(&hook.url)
    {
        return (c, Outcome::Failed(e.to_string()));
    }
    // Rendered here, on the webhooks' thread, from the record the outbox kept.
    let body = match body::deliverable(&c.body, &c.publisher_id, c.created_at) {
        Ok(body) => body.into_owned(),
        Err(e) => return (c, Outcome::Failed(e)),
    };
    let timestamp = now_ms() / 1000;
    let signed = signature::sign(&hook.key, &c.message_id, timestamp, &body);
    let sent = client
        .post(hook.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &c.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signed)
        .body(body)
        .send()
        .await;
    let outcome = match sent {
        Ok(answer) => {
            let status = answer.status();
            read_out(answer).await;
            if status.is_success() {
                Outcome::Delivered
            } else {
                Outcome::Failed(format!("the receiver answered {status}"))
            }
        }
        Err(e) => Outcome::Failed(error_chain(&e)),
    };
    (c, outcome)
}

/// The most of an answer's body read (and dropped) so that its connection
/// serves the next request.
const ANSWER_READ_LIMIT: usize = 64 * 1024;

/// Reads the answer's body to its end, if it ends within [`ANSWER_READ_LIMIT`]
/// bytes (and within `webhooks.request_timeout`, which covers the body), and
/// drops it. An HTTP/1.1 connection whose answer was not read to the end cannot
/// carry another request: receivers that answer with a body (`200 OK` and a few
/// bytes, as many do) cost a new connection per event otherwise, and as many
/// sockets left in `TIME_WAIT`. A longer (or endless) body is left, and its
/// connection closed: the status line already said what the attempt came to.
async fn read_out(mut answer: reqwest::Response) {
    let mut read = 0;
    while read <= ANSWER_READ_LIMIT {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// What the round's outcomes mean for the outbox, counted and logged.
fn settle(c: &Claimed, outcome: Outcome, events: &Events, w: &WebhookSettings) -> Settled {
    match outcome {
        Outcome::Delivered => {
            events.counters.delivered.increment(1);
            Settled::Delivered { id: c.id }
        }
        Outcome::NoWebhook => Settled::Delivered { id: c.id },
        Outcome::Failed(error) => {
            let attempts = c.attempts.saturating_add(1);
            let now = now_ms();
            let age = Duration::from_millis(now.saturating_sub(c.created_at));
            if attempts >= w.max_attempts || age >= w.max_age {
                events.counters.dead_lettered.increment(1);
                tracing::debug!(
                    publisher = %c.publisher_id,
                    message = %c.message_id,
                    attempts,
                    error = %error,
                    "webhook event dead-lettered"
                );
                if let Some(dead_lettered) = events.dead_lettered.hit() {
                    tracing::warn!(
                        dead_lettered,
                        publisher = %c.publisher_id,
                        message = %c.message_id,
                        attempts,
                        error = %error,
                        "webhook events dead-lettered: webhooks.max_attempts or webhooks.max_age reached \
                         (the count since the last such line and the latest's details, one line per 10 s at most; \
                         each at debug)"
                    );
                }
                Settled::Dead {
                    id: c.id,
                    attempts,
                    error,
                }
            } else {
                events.counters.failed.increment(1);
                let wait = backoff(attempts, w.retry_base, w.retry_max);
                tracing::debug!(
                    publisher = %c.publisher_id,
                    message = %c.message_id,
                    attempts,
                    retry_in = ?wait,
                    error = %error,
                    "webhook delivery failed; will retry"
                );
                if let Some(failed) = events.delivery_failed.hit() {
                    tracing::info!(
                        failed,
                        publisher = %c.publisher_id,
                        message = %c.message_id,
                        attempts,
                        retry_in = ?wait,
                        error = %error,
                        "webhook deliveries failed; each will retry (the count since the last such line and \
                         the latest's details, one line per 10 s at most; each at debug)"
                    );
                }
                Settled::Retry {
                    id: c.id,
                    attempts,
                    next_at: now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                    error,
                }
            }
        }
    }
}

/// The wait after `attempts` failures: `base` doubled each time, at most `max`,
/// with ±20% jitter so that a receiver coming back is not hit by every retry at once.
fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let wait = base.saturating_mul(1 << doublings).min(max);
    wait.mul_f64(rand::rng().random_range(0.8..1.2))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (attempts, expected) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let wait = backoff(attempts, base, max).as_secs_f64();
            assert!((expected * 0.8..=expected * 1.2).contains(&wait), "{attempts}: {wait}");
        }
    }
}
