//! drisc-load against an `https` server whose WebSocket endpoints are `wss://`:
//! the baseline's router behind a TLS listener on 127.0.0.1, with a CA and a
//! server certificate made here. The real program runs as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

mod common;
use common::{counters, drisc_load, stderr};

/// PINGs come this often, so a short hold sees several.
const PING_EVERY: Duration = Duration::from_millis(200);

/// A TLS listener for `axum::serve`: handshakes that fail (a client that does
/// not trust the certificate) are dropped, the next connection is taken.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A baseline server behind TLS, and the PEM file of the CA that signed its
/// certificate (as a staging server's own CA would).
struct StagingServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl StagingServer {
    async fn start() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "drisc-load test staging CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write the CA");

        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS config");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("local address");
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let app = drisc_load::baseline::router(PING_EVERY, true);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, dir, task }
    }

    fn target(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn results(&self) -> PathBuf {
        self.dir.path().join("results.json")
    }
}

impl Drop for StagingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A short `hold` of three players against the staging server, plus `extra` options.
async fn hold_three(server: &StagingServer, extra: &[&str]) -> Output {
    let target = server.target();
    let json = server.results();
    let mut args = vec![
        "hold",
        "--target",
        &target,
        "--no-admin",
        "--stages",
        "3",
        "--stage-hold",
        "1s",
        "--settle",
        "0s",
        "--leave-settle",
        "0s",
        "--connect-rate",
        "0",
        "--quiet",
        "--max-time",
        "50s",
        "--json",
        json.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    drisc_load(&args).await
}

#[tokio::test]
async fn an_https_target_whose_certificate_is_not_trusted_fails_with_a_certificate_error() {
    let server = StagingServer::start().await;

    let output = hold_three(&server, &[]).await;

    assert!(!output.status.success(), "the run should fail: {}", stderr(&output));
    let said = stderr(&output);
    assert!(said.contains("certificate of 127.0.0.1 is not trusted"), "{said}");
    assert!(said.contains("--ca-file"), "the error names the way out: {said}");
    assert!(!server.results().exists(), "no results for a run that never started");
}

#[tokio::test]
async fn with_the_staging_ca_players_get_ok_over_https_and_wss_and_answer_pings() {
    let server = StagingServer::start().await;
    let ca_file = server.ca_file();

    let output = hold_three(&server, &["--ca-file", ca_file.to_str().expect("UTF-8 path")]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    let c = counters(&server.results());
    assert_eq!(c["granted"], 3, "{c}");
    // The endpoints the server handed out were wss://: OK came over TLS.
    assert_eq!(c["ws_open"], 3, "{c}");
    assert_eq!(c["ok"], 3, "{c}");
    assert!(
        c["pong"].as_u64().is_some_and(|n| n > 0),
        "PINGs answered over wss: {c}"
    );
    assert_eq!(c["net_error"], 0, "{c}");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains(&format!("against {}", server.target())), "{summary}");
    assert!(
        !stderr(&output).contains("not on this machine"),
        "a loopback target gets no warning"
    );
}

#[tokio::test]
async fn insecure_skip_verify_takes_a_certificate_nobody_vouches_for() {
    let server = StagingServer::start().await;

    let output = hold_three(&server, &["--insecure-skip-verify"]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    let c = counters(&server.results());
    assert_eq!(c["ok"], 3, "{c}");
    assert_eq!(c["net_error"], 0, "{c}");
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_refused_before_any_connection() {
    let server = StagingServer::start().await;
    let not_pem = server.dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").expect("write");

    let output = hold_three(&server, &["--ca-file", not_pem.to_str().expect("UTF-8 path")]).await;

    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(said.contains("holds no certificate"), "{said}");
}
