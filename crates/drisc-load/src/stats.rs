//! Counters and latency histograms: recorded by the players of one process,
//! shipped to the coordinator as plain numbers, merged there.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Everything a player counts. The names are the JSON keys of `counters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum C {
    /// HTTP requests sent (creates, takeovers, probes).
    Sent,
    /// 200 with an endpoint.
    Granted,
    /// 409 LimitExceeded.
    Limit,
    /// 200 "disabled".
    Disabled,
    /// Any other HTTP status.
    HttpError,
    /// Connect, handshake, I/O or timeout failures.
    NetError,
    /// WebSocket handshakes completed.
    WsOpen,
    /// OK received after REQUESTED.
    Ok,
    Expired,
    Terminate,
    TakenOver,
    Ping,
    Pong,
    Finished,
    /// FINISHED answered by a close with 1000: the session ended cleanly.
    FinishedClean,
    /// Of those, the ones whose close came more than 10 s after FINISHED.
    FinishedLate,
    /// Reconnects with the cached endpoint that got OK again.
    Reconnect,
    /// POST /takeover granted.
    Takeover,
    /// Sockets the server closed without one of the messages above.
    ServerClose,
    /// Players holding a live session right now (a gauge).
    Live,
    /// Players that died silently (socket open, PINGs unanswered) in churn.
    Silent,
}

const ALL: [C; 21] = [
    C::Sent,
    C::Granted,
    C::Limit,
    C::Disabled,
    C::HttpError,
    C::NetError,
    C::WsOpen,
    C::Ok,
    C::Expired,
    C::Terminate,
    C::TakenOver,
    C::Ping,
    C::Pong,
    C::Finished,
    C::FinishedClean,
    C::FinishedLate,
    C::Reconnect,
    C::Takeover,
    C::ServerClose,
    C::Live,
    C::Silent,
];

impl C {
    pub fn name(self) -> &'static str {
        match self {
            C::Sent => "sent",
            C::Granted => "granted",
            C::Limit => "limit_exceeded",
            C::Disabled => "disabled",
            C::HttpError => "http_error",
            C::NetError => "net_error",
            C::WsOpen => "ws_open",
            C::Ok => "ok",
            C::Expired => "expired",
            C::Terminate => "terminate",
            C::TakenOver => "taken_over",
            C::Ping => "ping",
            C::Pong => "pong",
            C::Finished => "finished",
            C::FinishedClean => "finished_clean",
            C::FinishedLate => "finished_late",
            C::Reconnect => "reconnect",
            C::Takeover => "takeover",
            C::ServerClose => "server_close",
            C::Live => "live",
            C::Silent => "silent",
        }
    }
}

#[derive(Default)]
pub struct Counters {
    values: [AtomicU64; ALL.len()],
}

impl Counters {
    pub fn add(&self, c: C, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, c: C) {
        self.add(c, 1);
    }

    pub fn dec(&self, c: C) {
        self.values[c as usize].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self, c: C) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(ALL.iter().map(|c| (c.name().to_owned(), self.get(*c))).collect())
    }
}

/// Counter values by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<String, u64>);

impl Snapshot {
    pub fn get(&self, c: C) -> u64 {
        self.0.get(c.name()).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Snapshot) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }
}

/// Latency histograms by name, in microseconds.
#[derive(Default)]
pub struct Hists {
    map: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
}

/// Up to an hour, three significant digits.
fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

impl Hists {
    pub fn record(&self, name: &'static str, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut map) = self.map.lock() {
            let _ = map.entry(name).or_insert_with(new_hist).record(us);
        }
    }

    pub fn export(&self) -> BTreeMap<String, HistData> {
        let Ok(map) = self.map.lock() else {
            return BTreeMap::new();
        };
        map.iter().map(|(k, h)| (k.to_string(), HistData::of(h))).collect()
    }
}

/// A histogram as (value, count) pairs, to cross a process boundary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    fn of(h: &Histogram<u64>) -> Self {
        Self(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn merge_into(&self, h: &mut Histogram<u64>) {
        for (v, n) in &self.0 {
            let _ = h.record_n(*v, *n);
        }
    }
}

/// Merges the histograms of several processes.
pub fn merge_hists(parts: &[BTreeMap<String, HistData>]) -> BTreeMap<String, Histogram<u64>> {
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for part in parts {
        for (k, data) in part {
            data.merge_into(out.entry(k.clone()).or_insert_with(new_hist));
        }
    }
    out
}

/// The histograms of several processes, merged and summarised by name.
pub fn summarize(parts: &[BTreeMap<String, HistData>]) -> BTreeMap<String, Summary> {
    merge_hists(parts)
        .iter()
        .map(|(k, h)| (k.clone(), Summary::of(h)))
        .collect()
}

/// What a report shows of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let hists = Hists::default();
        for ms in 1..=100 {
            hists.record("x", Duration::from_millis(ms));
        }
        let json = serde_json::to_string(&hists.export()).unwrap();
        let back: BTreeMap<String, HistData> = serde_json::from_str(&json).unwrap();
        let merged = merge_hists(&[back.clone(), back]);
        let s = Summary::of(&merged["x"]);
        assert_eq!(s.count, 200);
        assert!((s.p50_ms - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn snapshots_add_up() {
        let c = Counters::default();
        c.add(C::Granted, 3);
        c.inc(C::Live);
        c.dec(C::Live);
        let mut total = c.snapshot();
        total.merge(&c.snapshot());
        assert_eq!(total.get(C::Granted), 6);
        assert_eq!(total.get(C::Live), 0);
    }
}
