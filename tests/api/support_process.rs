//! The real `drisc` binary as a child process, for what only a real process shows:
//! signals (SIGTERM, a second signal, SIGKILL), file limits, what it logs.
//!
//! The server is started on port 0 and the port is read from its log, so two
//! tests never race for a port. Everything it prints (stdout and stderr) is kept
//! for the test to inspect. Dropping a `ServerProcess` kills it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to start the server.
pub struct ProcessOptions {
    /// `DRISC__SECTION__KEY` overrides, on top of the quiet test defaults.
    pub env: Vec<(String, String)>,
    /// The open-file limit (soft and hard) to start the process with, via `prlimit`.
    pub nofile: Option<u64>,
    /// The subcommand and its arguments; default `serve`.
    pub args: Vec<String>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            nofile: None,
            args: vec!["serve".into()],
        }
    }
}

impl ProcessOptions {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

pub struct ServerProcess {
    child: Child,
    pub port: u16,
    pub base: String,
    pub data_dir: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
}

/// Keeps every line a stream prints, and reports the listening port once seen.
fn collect(stream: impl std::io::Read + Send + 'static, output: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            output.lock().unwrap().push(line);
        }
    });
}

/// The port in the "drisc is listening; WebSocket endpoint at ws://127.0.0.1:PORT/ws" line.
fn listening_port(lines: &[String]) -> Option<u16> {
    lines.iter().find_map(|line| {
        let rest = line.split("ws://").nth(1)?;
        let host_port = rest.split('/').next()?;
        host_port.rsplit(':').next()?.parse().ok()
    })
}

impl ServerProcess {
    /// Starts `drisc serve` on port 0 with `data_dir`, and waits until it listens.
    pub fn start(data_dir: &Path, options: ProcessOptions) -> ServerProcess {
        let binary = env!("CARGO_BIN_EXE_drisc");
        let mut command = match options.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .args(&options.args)
            .env("DRISC__SERVER__PORT", "0")
            .env("DRISC__STORAGE__DATA_DIR", data_dir)
            .env("DRISC__LOG__LEVEL", "info")
            .env("DRISC__LOG__FORMAT", "text")
            .env_remove("RUST_LOG");
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the drisc binary starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), output.clone());
        collect(child.stderr.take().unwrap(), output.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = listening_port(&output.lock().unwrap());
            if let Some(port) = port {
                return ServerProcess {
                    child,
                    port,
                    base: format!("http://127.0.0.1:{port}"),
                    data_dir: data_dir.to_path_buf(),
                    output,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "drisc exited before listening ({status}):\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "drisc did not listen within 30 s:\n{}",
                output.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A client of this server, with the development admin key.
    pub fn api(&self) -> crate::helpers::Api {
        crate::helpers::Api::new(self.base.clone())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL: no goodbye, nothing saved at exit.
    #[allow(dead_code)] // for the crash-safety and cluster tests
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Every line printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Every line printed so far once `ready` holds for them, or when PATIENCE has
    /// passed: the log thread writes what was logged every 25 ms (at nice 19, so
    /// later on a busy machine), and a line logged a moment ago may not be out yet.
    #[allow(dead_code)] // for the tests that read what the server logged
    pub async fn output_once(&self, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
        loop {
            let output = self.output();
            if ready(&output) || tokio::time::Instant::now() >= deadline {
                return output;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl ServerProcess {
    /// Waits until the throttled lines `pick` chooses give counts (`field=N`,
    /// the text format) adding up to `total`, failing if more than `most` such
    /// lines are ever out, or after 30 s (a throttle says a burst's rest 10 s
    /// after its first line).
    #[allow(dead_code)] // for the tests of throttled lines
    pub async fn await_throttled_total(&self, pick: impl Fn(&str) -> bool, field: &str, total: u64, most: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let marker = format!("{field}=");
        loop {
            let output = self.output();
            let lines: Vec<&String> = output.iter().filter(|line| pick(line)).collect();
            assert!(
                lines.len() <= most,
                "{} lines, at most {most} wanted:\n{}",
                lines.len(),
                output.join("\n")
            );
            let sum: u64 = lines
                .iter()
                .filter_map(|line| {
                    let count = line.split(marker.as_str()).nth(1)?;
                    count.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
                })
                .sum();
            if sum == total {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lines' {field} add up to {sum}, not {total}:\n{}",
                output.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A smoke test of the helper itself: the real binary starts on port 0, says
/// where it listens, answers, and stops on SIGTERM with exit code 0.
#[tokio::test]
async fn the_real_binary_starts_on_port_0_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), ProcessOptions::default());
    let health = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("drisc exits after SIGTERM");
    assert!(status.success(), "{status}");
}

/// Text lines piped to a file or a log collector carry no ANSI escape sequences,
/// even with `NO_COLOR` unset (empty counts as unset): tracing-subscriber colours
/// by default whatever its output is.
#[tokio::test]
async fn the_real_binarys_text_log_has_no_colour_codes_when_it_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ProcessOptions::default().env("NO_COLOR", ""));
    let output = server
        .output_once(|log| log.iter().any(|l| l.contains("is listening")))
        .await;
    let listening = output
        .iter()
        .find(|l| l.contains("is listening"))
        .expect("the start is logged");
    assert!(listening.contains(" INFO "), "{listening}");
    assert!(
        output.iter().all(|l| !l.contains('\u{1b}')),
        "escape sequences in a piped log:\n{}",
        output.join("\n")
    );
}
