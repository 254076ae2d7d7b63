//! Watching the server under test: its process from /proc (memory, CPU time,
//! open files) and its own session and socket counts from `GET /health`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::players::HttpPool;

/// A sample of the server process, read from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// Seconds since the run started.
    pub t: f64,
    pub rss_kb: u64,
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    pub fds: u64,
    /// Sessions and sockets the server reports on /health (drisc only).
    pub sessions: Option<u64>,
    pub sockets: Option<u64>,
}

/// Clock ticks per second of /proc/PID/stat: 100 on every Linux this runs on.
const CLK_TCK: f64 = 100.0;

pub fn read_proc(pid: u32) -> Option<(u64, f64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Some((rss_kb, ticks as f64 / CLK_TCK, fds))
}

/// Sessions and sockets from the server's /health, polled in the background.
#[derive(Default)]
pub struct Health {
    pub latest: Mutex<Option<(u64, u64)>>,
}

pub fn poll_health(pool: Arc<HttpPool>, health: Arc<Health>) {
    tokio::spawn(async move {
        let none = HeaderValue::from_static("none");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Ok((status, body)) = pool.send(Method::GET, "/health", &none, Bytes::new()).await else {
                continue;
            };
            if !status.is_success() {
                // Not a drisc (the baseline has no /health): stop asking.
                return;
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                if let Ok(mut latest) = health.latest.lock() {
                    *latest = Some((n("sessions"), n("sockets")));
                }
            }
        }
    });
}

/// The server's socket count from `GET /health` (drisc only).
pub async fn health_sockets(pool: &HttpPool) -> Option<u64> {
    let none = HeaderValue::from_static("none");
    let (status, body) = pool.send(Method::GET, "/health", &none, Bytes::new()).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok().filter(|_| status.is_success())?;
    v.get("sockets")?.as_u64()
}
