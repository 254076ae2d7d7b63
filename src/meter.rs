//! What `GET /metrics` reports, and the events worth a line in the log.
//!
//! Each [`App`](crate::app::App) owns one [`Meter`]: a Prometheus registry of its
//! own, never the process-wide recorder of the `metrics` facade, so that several
//! servers in one process (the tests) never mix their numbers. Counters with a
//! fixed set of labels are registered once and kept as handles, so counting is one
//! atomic add; gauges (sessions, sockets, files, memory) are read when scraped.
//!
//! No label ever carries a customer, session or token: every label value comes
//! from a short fixed list, a route template or a status code, so the number of
//! series does not grow with customers.

use std::time::Duration;

use axum::http::Method;
use dashmap::DashMap;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::domain::policy::LimitPolicy;
use std::sync::{Arc, OnceLock};

use crate::domain::events::{EventKind, SessionEvent};
use crate::domain::ports::{EndCause, SessionEvents, SessionsByState};
use crate::domain::{PoolKey, SessionId};

/// Latency buckets, in seconds: admissions take well under a millisecond in memory
/// and a few with Redis; anything past a second is an outage.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const METADATA: Metadata<'static> = Metadata::new("drisc", Level::INFO, Some(module_path!()));

/// The answer to `POST /sessions`, as counted in `drisc_admissions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Granted,
    LimitExceeded,
    TooManyPools,
    Disabled,
    /// Unknown publisher, offer or tag.
    Rejected,
    /// The session store is unreachable.
    Unavailable,
    RateLimited,
    Unauthorized,
    /// A malformed request (bad body, oversized field).
    Invalid,
    /// Anything else (a settings database error).
    Error,
}

impl Admission {
    const ALL: [Self; 10] = [
        Self::Granted,
        Self::LimitExceeded,
        Self::TooManyPools,
        Self::Disabled,
        Self::Rejected,
        Self::Unavailable,
        Self::RateLimited,
        Self::Unauthorized,
        Self::Invalid,
        Self::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::LimitExceeded => "limit_exceeded",
            Self::TooManyPools => "too_many_pools",
            Self::Disabled => "disabled",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Invalid => "invalid",
            Self::Error => "error",
        }
    }
}

/// Which rate limit refused something, as in `drisc_rate_limited_total{limit}`.
#[derive(Debug, Clone, Copy)]
pub enum RateLimit {
    Customer,
    FailedAuth,
}

/// What load shedding refused, as in `drisc_shed_total{what}`.
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    Connection,
    Request,
}

/// Where the gauges read at scrape time come from.
pub struct Readings {
    pub sessions: SessionsByState,
    pub websocket_connections: usize,
    /// Counted by the hub; exported as counters.
    pub bad_messages: u64,
    pub flooded_sockets: u64,
}

/// Where one session store operation is counted.
pub struct StoreOperation {
    pub duration: Histogram,
    pub errors: Counter,
}

pub struct Meter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    admissions: Vec<Counter>,
    takeovers: Counter,
    ended: Vec<Counter>,
    rate_limited: [Counter; 2],
    shed: [Counter; 2],
    /// `drisc_http_request_duration_seconds` by route template, then by method and
    /// status. Routes are the router's templates (and "unmatched"), so the map is
    /// as small as the API.
    http_requests: DashMap<String, Vec<(&'static str, u16, Histogram)>, foldhash::fast::RandomState>,
    /// `drisc_sessions_over_limit_total` by (publisher, offer), at most
    /// [`MAX_OVER_LIMIT_SERIES`] of them: offer ids are the operator's, except
    /// under `unknownOffers = each`, where players may make them up.
    over_limit: DashMap<(String, String), Counter, foldhash::fast::RandomState>,
    /// Where session events go once counted (the live stream and the webhooks'
    /// outbox): set once by the app, so that every reporter that holds the meter
    /// (control, the stores) reaches them without being rewired.
    forward: OnceLock<Arc<dyn SessionEvents>>,
}

/// The counters of the session events' way out (`crate::events`), registered once.
#[derive(Clone)]
pub struct EventCounters {
    /// `drisc_session_events_dropped_total{reason}`: `queue_full` (the outbox
    /// writer's queue), `outbox_full` (a publisher's outbox at its cap),
    /// `outbox_error` (the database refused a batch).
    pub dropped_queue_full: Counter,
    pub dropped_outbox_full: Counter,
    pub dropped_outbox_error: Counter,
    /// `drisc_webhook_deliveries_total{outcome}`: delivered, failed (retried), dead_lettered.
    pub delivered: Counter,
    pub failed: Counter,
    pub dead_lettered: Counter,
    /// `drisc_event_streams_lagged_total`: events a slow stream reader skipped.
    pub stream_lagged: Counter,
}

/// Series of `drisc_sessions_over_limit_total` beyond which would-be refusals
/// are counted under `publisher="other", offer="other"`.
const MAX_OVER_LIMIT_SERIES: usize = 1_000;

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

impl Meter {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, label: &'static str, value: &'static str| {
            recorder.register_counter(
                &Key::from_parts(name, vec![Label::from_static_parts(label, value)]),
                &METADATA,
            )
        };
        let admissions = Admission::ALL
            .iter()
            .map(|a| counter("drisc_admissions_total", "outcome", a.as_str()))
            .collect();
        let ended = EndCause::ALL
            .iter()
            .map(|c| counter("drisc_sessions_ended_total", "cause", c.as_str()))
            .collect();
        let meter = Self {
            admissions,
            takeovers: recorder.register_counter(&Key::from_static_name("drisc_takeovers_total"), &METADATA),
            ended,
            rate_limited: [
                counter("drisc_rate_limited_total", "limit", "customer"),
                counter("drisc_rate_limited_total", "limit", "failed_auth"),
            ],
            shed: [
                counter("drisc_shed_total", "what", "connection"),
                counter("drisc_shed_total", "what", "request"),
            ],
            http_requests: DashMap::default(),
            over_limit: DashMap::default(),
            forward: OnceLock::new(),
            recorder,
            handle,
        };
        // Shown at 0 from the start: a rate over a series that appears late is wrong
        // for its first interval.
        meter.takeovers.increment(0);
        meter
    }

    pub fn admission(&self, outcome: Admission) {
        if let Some(i) = Admission::ALL.iter().position(|a| *a == outcome)
            && let Some(c) = self.admissions.get(i)
        {
            c.increment(1);
        }
    }

    /// Sends every session event, once counted and logged, on to `sink` too. Set
    /// once; later calls are ignored.
    pub fn forward_events(&self, sink: Arc<dyn SessionEvents>) {
        let _ = self.forward.set(sink);
    }

    /// The counters of the events' way out, registered (and shown at 0) now.
    pub fn event_counters(&self) -> EventCounters {
        let counter = |name: &'static str, label: &'static str, value: &'static str| {
            let c = self.recorder.register_counter(
                &Key::from_parts(name, vec![Label::from_static_parts(label, value)]),
                &METADATA,
            );
            c.increment(0);
            c
        };
        let dropped = "drisc_session_events_dropped_total";
        let deliveries = "drisc_webhook_deliveries_total";
        let lagged = self
            .recorder
            .register_counter(&Key::from_static_name("drisc_event_streams_lagged_total"), &METADATA);
        lagged.increment(0);
        EventCounters {
            dropped_queue_full: counter(dropped, "reason", "queue_full"),
            dropped_outbox_full: counter(dropped, "reason", "outbox_full"),
            dropped_outbox_error: counter(dropped, "reason", "outbox_error"),
            delivered: counter(deliveries, "outcome", "delivered"),
            failed: counter(deliveries, "outcome", "failed"),
            dead_lettered: counter(deliveries, "outcome", "dead_lettered"),
            stream_lagged: lagged,
        }
    }

    pub fn takeover(&self) {
        self.takeovers.increment(1);
    }

    pub fn rate_limited(&self, limit: RateLimit) {
        self.rate_limited[limit as usize].increment(1);
    }

    pub fn shed(&self, what: Shed, count: u64) {
        self.shed[what as usize].increment(count);
    }

    /// A close frame the server sent.
    pub fn ws_close(&self, code: u16) {
        let label = Label::new("code", SharedString::from(code.to_string()));
        self.recorder
            .register_counter(&Key::from_parts("drisc_ws_close_total", vec![label]), &METADATA)
            .increment(1);
    }

    /// One HTTP request; `route` is the router's template (`/sessions/{session_id}`),
    /// never the path the client sent.
    pub fn http_request(&self, method: &Method, route: &str, status: u16, took: Duration) {
        let method = method_label(method);
        let seconds = took.as_secs_f64();
        // The handle is registered once per series: a request is then a read lock
        // and a short scan, with no label, string or key built for it.
        if let Some(series) = self.http_requests.get(route)
            && let Some((.., histogram)) = series.iter().find(|(m, s, _)| *m == method && *s == status)
        {
            histogram.record(seconds);
            return;
        }
        let labels = vec![
            Label::from_static_parts("method", method),
            Label::new("route", SharedString::from(route.to_owned())),
            Label::new("status", SharedString::from(status.to_string())),
        ];
        let histogram = self.histogram(Key::from_parts("drisc_http_request_duration_seconds", labels));
        histogram.record(seconds);
        let mut series = self.http_requests.entry(route.to_owned()).or_default();
        if !series.iter().any(|(m, s, _)| *m == method && *s == status) {
            series.push((method, status, histogram));
        }
    }

    /// The handles of one session store operation, registered once by the store
    /// decorator: timing a call (one per PONG) is then a push and no look-up.
    pub fn store_operation(&self, store: &'static str, op: &'static str) -> StoreOperation {
        let labels = vec![
            Label::from_static_parts("store", store),
            Label::from_static_parts("op", op),
        ];
        StoreOperation {
            duration: self.histogram(Key::from_parts(
                "drisc_store_operation_duration_seconds",
                labels.clone(),
            )),
            errors: self
                .recorder
                .register_counter(&Key::from_parts("drisc_store_errors_total", labels), &METADATA),
        }
    }

    fn histogram(&self, key: Key) -> Histogram {
        self.recorder.register_histogram(&key, &METADATA)
    }

    /// Folds the histogram samples recorded since the last call into their buckets.
    /// Rendering does it too; this keeps memory flat when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The text format, with the gauges read now.
    pub fn render(&self, now: Readings) -> String {
        let gauge = |key: Key, value: f64| self.recorder.register_gauge(&key, &METADATA).set(value);
        let sessions = now.sessions;
        for (state, count) in [
            ("pending", sessions.pending),
            ("live", Some(sessions.live)),
            ("detached", sessions.detached),
        ] {
            if let Some(count) = count {
                gauge(
                    Key::from_parts("drisc_sessions", vec![Label::from_static_parts("state", state)]),
                    count as f64,
                );
            }
        }
        gauge(
            Key::from_static_name("drisc_websocket_connections"),
            now.websocket_connections as f64,
        );
        let counter = |key: Key| self.recorder.register_counter(&key, &METADATA);
        counter(Key::from_static_name("drisc_bad_messages_total")).absolute(now.bad_messages);
        counter(Key::from_parts(
            "drisc_rate_limited_total",
            vec![Label::from_static_parts("limit", "websocket")],
        ))
        .absolute(now.flooded_sockets);
        counter(Key::from_static_name("drisc_log_lines_dropped_total")).absolute(crate::telemetry::dropped_lines());
        let process = process::read();
        for (name, value) in [
            ("process_open_fds", process.open_fds),
            ("process_max_fds", process.max_fds),
            ("process_resident_memory_bytes", process.resident_memory_bytes),
        ] {
            if let Some(value) = value {
                gauge(Key::from_static_name(name), value as f64);
            }
        }
        let allocator = crate::allocator::read();
        for (name, value) in [
            ("drisc_allocator_allocated_bytes", allocator.allocated),
            ("drisc_allocator_active_bytes", allocator.active),
            ("drisc_allocator_resident_bytes", allocator.resident),
            ("drisc_allocator_retained_bytes", allocator.retained),
        ] {
            if let Some(value) = value {
                gauge(Key::from_static_name(name), value as f64);
            }
        }
        self.handle.render()
    }
}

impl SessionEvents for Meter {
    fn ended(&self, pool: &PoolKey, id: SessionId, cause: EndCause) {
        self.report(SessionEvent::ended(pool, id, None, cause));
    }

    fn report(&self, event: SessionEvent) {
        if let (EventKind::Ended { cause }, Some(id)) = (&event.kind, event.session_id) {
            let cause = *cause;
            if let Some(i) = EndCause::ALL.iter().position(|c| *c == cause)
                && let Some(c) = self.ended.get(i)
            {
                c.increment(1);
            }
            let pool = &event.pool;
            tracing::info!(
                event = "session_ended",
                cause = cause.as_str(),
                publisher = %pool.publisher_id(),
                customer = %pool.customer_id(),
                offer = %pool.offer_id(),
                session = %id,
                "session ended"
            );
        }
        if let Some(sink) = self.forward.get() {
            sink.report(event);
        }
    }

    /// `drisc_sessions_over_limit_total{publisher, offer}`: the would-be
    /// refusals of offers in `monitor` mode. Labelled by the pool's offer, as
    /// configured by the operator (unknown offers share `*unknown`, unless a
    /// publisher lets each be its own pool), never by customer or session.
    fn over_limit(&self, pool: &PoolKey, limit: u32, policy: LimitPolicy) {
        let mut series = (pool.publisher_id().to_owned(), pool.offer_id().to_owned());
        if self.over_limit.len() >= MAX_OVER_LIMIT_SERIES && !self.over_limit.contains_key(&series) {
            series = ("other".into(), "other".into());
        }
        // Built on every call: this is the path of a would-be refusal, not of a grant.
        let labels = vec![
            Label::new("publisher", SharedString::from(series.0.clone())),
            Label::new("offer", SharedString::from(series.1.clone())),
        ];
        self.over_limit
            .entry(series)
            .or_insert_with(|| {
                self.recorder
                    .register_counter(&Key::from_parts("drisc_sessions_over_limit_total", labels), &METADATA)
            })
            .increment(1);
        tracing::info!(
            event = "session_over_limit",
            policy = policy.as_str(),
            publisher = %pool.publisher_id(),
            customer = %pool.customer_id(),
            offer = %pool.offer_id(),
            limit,
            "session granted past the offer's limit (onLimit = monitor): it would have been refused"
        );
    }
}

/// A method as a label: the standard ones, else "other", since a client may send
/// any token as a method and each would be a series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn describe(r: &PrometheusRecorder) {
    let counters: &[(&'static str, &'static str)] = &[
        (
            "drisc_admissions_total",
            "Answers to POST /sessions by outcome (a takeover is counted in drisc_takeovers_total)",
        ),
        ("drisc_takeovers_total", "Sessions granted by POST /takeover"),
        (
            "drisc_sessions_over_limit_total",
            "Sessions granted past their offer's limit under onLimit = monitor (would-be refusals)",
        ),
        ("drisc_sessions_ended_total", "Sessions ended, by cause"),
        ("drisc_ws_close_total", "Close frames sent by the server, by close code"),
        (
            "drisc_bad_messages_total",
            "Malformed or unknown WebSocket messages ignored",
        ),
        ("drisc_store_errors_total", "Session store operations that failed"),
        (
            "drisc_session_events_dropped_total",
            "Session events not written to a webhook outbox, by reason (queue_full, outbox_full, outbox_error)",
        ),
        (
            "drisc_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, failed and retried, dead_lettered)",
        ),
        (
            "drisc_event_streams_lagged_total",
            "Session events skipped by slow readers of GET /admin/v1/events",
        ),
        (
            "drisc_rate_limited_total",
            "Requests or sockets refused by a rate limit (customer, failed_auth, websocket)",
        ),
        (
            "drisc_log_lines_dropped_total",
            "Log lines dropped because the log writer (at nice 19) was too far behind",
        ),
        (
            "drisc_shed_total",
            "Connections or requests shed near the file or in-flight limit",
        ),
    ];
    for (name, help) in counters {
        r.describe_counter((*name).into(), None, SharedString::const_str(help));
    }
    let gauges: &[(&'static str, &'static str)] = &[
        (
            "drisc_sessions",
            "Sessions held, by state. Memory store: every session of this server. Redis store: the \
             sessions bound to this node's sockets, reported as live (pending and detached ones \
             live in Redis and are not counted per node)",
        ),
        ("drisc_websocket_connections", "Open player WebSockets on this node"),
        ("process_open_fds", "Open file descriptors"),
        ("process_max_fds", "The open-file limit (RLIMIT_NOFILE)"),
        ("process_resident_memory_bytes", "Resident memory"),
        (
            "drisc_allocator_allocated_bytes",
            "jemalloc: bytes the server holds in live allocations (its data: sessions, sockets, caches)",
        ),
        (
            "drisc_allocator_active_bytes",
            "jemalloc: bytes in the pages that hold live allocations (allocated plus their pages' free room)",
        ),
        (
            "drisc_allocator_resident_bytes",
            "jemalloc: bytes of its memory in RAM: active pages, its own metadata and freed pages not yet \
             returned to the system",
        ),
        (
            "drisc_allocator_retained_bytes",
            "jemalloc: address space returned to the system but kept mapped for reuse (not in RSS)",
        ),
    ];
    for (name, help) in gauges {
        let unit = name.ends_with("_bytes").then_some(Unit::Bytes);
        r.describe_gauge((*name).into(), unit, SharedString::const_str(help));
    }
    r.describe_histogram(
        "drisc_http_request_duration_seconds".into(),
        Some(Unit::Seconds),
        "HTTP requests by method, route template and status".into(),
    );
    r.describe_histogram(
        "drisc_store_operation_duration_seconds".into(),
        Some(Unit::Seconds),
        "Session store operations by store and operation".into(),
    );
}

/// The process's own numbers, from /proc on Linux; nothing elsewhere.
mod process {
    #[derive(Default)]
    pub(super) struct Process {
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
        pub resident_memory_bytes: Option<u64>,
    }

    #[cfg(target_os = "linux")]
    pub(super) fn read() -> Process {
        use procfs::process::LimitValue;
        let Ok(me) = procfs::process::Process::myself() else {
            return Process::default();
        };
        let max_fds = me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
            LimitValue::Value(v) => Some(v),
            LimitValue::Unlimited => None,
        });
        Process {
            open_fds: me.fd_count().ok().map(|n| n as u64),
            max_fds,
            resident_memory_bytes: me.status().ok().and_then(|s| s.vmrss).map(|kb| kb * 1024),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn read() -> Process {
        Process::default()
    }
}

#[cfg(test)]
mod over_limit_tests {
    use super::*;

    fn rendered(meter: &Meter) -> Vec<String> {
        let readings = Readings {
            sessions: SessionsByState::default(),
            websocket_connections: 0,
            bad_messages: 0,
            flooded_sockets: 0,
        };
        meter
            .render(readings)
            .lines()
            .filter(|l| l.starts_with("drisc_sessions_over_limit_total{"))
            .map(str::to_owned)
            .collect()
    }

    fn pool(offer: &str) -> PoolKey {
        PoolKey::from_ids("p", "secret-customer", offer)
    }

    #[test]
    fn would_be_refusals_are_counted_per_offer_and_made_up_offers_cannot_grow_the_series_without_end() {
        let meter = Meter::new();
        meter.over_limit(&pool("S1"), 1, LimitPolicy::Monitor);
        meter.over_limit(&pool("S1"), 1, LimitPolicy::Monitor);
        let lines = rendered(&meter);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(" 2") && !lines[0].contains("secret-customer"),
            "{lines:?}"
        );
        for i in 0..MAX_OVER_LIMIT_SERIES + 50 {
            meter.over_limit(&pool(&format!("made-up-{i}")), 1, LimitPolicy::Monitor);
        }
        let lines = rendered(&meter);
        assert_eq!(
            lines.len(),
            MAX_OVER_LIMIT_SERIES + 1,
            "the cap, plus the 'other' series"
        );
        assert!(lines.iter().any(|l| l.contains(r#"offer="other""#)));
    }
}
