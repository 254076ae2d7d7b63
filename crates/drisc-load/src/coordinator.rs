//! The coordinator: starts the workers (tasks of this process, or copies of this
//! program bound to their own source addresses), prints a progress line per
//! second, watches the server process, and merges the results.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::plan::Plan;
use crate::players::HttpPool;
use crate::protocol::{Assignment, Down, Up};
use crate::server::{Health, ProcSample, poll_health, read_proc};
use crate::stats::{C, HistData, Snapshot, Summary, summarize};

struct Worker {
    to: mpsc::UnboundedSender<Down>,
    child: Option<Child>,
    latest: Snapshot,
    done: Option<(Snapshot, BTreeMap<String, HistData>)>,
}

pub struct Run {
    workers: Vec<Worker>,
    from: mpsc::UnboundedReceiver<(usize, Up)>,
    started: Instant,
    server_pid: Option<u32>,
    health: Arc<Health>,
    pub samples: Vec<ProcSample>,
    last_print: Option<(Instant, Snapshot, Option<ProcSample>)>,
    tick: tokio::time::Interval,
    /// Messages that came while [`Run::wait`] slept, for [`Run::next`].
    pending: std::collections::VecDeque<(usize, Up)>,
    quiet: bool,
    label: String,
    pub errors: Vec<String>,
}

impl Run {
    /// Starts `plan.common.workers` worker processes (or one worker task when 0).
    pub async fn start(plan: &Plan, label: &str, health_pool: Option<Arc<HttpPool>>) -> Result<Self> {
        let (up_tx, from) = mpsc::unbounded_channel();
        let n = plan.common.workers;
        let source = |i: u32| plan.common.source_range().map(|(a, b)| (a, b.wrapping_add(i as u8)));
        let mut workers = Vec::new();
        if n == 0 {
            let (to, down) = mpsc::unbounded_channel();
            let assignment = Assignment {
                plan: plan.clone(),
                index: 0,
                count: 1,
                source: source(0),
            };
            let up = up_tx.clone();
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(crate::worker::run(assignment, down, tx));
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if up.send((0, m)).is_err() {
                        break;
                    }
                }
            });
            workers.push(Worker {
                to,
                child: None,
                latest: Snapshot::default(),
                done: None,
            });
        }
        for i in 0..n {
            let assignment = Assignment {
                plan: plan.clone(),
                index: i,
                count: n,
                source: source(i),
            };
            workers.push(spawn_process(i as usize, assignment, up_tx.clone()).await?);
        }
        let health = Arc::new(Health::default());
        if let Some(pool) = health_pool {
            poll_health(pool, health.clone());
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            workers,
            from,
            started: Instant::now(),
            server_pid: plan.common.server_pid,
            health,
            samples: Vec::new(),
            last_print: None,
            tick,
            pending: Default::default(),
            quiet: plan.common.quiet,
            label: label.to_owned(),
            errors: Vec::new(),
        })
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter_map(|w| w.child.as_ref().and_then(Child::id))
            .collect()
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The server process now.
    pub fn sample(&self) -> Option<ProcSample> {
        let (rss_kb, cpu_s, fds) = read_proc(self.server_pid?)?;
        let health = self.health.latest.lock().ok().and_then(|h| *h);
        Some(ProcSample {
            t: self.elapsed(),
            rss_kb,
            cpu_s,
            fds,
            sessions: health.map(|h| h.0),
            sockets: health.map(|h| h.1),
        })
    }

    pub fn send(&self, down: Down) {
        for w in &self.workers {
            let _ = w.to.send(down.clone());
        }
    }

    /// The counters of every worker added up (as last reported).
    pub fn totals(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for w in &self.workers {
            total.merge(w.done.as_ref().map_or(&w.latest, |d| &d.0));
        }
        total
    }

    fn progress(&mut self) {
        let sample = self.sample();
        if let Some(s) = sample {
            self.samples.push(s);
        }
        let now = Instant::now();
        let totals = self.totals();
        if let Some((then, before, before_sample)) = &self.last_print
            && !self.quiet
        {
            let dt = (now - *then).as_secs_f64().max(1e-3);
            let rate = |c: C| (totals.get(c).saturating_sub(before.get(c))) as f64 / dt;
            let mut line = format!(
                "[{:>5.0}s] {}: sent {} ({:.0}/s) granted {} 409 {} err {}+{} | live {} ok {} pong {} ({:.0}/s)",
                self.elapsed(),
                self.label,
                totals.get(C::Sent),
                rate(C::Sent),
                totals.get(C::Granted),
                totals.get(C::Limit),
                totals.get(C::HttpError),
                totals.get(C::NetError),
                totals.get(C::Live),
                totals.get(C::Ok),
                totals.get(C::Pong),
                rate(C::Pong),
            );
            if let (Some(s), Some(b)) = (sample, before_sample) {
                let cpu = (s.cpu_s - b.cpu_s) / dt * 100.0;
                line += &format!(
                    " | server rss {:.1} MB cpu {cpu:.0}% fds {}",
                    s.rss_kb as f64 / 1024.0,
                    s.fds
                );
                if let Some(n) = s.sessions {
                    line += &format!(" sessions {n}");
                }
            }
            eprintln!("{line}");
        }
        self.last_print = Some((now, totals, sample));
    }

    /// The next message from a worker that is not a progress report; progress
    /// lines are printed while waiting.
    pub async fn next(&mut self) -> Result<(usize, Up)> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            tokio::select! {
                _ = self.tick.tick() => self.progress(),
                m = self.from.recv() => {
                    let Some((i, up)) = m else { bail!("every worker has gone") };
                    match up {
                        Up::Progress { counters } => self.workers[i].latest = counters,
                        Up::Done { counters, hists, error } => {
                            if let Some(e) = error {
                                self.errors.push(format!("worker {i}: {e}"));
                            }
                            self.workers[i].done = Some((counters.clone(), hists.clone()));
                            return Ok((i, Up::Done { counters, hists, error: None }));
                        }
                        other => return Ok((i, other)),
                    }
                }
            }
        }
    }

    /// Sleeps while printing progress.
    pub async fn wait(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                _ = self.tick.tick() => self.progress(),
                m = self.from.recv() => match m {
                    Some((i, Up::Progress { counters })) => self.workers[i].latest = counters,
                    Some((i, Up::Done { counters, hists, error })) => {
                        if let Some(e) = error {
                            self.errors.push(format!("worker {i}: {e}"));
                        }
                        self.workers[i].done = Some((counters.clone(), hists.clone()));
                        self.pending.push_back((i, Up::Done { counters, hists, error: None }));
                    }
                    Some(m) => self.pending.push_back(m),
                    None => tokio::time::sleep_until(until).await,
                },
            }
        }
    }

    /// Waits until every worker reported `stage`; returns the stage reports.
    pub async fn stage(&mut self, stage: usize, limit: Duration) -> Result<Vec<Up>> {
        let deadline = Instant::now() + limit;
        let mut reports: Vec<Option<Up>> = self.workers.iter().map(|_| None).collect();
        while reports.iter().any(Option::is_none) {
            let (i, up) = tokio::time::timeout_at(deadline, self.next())
                .await
                .with_context(|| format!("the workers did not reach stage {stage} in {limit:?}"))??;
            match up {
                Up::Stage { stage: s, .. } if s == stage => reports[i] = Some(up),
                Up::Done { .. } => bail!("worker {i} stopped before stage {stage}: {:?}", self.errors),
                _ => {}
            }
        }
        Ok(reports.into_iter().flatten().collect())
    }

    /// Waits for every worker's final report, killing those that do not give it in time.
    pub async fn finish(&mut self, limit: Duration) -> BTreeMap<String, Summary> {
        let deadline = Instant::now() + limit;
        while self.workers.iter().any(|w| w.done.is_none()) {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            if w.done.is_none() {
                if w.child.is_none() {
                    self.errors.push(format!("worker {i} did not finish in time"));
                }
                w.done = Some((w.latest.clone(), BTreeMap::new()));
            }
            if let Some(child) = w.child.as_mut() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        self.progress();
        let parts: Vec<_> = self
            .workers
            .iter()
            .filter_map(|w| w.done.as_ref().map(|d| d.1.clone()))
            .collect();
        summarize(&parts)
    }
}

/// Starts one worker process: this program again, talking JSON lines on stdio.
async fn spawn_process(i: usize, assignment: Assignment, up: mpsc::UnboundedSender<(usize, Up)>) -> Result<Worker> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker process")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let (to, mut down) = mpsc::unbounded_channel::<Down>();
    let first = serde_json::to_string(&assignment)? + "\n";
    tokio::spawn(async move {
        if stdin.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        while let Some(d) = down.recv().await {
            let Ok(line) = serde_json::to_string(&d) else { continue };
            if stdin.write_all((line + "\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Up>(&line) {
                Ok(m) => {
                    if up.send((i, m)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("drisc-load: worker {i} said something unreadable: {e}"),
            }
        }
    });
    Ok(Worker {
        to,
        child: Some(child),
        latest: Snapshot::default(),
        done: None,
    })
}
