//! TLS to the stores: a `redis-server` and a PostgreSQL started with TLS on
//! loopback, with a CA and certificates the test makes (rcgen). drisc connects
//! when given the CA, refuses to start without it (a certificate error, not a
//! hang), and presents a client certificate where the server requires one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drisc::config::{SessionBackend, SettingsBackend};
use drisc::{App, Settings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sqlx::Connection;

use crate::helpers::{spawn_app_with, test_settings};
use crate::players::live_player;
use crate::support_postgres::PgServer;
use crate::support_redis::{cli_binary, server_binary};

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in a directory of their own.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `client_name`: the client certificate's common name (PostgreSQL's `cert`
    /// authentication takes it as the user name).
    pub fn new(client_name: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "drisc store TLS test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client_params.distinguished_name.push(DnType::CommonName, client_name);
        let client = client_params.signed_by(&client_key, &ca).expect("client certificate");

        // Under /tmp and readable by all: PostgreSQL runs as its own user when the
        // tests run as root. Only the server's key is kept private (below).
        let dir = tempfile::Builder::new()
            .prefix("drisc-tls-")
            .tempdir_in("/tmp")
            .expect("a directory");
        set_mode(dir.path(), 0o755);
        let pki = Pki { dir };
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
            ("not-a-certificate.pem", "hello\n".to_owned()),
        ] {
            std::fs::write(pki.path(name), pem).expect("write a PEM file");
            set_mode(&pki.path(name), 0o644);
        }
        set_mode(&pki.path("server.key"), 0o600);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// Hands the server's key to `user` (PostgreSQL insists on owning a 0600 key).
    fn give_server_key_to(&self, user: &str) {
        let out = Command::new("chown")
            .arg(user)
            .arg(self.path("server.key"))
            .output()
            .expect("chown runs");
        assert!(
            out.status.success(),
            "chown {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` that speaks TLS only (its plain port is off), killed when dropped.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki, require_client_certificates: bool) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(server_binary())
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                &pki.file("server.pem"),
                "--tls-key-file",
                &pki.file("server.key"),
            ])
            .args(["--tls-ca-cert-file", &pki.file("ca.pem")])
            .args([
                "--tls-auth-clients",
                if require_client_certificates { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server starts (with TLS: Debian's is built with it): {e}"));
        let mut server = TlsRedis { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server exited ({status}): is it built with TLS? `redis-server --tls-port` needs it");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on its TLS port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.port = port;
        server
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_redis(s: &mut Settings, url: String) {
    s.storage.sessions = SessionBackend::Redis;
    s.storage.redis_url = url;
    s.liveness.ping_interval = Duration::from_millis(500);
    s.liveness.pong_timeout = Duration::from_secs(3);
    s.cluster.refresh_interval = Duration::from_millis(200);
}

/// What `App::build` said when it refused to start.
async fn start_error(settings: Settings) -> String {
    match tokio::time::timeout(Duration::from_secs(20), App::build(settings))
        .await
        .expect("a start that fails, fails within 20 s")
    {
        Ok(_) => panic!("the server started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_node_on_rediss_with_the_ca_file_admits_and_serves_players() {
    let pki = Pki::new("drisc");
    let redis = TlsRedis::start(&pki, false);
    let (url, ca) = (redis.url(), pki.file("ca.pem"));
    let app = spawn_app_with(move |s| {
        on_redis(s, url);
        s.storage.redis_ca_file = ca;
    })
    .await;
    let token = app.token("p", "tls");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    let pings = player.keep_alive_for(Duration::from_millis(1200)).await;
    assert!(pings > 0, "the player is pinged over a session kept in Redis over TLS");
    assert_eq!(app.session_state(&granted.session_id).await.as_deref(), Some("live"));
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    app.stop().await;
}

#[tokio::test]
async fn orders_between_nodes_travel_through_rediss_too() {
    let pki = Pki::new("drisc");
    let redis = TlsRedis::start(&pki, true);
    let node = || {
        let (url, ca, cert, key) = (
            redis.url(),
            pki.file("ca.pem"),
            pki.file("client.pem"),
            pki.file("client.key"),
        );
        spawn_app_with(move |s| {
            on_redis(s, url);
            s.storage.redis_ca_file = ca;
            s.storage.redis_client_cert = cert;
            s.storage.redis_client_key = key;
            s.auth.session_secret = "store-tls-test-session-secret".into();
            s.publishers.default_session_limit = 1;
        })
    };
    let (a, b) = (node().await, node().await);
    let token = a.token("p", "inbox");
    let tv = a.create_ok(&token, "S1", "TV").await;
    let mut player = crate::players::connect_ok(&tv.endpoint).await;
    crate::helpers::granted(b.takeover(&token, "S1", "Phone", &tv.session_id).await).await;
    // PINGs unanswered: with no PONG the node never checks the session in Redis,
    // so the order can only have come through node a's inbox, read over its own
    // TLS connection (and before the PONG timeout ends the session).
    let message = tokio::time::timeout(Duration::from_secs(2), player.next_skipping_pings(false))
        .await
        .expect("the order arrives within 2 s");
    assert_eq!(
        message,
        crate::players::Seen::Message(serde_json::json!({"action": "TAKE_OVER", "sessionName": "Phone"})),
    );
    player.expect_close(4001).await;
}

#[tokio::test]
async fn a_node_on_rediss_without_the_ca_file_refuses_to_start_with_a_certificate_error() {
    let pki = Pki::new("drisc");
    let redis = TlsRedis::start(&pki, false);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    on_redis(&mut settings, redis.url());
    let error = start_error(settings).await;
    assert!(error.contains("storage.redis_url"), "names the setting: {error}");
    assert!(
        error.contains("UnknownIssuer") && error.contains("set storage.redis_ca_file"),
        "says the certificate is not trusted, and what to set: {error}"
    );
}

#[tokio::test]
async fn a_redis_requiring_client_certificates_admits_a_node_that_presents_one() {
    let pki = Pki::new("drisc");
    let redis = TlsRedis::start(&pki, true);

    let dir = tempfile::tempdir().unwrap();
    let mut without = test_settings(dir.path());
    on_redis(&mut without, redis.url());
    without.storage.redis_ca_file = pki.file("ca.pem");
    let error = start_error(without).await;
    assert!(error.contains("storage.redis_url"), "names the setting: {error}");
    assert!(error.contains("storage.redis_client_cert"), "says what to set: {error}");

    let (url, ca, cert, key) = (
        redis.url(),
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let app = spawn_app_with(move |s| {
        on_redis(s, url);
        s.storage.redis_ca_file = ca;
        s.storage.redis_client_cert = cert;
        s.storage.redis_client_key = key;
    })
    .await;
    let token = app.token("p", "mtls");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    app.stop().await;
}

#[test]
fn the_tls_files_are_checked_when_the_settings_load() {
    let pki = Pki::new("drisc");
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        let mut s = test_settings(dir.path());
        s.storage.sessions = SessionBackend::Redis;
        s.storage.redis_url = "rediss://127.0.0.1:6380/".into();
        s
    };
    let error = |s: Settings| format!("{:#}", s.validate().expect_err("refused"));

    let mut s = base();
    s.storage.redis_ca_file = pki.file("not-a-certificate.pem");
    let e = error(s);
    assert!(
        e.contains("storage.redis_ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );

    let mut s = base();
    s.storage.redis_ca_file = "/nonexistent/ca.pem".into();
    let e = error(s);
    assert!(e.contains("storage.redis_ca_file") && e.contains("cannot read"), "{e}");

    let mut s = base();
    s.storage.redis_client_cert = pki.file("client.pem");
    let e = error(s);
    assert!(
        e.contains("storage.redis_client_key") && e.contains("both or neither"),
        "{e}"
    );

    let mut s = base();
    s.storage.redis_client_cert = pki.file("client.pem");
    s.storage.redis_client_key = pki.file("client.pem");
    let e = error(s);
    assert!(
        e.contains("storage.redis_client_key") && e.contains("private key"),
        "{e}"
    );

    let mut s = base();
    s.storage.redis_url = "redis://127.0.0.1:6379/".into();
    s.storage.redis_ca_file = pki.file("ca.pem");
    let e = error(s);
    assert!(e.contains("rediss://"), "{e}");

    let mut s = base();
    s.storage.settings = SettingsBackend::Postgres;
    s.storage.postgres_sslmode = "verify_full".into();
    let e = error(s);
    assert!(
        e.contains("storage.postgres_sslmode") && e.contains("verify-full"),
        "{e}"
    );

    let mut s = base();
    s.storage.redis_ca_file = pki.file("ca.pem");
    s.storage.redis_client_cert = pki.file("client.pem");
    s.storage.redis_client_key = pki.file("client.key");
    s.validate().expect("a CA, a certificate and its key are accepted");
}

/// Turns TLS on in a running test PostgreSQL (`ssl` is reloadable), with the
/// test's server certificate, and waits until a TLS connection gets through.
async fn enable_ssl(pg: &PgServer, pki: &Pki) {
    if is_root() {
        pki.give_server_key_to("postgres");
    }
    let mut conn = sqlx::PgConnection::connect(&pg.url)
        .await
        .expect("connect to the test PostgreSQL");
    let statements = format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}'; ALTER SYSTEM SET ssl_key_file = '{}'; \
         ALTER SYSTEM SET ssl_ca_file = '{}'; ALTER SYSTEM SET ssl = on",
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem"),
    );
    for statement in statements.split("; ") {
        sqlx::raw_sql(statement).execute(&mut conn).await.expect(statement);
    }
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .expect("reload");
    conn.close().await.ok();
    let require = format!("{}?sslmode=require", pg.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sqlx::PgConnection::connect(&require).await {
            Ok(c) => {
                c.close().await.ok();
                return;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "PostgreSQL did not turn TLS on: {e}\n{}",
                pg.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn on_postgres(s: &mut Settings, url: &str) {
    s.storage.settings = SettingsBackend::Postgres;
    s.storage.postgres_url = url.to_owned();
}

/// Whether the connection the options make is encrypted, as PostgreSQL sees it.
async fn connection_is_encrypted(settings: &Settings) -> bool {
    let options = drisc::store::postgres::connect_options(&settings.storage).expect("options");
    let mut conn = sqlx::PgConnection::connect_with(&options).await.expect("connects");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    conn.close().await.ok();
    ssl
}

#[tokio::test]
async fn postgres_with_verify_full_and_the_ca_file_keeps_the_settings_over_tls() {
    let pki = Pki::new("postgres");
    let pg = PgServer::start().await;
    enable_ssl(&pg, &pki).await;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    on_postgres(&mut settings, &pg.url);
    settings.storage.postgres_sslmode = "verify-full".into();
    settings.storage.postgres_ca_file = pki.file("ca.pem");
    settings.validate().expect("valid settings");
    assert!(
        connection_is_encrypted(&settings).await,
        "verify-full connects over TLS"
    );

    let storage = settings.storage.clone();
    let app = spawn_app_with(move |s| {
        let data_dir = s.storage.data_dir.clone();
        s.storage = storage;
        s.storage.data_dir = data_dir;
    })
    .await;
    let token = app.token("p", "pg-tls");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    app.stop().await;

    // The URL's own sslmode and sslrootcert are honoured when the settings are empty.
    let mut from_url = test_settings(dir.path());
    on_postgres(
        &mut from_url,
        &format!("{}?sslmode=verify-full&sslrootcert={}", pg.url, pki.file("ca.pem")),
    );
    assert!(
        connection_is_encrypted(&from_url).await,
        "the URL's sslmode=verify-full is used"
    );
}

#[tokio::test]
async fn postgres_with_verify_full_and_no_ca_file_refuses_to_start() {
    let pki = Pki::new("postgres");
    let pg = PgServer::start().await;
    enable_ssl(&pg, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    on_postgres(&mut settings, &pg.url);
    settings.storage.postgres_sslmode = "verify-full".into();
    let error = start_error(settings).await;
    assert!(error.contains("storage.postgres_url"), "names the setting: {error}");
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "says the certificate is not trusted: {error}"
    );
}

#[tokio::test]
async fn postgres_requiring_a_client_certificate_admits_a_node_that_presents_one() {
    // The certificate's common name is the PostgreSQL user (`cert` authentication).
    let pki = Pki::new("drisc_cert");
    let pg = PgServer::start().await;
    enable_ssl(&pg, &pki).await;
    let mut admin = sqlx::PgConnection::connect(&pg.url).await.expect("connect");
    for statement in [
        "CREATE ROLE drisc_cert LOGIN",
        "ALTER DATABASE drisc_test OWNER TO drisc_cert",
    ] {
        sqlx::raw_sql(statement).execute(&mut admin).await.expect(statement);
    }
    let hba: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&mut admin)
        .await
        .expect("hba_file");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    // First match wins: this user over TLS, by certificate only.
    std::fs::write(&hba, format!("hostssl all drisc_cert 127.0.0.1/32 cert\n{rules}")).expect("write pg_hba.conf");
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .expect("reload");
    admin.close().await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let url = pg.url.replacen("postgres://postgres@", "postgres://drisc_cert@", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut without = test_settings(dir.path());
    on_postgres(&mut without, &url);
    without.storage.postgres_sslmode = "verify-full".into();
    without.storage.postgres_ca_file = pki.file("ca.pem");
    let error = start_error(without.clone()).await;
    assert!(error.contains("storage.postgres_url"), "names the setting: {error}");
    assert!(
        error.contains("client certificate"),
        "PostgreSQL asks for the certificate: {error}"
    );

    let mut with = without;
    with.storage.postgres_client_cert = pki.file("client.pem");
    with.storage.postgres_client_key = pki.file("client.key");
    with.validate().expect("valid settings");
    assert!(
        connection_is_encrypted(&with).await,
        "connects with the client certificate, over TLS"
    );
    let storage = with.storage.clone();
    let app = spawn_app_with(move |s| {
        let data_dir = s.storage.data_dir.clone();
        s.storage = storage;
        s.storage.data_dir = data_dir;
    })
    .await;
    let token = app.token("p", "pg-mtls");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    app.stop().await;
}

/// A Redis Cluster that speaks TLS only: three masters (and a replica each, for
/// the failover test), each with `--tls-cluster yes` and `--tls-replication yes`,
/// requiring client certificates; joined with `redis-cli --cluster create --tls`.
/// Killed when dropped.
struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    /// The CA and client certificate `redis-cli` presents.
    cli_tls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    fn start(pki: &Pki) -> TlsCluster {
        Self::start_with(pki, 0)
    }

    /// Three masters and `replicas` replicas of each.
    fn start_with(pki: &Pki, replicas: usize) -> TlsCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = TlsCluster {
            ports: Vec::new(),
            children: Vec::new(),
            cli_tls: vec![
                "--tls".into(),
                "--cacert".into(),
                pki.file("ca.pem"),
                "--cert".into(),
                pki.file("client.pem"),
                "--key".into(),
                pki.file("client.key"),
            ],
            _dir: dir,
        };
        // A port found free may be taken by a parallel test before the node binds
        // it; the node then exits and is started again on fresh ports.
        for _ in 0..3 * (1 + replicas) {
            let mut started = None;
            for _ in 0..5 {
                let (port, bus) = (free_port(), free_port());
                let mut child = Command::new(server_binary())
                    .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cert-file", &pki.file("server.pem")])
                    .args(["--tls-key-file", &pki.file("server.key")])
                    .args(["--tls-ca-cert-file", &pki.file("ca.pem")])
                    .args([
                        "--tls-auth-clients",
                        "yes",
                        "--tls-cluster",
                        "yes",
                        "--tls-replication",
                        "yes",
                    ])
                    .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", "1000"])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .arg("--dir")
                    .arg(cluster._dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server starts");
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if child.try_wait().ok().flatten().is_none()
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    started = Some((port, child));
                    break;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            let (port, child) = started.expect("a TLS cluster node listens (5 tries on fresh ports)");
            cluster.ports.push(port);
            cluster.children.push(child);
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new(cli_binary())
            .args(&cluster.cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create --tls failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ports.iter().all(|port| {
            Command::new(cli_binary())
                .args(&cluster.cli_tls)
                .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the TLS cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A replica that never synced refuses to be promoted (as in the plain
        // test cluster): wait until each has its master's data.
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster
            .ports
            .iter()
            .filter(|port| {
                let info = cluster.cli(**port, &["INFO", "replication"]);
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .count()
            < 3 * replicas
        {
            assert!(Instant::now() < deadline, "the TLS cluster's replicas did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// What `redis-cli` over TLS prints for a command on the node on `port` (empty
    /// if it could not run).
    fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(cli_binary())
            .args(&self.cli_tls)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The port of a node still running.
    fn live_port(&mut self) -> u16 {
        let live = self
            .children
            .iter_mut()
            .position(|c| c.try_wait().ok().flatten().is_none())
            .expect("a live node");
        self.ports[live]
    }

    /// The port of the master serving `key`'s slot now, as `CLUSTER NODES` says.
    fn master_of(&mut self, key: &str) -> u16 {
        let port = self.live_port();
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        let serves = |range: &str| match range.split_once('-') {
            Some((from, to)) => from.parse().is_ok_and(|f: u16| f <= slot) && to.parse().is_ok_and(|t: u16| slot <= t),
            None => range.parse() == Ok(slot),
        };
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| {
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail") && f[8..].iter().any(|r| serves(r))
            })
            .and_then(|f| f[1].split(['@', ':']).nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes}"))
    }

    /// SIGKILLs the node on `port`.
    fn kill(&mut self, port: u16) {
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of the cluster");
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }

    fn seeds(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("rediss://127.0.0.1:{p}")).collect()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn nodes_on_a_redis_cluster_over_rediss_admit_serve_and_pass_orders() {
    let pki = Pki::new("drisc");
    let cluster = TlsCluster::start(&pki);

    // Without the client certificate the cluster refuses the node (the CA alone
    // gets it through the server's certificate check: the refusal is the cluster's).
    let dir = tempfile::tempdir().unwrap();
    let mut without = test_settings(dir.path());
    on_redis(&mut without, "redis://127.0.0.1:1/".into());
    without.storage.redis_cluster_nodes = cluster.seeds();
    without.storage.redis_ca_file = pki.file("ca.pem");
    let error = start_error(without).await;
    assert!(
        error.contains("storage.redis_cluster_nodes"),
        "names the setting: {error}"
    );
    assert!(
        error.contains("CertificateRequired") && error.contains("set storage.redis_client_cert"),
        "says a client certificate is required, and what to set: {error}"
    );

    let (a, b) = (
        tls_cluster_node(&pki, &cluster, |_| {}).await,
        tls_cluster_node(&pki, &cluster, |_| {}).await,
    );
    let token = a.token("p", "tls-cluster");
    let tv = a.create_ok(&token, "S1", "TV").await;
    let mut player = crate::players::connect_ok(&tv.endpoint).await;
    let refused = b
        .create(&token, serde_json::json!({"offerId": "S1", "sessionName": "Phone"}))
        .await;
    assert_eq!(refused.status().as_u16(), 409, "the limit holds across nodes");
    crate::helpers::granted(b.takeover(&token, "S1", "Phone", &tv.session_id).await).await;
    // As above: with no PONG answered, the order came through node a's inbox,
    // read over its own TLS connection to the cluster.
    let message = tokio::time::timeout(Duration::from_secs(2), player.next_skipping_pings(false))
        .await
        .expect("the order arrives within 2 s");
    assert_eq!(
        message,
        crate::players::Seen::Message(serde_json::json!({"action": "TAKE_OVER", "sessionName": "Phone"})),
    );
    player.expect_close(4001).await;
}

/// A node of the TLS cluster, with the CA and a client certificate, a session
/// limit of 1, and whatever `tune` adds.
async fn tls_cluster_node(
    pki: &Pki,
    cluster: &TlsCluster,
    tune: impl FnOnce(&mut Settings),
) -> crate::helpers::TestApp {
    let (seeds, ca, cert, key) = (
        cluster.seeds(),
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    spawn_app_with(move |s| {
        on_redis(s, "redis://127.0.0.1:1/".into());
        s.storage.redis_cluster_nodes = seeds;
        s.storage.redis_ca_file = ca;
        s.storage.redis_client_cert = cert;
        s.storage.redis_client_key = key;
        s.auth.session_secret = "store-tls-test-session-secret".into();
        s.publishers.default_session_limit = 1;
        tune(s);
    })
    .await
}

/// The failover of `redis_cluster.rs`, over TLS (replication and the cluster bus
/// too): a master of the TLS cluster is SIGKILLed during play; its replica is
/// promoted, admissions on its slots resume with the limit intact through both
/// nodes, and a player held on another master never notices.
#[tokio::test]
async fn a_tls_cluster_master_killed_during_play_is_replaced() {
    let pki = Pki::new("drisc");
    let mut cluster = TlsCluster::start_with(&pki, 1);
    let tuned = |s: &mut Settings| {
        s.limits.customer_burst = 1000;
        // Longer than a failover takes here, as in `redis_cluster.rs`: a longer
        // one is the stall case (`store_stall.rs`).
        s.liveness.pong_timeout = Duration::from_secs(8);
        s.liveness.reconnect_grace = Duration::from_secs(2);
    };
    let (a, b) = (
        tls_cluster_node(&pki, &cluster, tuned).await,
        tls_cluster_node(&pki, &cluster, tuned).await,
    );
    let tag = |c: &str| {
        let pool = drisc::domain::PoolKey::from_ids("p", c, "S1");
        format!("drisc:{{{}}}:", pool.shard())
    };
    let doomed = cluster.master_of(&tag("tfo0"));
    let other = (1..200)
        .map(|i| format!("tfo{i}"))
        .find(|c| cluster.master_of(&tag(c)) != doomed)
        .unwrap();
    let probe = (1..200)
        .map(|i| format!("tprobe{i}"))
        .find(|c| cluster.master_of(&tag(c)) == doomed)
        .unwrap();
    let (victim_token, other_token) = (a.token("p", "tfo0"), a.token("p", other.as_str()));
    let victim_tv = a.create_ok(&victim_token, "S1", "TV").await;
    let other_tv = b.create_ok(&other_token, "S1", "TV").await;
    let mut victim_player = crate::players::connect_ok(&victim_tv.endpoint).await;
    let other_player = crate::players::connect_ok(&other_tv.endpoint).await;
    victim_player.keep_alive_for(Duration::from_secs(1)).await;
    // The replicas have what the masters acknowledged.
    for port in cluster.ports.clone() {
        if cluster.cli(port, &["ROLE"]).starts_with("master") {
            cluster.cli(port, &["WAIT", "1", "1000"]);
        }
    }

    cluster.kill(doomed);
    let playing = other_player.keep_alive_in_background(Duration::from_secs(12));
    let victim_playing = victim_player.keep_alive_in_background(Duration::from_secs(10));
    // Admissions on the dead master's slots fail (each request answered) until
    // its replica is promoted, then resume. Generous: an election is slow on a
    // loaded machine.
    let probe_token = a.token("p", probe.as_str());
    let resumed = a
        .create_status_once_available(
            &probe_token,
            serde_json::json!({"offerId": "S1"}),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        resumed, 200,
        "refused only with 503 while the shard had no master, then admitted"
    );
    assert_ne!(cluster.master_of(&tag("tfo0")), doomed, "a replica took over");
    // The limit holds on the promoted replica: the held session still counts,
    // through either node (each once it answers other than 503: see
    // `create_status_once_available`), never granted.
    let full = serde_json::json!({"offerId": "S1"});
    for (node, token) in [(&a, &victim_token), (&b, &victim_token), (&b, &other_token)] {
        let status = node
            .create_status_once_available(token, full.clone(), Duration::from_secs(30))
            .await;
        assert_eq!(status, 409, "the held session still counts after the failover");
    }
    let (pings, _other_player) = playing.await.expect("the player on another master never noticed");
    assert!(pings >= 10, "pinged all along: {pings}");
    victim_playing
        .await
        .expect("the player on the dead master's shard played on");
}
