//! TLS to Redis (`rediss://`): the CA to trust and the optional client
//! certificate, read from the files `storage.redis_ca_file`,
//! `storage.redis_client_cert` and `storage.redis_client_key` name.
//!
//! [`certificates`] returns what the redis crate's clients take
//! (`Client::build_with_tls`, and a cluster client builder's `certs`), and
//! [`target`] hands them to either, so every client of a node — single Redis
//! or Cluster, the store's, the inbox's and the outbox's — trusts the same CA. The files were
//! already checked by `Settings::validate`; they are read again here because they
//! may have changed since, and an error names the setting.

use anyhow::{Context, bail};
use redis::{ClientTlsConfig, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use super::connection::RedisTarget;

use crate::config::StorageSettings;

/// The CA and client certificate the settings name, or `None` when they name
/// neither (a `rediss://` URL then trusts the system's roots).
pub fn certificates(storage: &StorageSettings) -> anyhow::Result<Option<TlsCertificates>> {
    install_crypto_provider();
    let read = |name: &str, path: &str| std::fs::read(path).with_context(|| format!("{name}: cannot read {path:?}"));
    let root_cert = match storage.redis_ca_file.as_str() {
        "" => None,
        path => Some(read("storage.redis_ca_file", path)?),
    };
    let client_tls = match (storage.redis_client_cert.as_str(), storage.redis_client_key.as_str()) {
        ("", "") => None,
        (cert, key) => Some(ClientTlsConfig {
            client_cert: read("storage.redis_client_cert", cert)?,
            client_key: read("storage.redis_client_key", key)?,
        }),
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// Where and how to connect to the single Redis of `storage.redis_url`, with the
/// certificates above when the URL is `rediss://`.
pub fn connection_info(storage: &StorageSettings) -> anyhow::Result<ConnectionInfo> {
    let url = storage.redis_url.as_str();
    let info = match certificates(storage)? {
        None => url.into_connection_info(),
        Some(certs) => redis::Client::build_with_tls(url, certs).map(|c| c.get_connection_info().clone()),
    };
    info.context("storage.redis_url or its TLS files (storage.redis_ca_file, redis_client_cert, redis_client_key)")
}

/// Where the sessions are kept: the Redis Cluster of
/// `storage.redis_cluster_nodes` when any are listed, else the single Redis of
/// `storage.redis_url`, either with the certificates above. On a cluster, the
/// certificates need `rediss://` seeds (every seed: the client connects to the
/// nodes the cluster names in the seeds' scheme); `rediss://` seeds without them
/// trust the system's roots.
pub fn target(storage: &StorageSettings) -> anyhow::Result<RedisTarget> {
    if storage.redis_cluster_nodes.is_empty() {
        return connection_info(storage).map(RedisTarget::Single);
    }
    let seeds = storage.redis_cluster_nodes.clone();
    let tls = seeds.iter().filter(|s| s.starts_with("rediss://")).count();
    if tls != 0 && tls != seeds.len() {
        bail!("storage.redis_cluster_nodes: either every seed is rediss:// (TLS) or none is");
    }
    let certs = certificates(storage)?;
    if certs.is_some() && tls == 0 {
        bail!(
            "storage.redis_ca_file, redis_client_cert and redis_client_key need rediss:// \
             seeds in storage.redis_cluster_nodes"
        );
    }
    Ok(RedisTarget::Cluster { seeds, certs })
}

/// What to do about a failed TLS handshake, read from the error's text (rustls
/// names the cause), or `None` when the error is not about certificates.
pub fn hint(error: &str) -> Option<&'static str> {
    if error.contains("CertificateRequired") {
        Some("the server requires a client certificate: set storage.redis_client_cert and storage.redis_client_key")
    } else if error.contains("NotValidForName") {
        Some("the server's certificate does not name the host of storage.redis_url (or of a cluster node)")
    } else if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        Some(
            "the server's certificate is not signed by a CA this node trusts: \
             set storage.redis_ca_file to the PEM file of the CA that signed it",
        )
    } else {
        None
    }
}

/// rustls needs one crypto provider for the process. ring is the one already in
/// the tree (reqwest, sqlx); installing it explicitly keeps a second provider
/// pulled in by some dependency from making the first handshake panic.
pub fn install_crypto_provider() {
    // An error only says a provider is installed already: nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn storage(url: &str) -> StorageSettings {
        let mut s = Settings::defaults().unwrap().storage;
        s.redis_url = url.into();
        s
    }

    #[test]
    fn a_rediss_url_without_files_trusts_the_system_roots() {
        let s = storage("rediss://127.0.0.1:6380/");
        assert!(certificates(&s).unwrap().is_none());
        let info = connection_info(&s).unwrap();
        assert!(matches!(info.addr(), redis::ConnectionAddr::TcpTls { port: 6380, .. }));
    }

    #[test]
    fn certificate_errors_say_which_setting_to_fix() {
        let unknown = hint("invalid peer certificate: UnknownIssuer").unwrap();
        assert!(unknown.contains("storage.redis_ca_file"), "{unknown}");
        let required = hint("received fatal alert: CertificateRequired").unwrap();
        assert!(required.contains("storage.redis_client_cert"), "{required}");
        assert!(hint("Connection refused (os error 111)").is_none());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let mut s = storage("rediss://127.0.0.1:6380/");
        s.redis_ca_file = "/nonexistent/ca.pem".into();
        let err = format!("{:#}", connection_info(&s).unwrap_err());
        assert!(
            err.contains("storage.redis_ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn cluster_seeds_take_the_certificates_only_over_rediss() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let mut s = storage("redis://127.0.0.1:6379/");
        s.redis_cluster_nodes = vec!["rediss://127.0.0.1:7000".into(), "rediss://127.0.0.1:7001".into()];
        s.redis_ca_file = ca.to_string_lossy().into_owned();
        assert!(matches!(
            target(&s).unwrap(),
            RedisTarget::Cluster { certs: Some(_), .. }
        ));
        s.redis_cluster_nodes[1] = "redis://127.0.0.1:7001".into();
        assert!(format!("{:#}", target(&s).unwrap_err()).contains("every seed"));
        s.redis_cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        assert!(format!("{:#}", target(&s).unwrap_err()).contains("rediss://"));
        s.redis_ca_file.clear();
        assert!(matches!(target(&s).unwrap(), RedisTarget::Cluster { certs: None, .. }));
    }

    #[test]
    fn certificates_need_a_rediss_url() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut s = storage("redis://127.0.0.1:6379/");
        s.redis_ca_file = ca.to_string_lossy().into_owned();
        let err = format!("{:#}", connection_info(&s).unwrap_err());
        assert!(err.contains("rediss://"), "{err}");
    }
}
