//! The summary table a run prints on stdout (bench scripts read it: keep its
//! shape).

use super::RunResult;
use crate::stats::C;

pub fn print_summary(r: &RunResult) {
    println!();
    println!(
        "== {} ({}) against {} in {:.1}s",
        r.scenario, r.label, r.target, r.elapsed_s
    );
    let c = &r.counters;
    println!(
        "requests {:>9}  granted {:>9}  409 {:>8}  disabled {:>5}  http-err {:>5}  net-err {:>5}",
        c.get(C::Sent),
        c.get(C::Granted),
        c.get(C::Limit),
        c.get(C::Disabled),
        c.get(C::HttpError),
        c.get(C::NetError)
    );
    println!(
        "sockets  {:>9}  OK      {:>9}  PING {:>7}  PONG {:>9}  FINISHED {:>7}  takeover {:>5}  taken-over {:>5}  reconnect {:>5}  expired {:>5}",
        c.get(C::WsOpen),
        c.get(C::Ok),
        c.get(C::Ping),
        c.get(C::Pong),
        c.get(C::Finished),
        c.get(C::Takeover),
        c.get(C::TakenOver),
        c.get(C::Reconnect),
        c.get(C::Expired)
    );
    if !r.latency.is_empty() {
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p99", "p99.9", "max", "mean"
        );
        for (name, s) in &r.latency {
            println!(
                "{:<14} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, s.count, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms, s.mean_ms
            );
        }
    }
    if !r.stages.is_empty() {
        println!(
            "{:>9} {:>7} {:>10} {:>7} {:>9} {:>9} {:>12}",
            "sessions", "failed", "rss MB", "fds", "PONGs", "cpu s", "PONG/core-s"
        );
        for s in &r.stages {
            println!(
                "{:>9} {:>7} {:>10.1} {:>7} {:>9} {:>9.2} {:>12.0}",
                s.sessions,
                s.failed,
                s.rss_kb as f64 / 1024.0,
                s.fds,
                s.pongs,
                s.cpu_s,
                if s.cpu_s > 0.0 { s.pongs as f64 / s.cpu_s } else { 0.0 }
            );
        }
    }
    for check in &r.checks {
        println!(
            "{} {}: expected {}, got {}",
            if check.ok { "PASS" } else { "FAIL" },
            check.name,
            check.expected,
            check.got
        );
    }
    for (k, v) in &r.metrics {
        println!("{k:<34} {v:>14.3}");
    }
    for e in &r.errors {
        println!("error: {e}");
    }
}
