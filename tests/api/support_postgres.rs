//! A real PostgreSQL server for tests, on loopback, in a temporary directory.
//!
//! [`PgServer::start`] finds the server binaries (`DRISC_PG_BIN`, then `PATH`,
//! `/usr/local/bin`, `/usr/lib/postgresql/*/bin`), runs `initdb` into a fresh
//! directory, starts `postgres` on 127.0.0.1 on a free port with its unix socket
//! inside that directory and durability off (tests need speed, not crash safety),
//! and creates a database. Dropping it stops the server (`pg_ctl stop -m immediate`)
//! and removes the directory.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, the server
//! binaries run as the unprivileged `postgres` user through `runuser` (or `su`),
//! and the directory is handed to that user.
//!
//! A missing server is a failure, never a silent skip: `scripts/test-deps`
//! installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The unprivileged user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";
/// The database the tests get.
const DATABASE: &str = "drisc_test";
/// How long the server may take to start or stop.
const STARTUP: Duration = Duration::from_secs(30);

pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/drisc_test`
    pub url: String,
    pub port: u16,
    bin: PathBuf,
    /// `Some(user)` when the server binaries run as another user (tests run as root).
    run_as: Option<Runner>,
    data: PathBuf,
    log: PathBuf,
    /// Holds the data directory, the socket and the log; removed last.
    dir: tempfile::TempDir,
}

/// How to run a command as [`SERVER_USER`].
#[derive(Clone, Copy)]
enum Runner {
    Runuser,
    Su,
}

impl PgServer {
    /// Starts a fresh server and creates its test database. Panics, with what to do,
    /// if the server binaries are missing or the server does not start.
    pub async fn start() -> PgServer {
        let bin = find_bin_dir().unwrap_or_else(|| missing_server());
        let run_as = if is_root() { Some(runner()) } else { None };
        let base = if run_as.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("drisc-pg-")
            .tempdir_in(base)
            .expect("a temporary directory for PostgreSQL");
        if run_as.is_some() {
            let out = Command::new("chown")
                .arg(SERVER_USER)
                .arg(dir.path())
                .output()
                .expect("chown runs");
            assert!(
                out.status.success(),
                "chown {SERVER_USER} {}: {}",
                dir.path().display(),
                stderr(&out)
            );
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut server = PgServer {
            url: String::new(),
            port: 0,
            bin,
            run_as,
            data,
            log,
            dir,
        };
        server.initdb();
        // A free port may be taken between finding and binding it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => {
                    last_error.clear();
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        assert!(last_error.is_empty(), "PostgreSQL did not start: {last_error}");
        server.url = format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", server.port);
        server.create_database().await;
        server
    }

    /// Restarts the server on the same port with the same data, as an operator or a
    /// crash would: an immediate stop (open connections are cut), then a start.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts the server again after [`PgServer::stop`], on the same port with the same data.
    pub fn start_again(&mut self) {
        self.pg_ctl_start()
            .unwrap_or_else(|e| panic!("PostgreSQL did not start again: {e}"));
    }

    /// Stops the server at once, cutting every connection (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        let out = self.run(
            &self.tool("pg_ctl"),
            &["stop", "-D", path(&self.data), "-m", "immediate", "-w", "-t", "30"],
        );
        assert!(out.status.success(), "pg_ctl stop failed: {}", stderr(&out));
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn initdb(&self) {
        let out = self.run(
            &self.tool("initdb"),
            &[
                "-D",
                path(&self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // fsync off (-F): written data survives a stop of the server, only not a crash of
        // the machine. synchronous_commit stays on, so a commit is in the WAL before it
        // returns and an immediate stop loses nothing that was committed.
        let options = format!(
            "-h 127.0.0.1 -p {port} -k {socket} -F -c full_page_writes=off",
            port = self.port,
            socket = self.dir.path().display(),
        );
        let out = self.run(
            &self.tool("pg_ctl"),
            &[
                "start",
                "-D",
                path(&self.data),
                "-l",
                path(&self.log),
                "-o",
                &options,
                "-w",
                "-t",
                &STARTUP.as_secs().to_string(),
            ],
        );
        if !out.status.success() {
            return Err(format!("pg_ctl start: {}\nserver log:\n{}", stderr(&out), self.log()));
        }
        // pg_ctl -w waits for the server to accept connections; make sure it does on TCP.
        let deadline = Instant::now() + STARTUP;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nothing listens on port {}\nserver log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    async fn create_database(&self) {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL: {e}\nserver log:\n{}", self.log()));
        sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a server binary, as [`SERVER_USER`] when the tests run as root.
    fn run(&self, program: &Path, args: &[&str]) -> Output {
        let mut command = match self.run_as {
            None => Command::new(program),
            Some(Runner::Runuser) => {
                let mut c = Command::new("runuser");
                c.args(["-u", SERVER_USER, "--"]).arg(program);
                c
            }
            Some(Runner::Su) => {
                let line = std::iter::once(path(program))
                    .chain(args.iter().copied())
                    .map(shell_quote)
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = Command::new("su");
                c.args(["-s", "/bin/sh", SERVER_USER, "-c", &line]);
                c.current_dir(self.dir.path());
                return c
                    .output()
                    .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
            }
        };
        // The server user may not be able to enter the test's working directory.
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.run(
                &self.tool("pg_ctl"),
                &["stop", "-D", path(&self.data), "-m", "immediate", "-w", "-t", "30"],
            );
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`, symlinks resolved (so
/// `pg_ctl` finds `postgres` beside itself).
fn find_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("DRISC_PG_BIN") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths));
    }
    candidates.push(PathBuf::from("/usr/local/bin"));
    // Debian and Ubuntu keep each major version apart; newest first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    candidates.extend(versions.into_iter().map(|(_, p)| p));

    candidates.into_iter().find_map(|dir| {
        let initdb = std::fs::canonicalize(dir.join("initdb")).ok()?;
        let bin = initdb.parent()?.to_path_buf();
        ["pg_ctl", "postgres"]
            .iter()
            .all(|tool| bin.join(tool).is_file())
            .then_some(bin)
    })
}

fn missing_server() -> ! {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in DRISC_PG_BIN, PATH, \
             /usr/local/bin or /usr/lib/postgresql/*/bin. In CI a missing server is a failure: \
             install it in the job (scripts/test-deps)."
        );
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in DRISC_PG_BIN, PATH, \
         /usr/local/bin or /usr/lib/postgresql/*/bin. Run scripts/test-deps to install what the \
         tests need, or set DRISC_PG_BIN to the directory holding them."
    );
}

/// Whether this process runs as root (read from /proc, or from `id -u`).
fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// How to become [`SERVER_USER`]; panics with what to do if that is impossible.
fn runner() -> Runner {
    let exists = Command::new("id")
        .arg("-u")
        .arg(SERVER_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        panic!(
            "the tests run as root and PostgreSQL refuses to run as root, but there is no \
             '{SERVER_USER}' user to run it as. Run the tests as an ordinary user, or create the \
             user (installing the postgresql package does: scripts/test-deps)."
        );
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("runuser", &["-u", SERVER_USER, "--", "true"]) {
        Runner::Runuser
    } else if works("su", &["-s", "/bin/sh", SERVER_USER, "-c", "true"]) {
        Runner::Su
    } else {
        panic!(
            "the tests run as root and PostgreSQL refuses to run as root, and neither runuser \
             nor su can run commands as '{SERVER_USER}'. Run the tests as an ordinary user."
        );
    }
}
