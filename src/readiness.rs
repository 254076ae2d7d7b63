//! Can this node admit players? What `GET /readyz` answers, and what load balancers
//! and orchestrators act on.
//!
//! A node is not ready while a store it needs is unreachable (Redis in cluster
//! mode, the settings database), or once it has been asked to stop (draining).
//! The stores are probed at most once per [`MAX_AGE`], each probe bounded by
//! [`PROBE_TIMEOUT`], and one probe round runs at a time: a flood of `/readyz`
//! costs the stores nothing more than one caller polling every second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
// Tokio's clock, so that tests can move it.
use tokio::time::Instant;

/// How long a probe round's result is answered before the stores are asked again.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// The most one probe may take: a store slower than this is as good as unreachable
/// for admission, and `drisc healthcheck` must get its answer well within its own timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A store that can say, cheaply, whether it answers.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// The check's name in `/readyz`: the engine's, so an operator knows what to look at.
    fn name(&self) -> &'static str;
    /// One round trip to the store. The error is logged, never shown in `/readyz`
    /// (which anyone may read): it may name hosts.
    async fn check(&self) -> Result<(), String>;
}

/// A store the node depends on, and whether admission needs it.
pub struct Dependency {
    pub probe: Arc<dyn Probe>,
    /// False when the node admits without it, e.g. Redis with
    /// `cluster.on_store_unavailable = "fail_open"` (players play without a
    /// session): it is still reported, but does not make the node unready, or every
    /// node of the cluster would leave the load balancer at once.
    pub required: bool,
}

/// The state of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Up,
    Down,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each dependency by name, as of the last probe round.
    pub checks: Vec<(&'static str, CheckState)>,
    /// Why the node does not admit; `None` when it is ready.
    pub reason: Option<String>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.reason.is_none()
    }
}

/// The result of the last probe round.
#[derive(Clone)]
struct Probed {
    at: Instant,
    checks: Vec<(&'static str, CheckState)>,
    /// The first required dependency found down.
    down: Option<&'static str>,
}

pub struct Readiness {
    dependencies: Vec<Dependency>,
    draining: AtomicBool,
    /// Never held across an await.
    last: Mutex<Option<Probed>>,
    /// Held by the one caller running a probe round.
    probing: tokio::sync::Mutex<()>,
}

impl Readiness {
    pub fn new(dependencies: Vec<Dependency>) -> Self {
        Self {
            dependencies,
            draining: AtomicBool::new(false),
            last: Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    /// The node is stopping: from now on `/readyz` says so, whatever the stores.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the node can admit, probing the stores if the last round is older
    /// than [`MAX_AGE`]. While another caller probes, the previous result is
    /// answered rather than waited for (only the very first caller waits).
    pub async fn report(&self) -> Report {
        if self.draining() {
            return Report {
                checks: self.cached().map(|p| p.checks).unwrap_or_default(),
                reason: Some("draining".into()),
            };
        }
        let probed = match self.fresh() {
            Some(probed) => probed,
            None => self.probe_once().await,
        };
        Report {
            reason: probed.down.map(|name| format!("{name} unreachable")),
            checks: probed.checks,
        }
    }

    fn cached(&self) -> Option<Probed> {
        self.last.lock().ok().and_then(|last| last.clone())
    }

    fn fresh(&self) -> Option<Probed> {
        self.cached().filter(|p| p.at.elapsed() < MAX_AGE)
    }

    async fn probe_once(&self) -> Probed {
        let _guard = match self.probing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(stale) = self.cached() {
                    return stale;
                }
                self.probing.lock().await
            }
        };
        // Another caller may have finished a round while this one waited.
        if let Some(probed) = self.fresh() {
            return probed;
        }
        let results = futures_util::future::join_all(self.dependencies.iter().map(|d| async move {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, d.probe.check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            (d, outcome)
        }))
        .await;
        let previous = self.cached();
        let mut checks = Vec::with_capacity(results.len());
        let mut down = None;
        for (d, outcome) in results {
            let name = d.probe.name();
            let state = if outcome.is_ok() {
                CheckState::Up
            } else {
                CheckState::Down
            };
            let was = previous
                .as_ref()
                .and_then(|p| p.checks.iter().find(|(n, _)| *n == name))
                .map(|(_, s)| *s);
            // One line per change, not per probe: a /readyz poller must not flood the log.
            match (&outcome, was) {
                (Err(error), None | Some(CheckState::Up)) => {
                    tracing::warn!(check = name, required = d.required, %error, "readiness: {name} is unreachable");
                }
                (Ok(()), Some(CheckState::Down)) => {
                    tracing::info!(check = name, "readiness: {name} answers again");
                }
                _ => {}
            }
            if state == CheckState::Down && d.required && down.is_none() {
                down = Some(name);
            }
            checks.push((name, state));
        }
        let probed = Probed {
            at: Instant::now(),
            checks,
            down,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(probed.clone());
        }
        probed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A probe whose answer the test sets, counting how often it is asked.
    struct Fake {
        up: AtomicBool,
        asked: AtomicUsize,
        delay: Duration,
    }

    #[async_trait]
    impl Probe for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        async fn check(&self) -> Result<(), String> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.delay).await;
            if self.up.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("connection refused".into())
            }
        }
    }

    fn fake(delay: Duration, required: bool) -> (Arc<Fake>, Readiness) {
        let probe = Arc::new(Fake {
            up: AtomicBool::new(true),
            asked: AtomicUsize::new(0),
            delay,
        });
        let readiness = Readiness::new(vec![Dependency {
            probe: probe.clone(),
            required,
        }]);
        (probe, readiness)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_reports_probes_the_store_once_per_max_age() {
        let (probe, readiness) = fake(Duration::from_millis(10), true);
        let readiness = Arc::new(readiness);
        let reports = (0..100).map(|_| {
            let r = readiness.clone();
            tokio::spawn(async move { r.report().await })
        });
        for report in futures_util::future::join_all(reports).await {
            assert!(report.unwrap().ready());
        }
        assert_eq!(probe.asked.load(Ordering::Relaxed), 1);
        for _ in 0..100 {
            readiness.report().await;
        }
        assert_eq!(
            probe.asked.load(Ordering::Relaxed),
            1,
            "within MAX_AGE the result is reused"
        );
        tokio::time::advance(MAX_AGE).await;
        readiness.report().await;
        assert_eq!(probe.asked.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_required_store_down_names_it_and_a_recovered_one_is_ready_again() {
        let (probe, readiness) = fake(Duration::ZERO, true);
        probe.up.store(false, Ordering::Relaxed);
        let report = readiness.report().await;
        assert_eq!(report.reason.as_deref(), Some("fake unreachable"));
        assert_eq!(report.checks, vec![("fake", CheckState::Down)]);
        probe.up.store(true, Ordering::Relaxed);
        tokio::time::advance(MAX_AGE).await;
        let report = readiness.report().await;
        assert!(report.ready(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_hangs_counts_as_down_after_the_probe_timeout() {
        let (_, readiness) = fake(Duration::from_secs(3600), true);
        let report = readiness.report().await;
        assert_eq!(report.reason.as_deref(), Some("fake unreachable"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_admission_does_without_is_reported_but_keeps_the_node_ready() {
        let (probe, readiness) = fake(Duration::ZERO, false);
        probe.up.store(false, Ordering::Relaxed);
        let report = readiness.report().await;
        assert!(report.ready());
        assert_eq!(report.checks, vec![("fake", CheckState::Down)]);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_is_unready_at_once_without_asking_the_stores() {
        let (probe, readiness) = fake(Duration::ZERO, true);
        readiness.start_draining();
        let report = readiness.report().await;
        assert_eq!(report.reason.as_deref(), Some("draining"));
        assert_eq!(probe.asked.load(Ordering::Relaxed), 0);
    }
}
