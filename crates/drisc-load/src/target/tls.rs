//! TLS for `https` targets and `wss` endpoints (rustls). Certificates are
//! verified against the bundled web roots; a staging server with a self-signed
//! certificate is trusted either by giving its CA (`--ca-file`, the safe way)
//! or by not verifying at all (`--insecure-skip-verify`, the blunt one).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How long a TLS handshake may take before it counts as failed.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TLS client configuration, cheap to clone (one per process, shared by its
/// players).
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl Tls {
    /// Web roots, plus the CA certificates (PEM) in `ca_file`; or no
    /// verification at all when `insecure`.
    pub fn new(ca_file: Option<&Path>, insecure: bool) -> Result<Self> {
        // ring is the provider the rest of the tree already builds; naming it
        // keeps the process-wide default out of the question.
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(path) = ca_file {
                let mut added = 0;
                for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("--ca-file {path:?}"))? {
                    let cert = cert.with_context(|| format!("--ca-file {path:?}: not PEM"))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("--ca-file {path:?}: not a CA certificate"))?;
                    added += 1;
                }
                anyhow::ensure!(added > 0, "--ca-file {path:?} holds no certificate");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The client side of a TLS handshake with `host` (a DNS name or an IP
    /// address) over `tcp`.
    pub async fn handshake(&self, tcp: TcpStream, host: &str) -> Result<TlsStream<TcpStream>> {
        let name =
            ServerName::try_from(host.to_owned()).with_context(|| format!("{host:?} is not a TLS server name"))?;
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .with_context(|| format!("TLS handshake with {host} timed out"))?;
        handshake.map_err(|e| {
            let untrusted = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
                .is_some_and(|e| matches!(e, tokio_rustls::rustls::Error::InvalidCertificate(_)));
            let error = anyhow::Error::new(e);
            if untrusted {
                error.context(format!(
                    "the TLS certificate of {host} is not trusted; for a staging server's own CA \
                     give --ca-file PATH (PEM), or --insecure-skip-verify to not verify at all"
                ))
            } else {
                error.context(format!("TLS handshake with {host}"))
            }
        })
    }
}

/// `--insecure-skip-verify`: any certificate is taken. The handshake's
/// signatures are still checked, so the connection is TLS, just not
/// authenticated.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
