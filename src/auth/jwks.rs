//! Keys published as a JWKS (RFC 7517), as identity providers publish them: read
//! from a file or fetched over HTTPS, cached, and chosen by the token's `kid`.
//!
//! A fetch is bounded in time ([`FETCH_TIMEOUT`]) and size ([`MAX_JWKS_BYTES`]). A
//! token naming a `kid` that no cached key has makes the server fetch again, at most
//! once per `min_refresh` per JWKS, so made-up kids cannot flood the provider. While
//! a JWKS cannot be fetched, the keys fetched last go on verifying tokens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::customer::{AuthError, PreparedKey};
use super::keys::VerificationKey;

/// The most one fetch of a JWKS may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS read; real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The longest JWKS URI accepted.
pub const MAX_URI_LEN: usize = 2048;

/// Where a JWKS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksUri {
    File(PathBuf),
    Http(reqwest::Url),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksUriError {
    #[error("must be at most {MAX_URI_LEN} bytes")]
    TooLong,
    #[error("is not a URL")]
    NotAUrl,
    #[error("must be https:// (http:// only to a loopback address), or file:// with an absolute path")]
    Scheme,
}

impl JwksUri {
    /// Reads `https://...`, `file:///absolute/path`, or `http://` to a loopback host:
    /// keys fetched in the clear from elsewhere could be swapped on the way.
    pub fn parse(text: &str) -> Result<Self, JwksUriError> {
        if text.len() > MAX_URI_LEN {
            return Err(JwksUriError::TooLong);
        }
        let url = reqwest::Url::parse(text.trim()).map_err(|_| JwksUriError::NotAUrl)?;
        match url.scheme() {
            "https" if url.host().is_some() => Ok(Self::Http(url)),
            "http" if is_loopback(&url) => Ok(Self::Http(url)),
            "file" => url.to_file_path().map(Self::File).map_err(|()| JwksUriError::Scheme),
            _ => Err(JwksUriError::Scheme),
        }
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The usable keys of one JWKS.
struct KeySet {
    by_kid: HashMap<String, Arc<PreparedKey>>,
    /// The key a token without `kid` may use: only when the set has exactly one.
    only: Option<Arc<PreparedKey>>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<PreparedKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => self.only.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

/// Reads a JWKS, keeping the keys that can verify signatures. One unusable key (an
/// encryption key, an unsupported curve) does not spoil the others.
fn parse_set(bytes: &[u8]) -> Result<KeySet, String> {
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut usable = Vec::new();
    for value in raw.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(error = %e, "a JWKS key of an unknown kind is skipped");
                continue;
            }
        };
        let key = match VerificationKey::from_jwk(&jwk) {
            Ok(key) => Arc::new(PreparedKey::new(key)),
            Err(e) => {
                tracing::debug!(kid = ?jwk.common.key_id, error = %e, "a JWKS key is skipped");
                continue;
            }
        };
        if let Some(kid) = jwk.common.key_id {
            by_kid.insert(kid, Arc::clone(&key));
        }
        usable.push(key);
    }
    if usable.is_empty() {
        return Err("the JWKS has no key that verifies signatures".into());
    }
    let only = (usable.len() == 1).then(|| usable.remove(0));
    Ok(KeySet { by_kid, only })
}

/// How long keys are trusted, and how often a JWKS may be fetched again.
#[derive(Debug, Clone, Copy)]
pub struct JwksTimings {
    pub cache_ttl: Duration,
    pub min_refresh: Duration,
}

struct Cached {
    set: Arc<KeySet>,
    fetched_at: Instant,
}

/// One JWKS: the keys fetched last, and the lock that lets one fetch run at a time.
struct Source {
    uri: JwksUri,
    /// Never held across an await.
    cached: RwLock<Option<Cached>>,
    /// When a fetch was last started, successful or not.
    fetching: Arc<Mutex<Option<Instant>>>,
}

impl Source {
    fn snapshot(&self) -> Option<(Arc<KeySet>, Instant)> {
        let cached = self.cached.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        cached.as_ref().map(|c| (Arc::clone(&c.set), c.fetched_at))
    }

    fn store(&self, set: KeySet) {
        let mut cached = self.cached.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *cached = Some(Cached {
            set: Arc::new(set),
            fetched_at: Instant::now(),
        });
    }
}

/// What fetching needs, shared with the fetch tasks.
struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    async fn read(&self, uri: &JwksUri) -> Result<Vec<u8>, String> {
        match uri {
            JwksUri::File(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
                let mut bytes = Vec::new();
                file.take(MAX_JWKS_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(bytes)
            }
            JwksUri::Http(url) => {
                let mut response = self.client.get(url.clone()).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_JWKS_BYTES {
                        break;
                    }
                }
                Ok(bytes)
            }
        }
    }

    /// Fetches into `source`, holding its fetch lock throughout. Run as a task of its
    /// own so that a request dropped mid-fetch (a client that went away) neither
    /// wastes the fetch nor leaves the lock to a fetch nobody finishes.
    async fn refresh(self: Arc<Self>, source: Arc<Source>, mut started: OwnedMutexGuard<Option<Instant>>) -> bool {
        *started = Some(Instant::now());
        let outcome = match tokio::time::timeout(FETCH_TIMEOUT, self.read(&source.uri)).await {
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(bytes)) if bytes.len() > MAX_JWKS_BYTES => Err(format!("larger than {MAX_JWKS_BYTES} bytes")),
            Ok(Ok(bytes)) => parse_set(&bytes),
        };
        match outcome {
            Ok(set) => {
                tracing::debug!(jwks = %source.uri.loggable(), keys = set.by_kid.len(), "JWKS fetched");
                source.store(set);
                true
            }
            Err(error) => {
                let keeping = source.snapshot().is_some();
                tracing::warn!(
                    jwks = %source.uri.loggable(),
                    %error,
                    keeping_cached_keys = keeping,
                    "a JWKS could not be fetched"
                );
                false
            }
        }
    }
}

impl JwksUri {
    /// The URI as it may be logged: without a password or query.
    fn loggable(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Http(url) => {
                let mut shown = url.clone();
                let _ = shown.set_password(None);
                shown.set_query(None);
                shown.to_string()
            }
        }
    }
}

/// Every JWKS in use (server-wide and per publisher), by URI.
pub struct JwksCache {
    timings: JwksTimings,
    fetcher: Arc<Fetcher>,
    sources: DashMap<String, Arc<Source>>,
}

impl JwksCache {
    pub fn new(timings: JwksTimings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // A JWKS is where it is said to be: no hop to another host (or to http).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("drisc/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            timings,
            fetcher: Arc::new(Fetcher { client }),
            sources: DashMap::new(),
        })
    }

    fn source(&self, uri: &str) -> Result<Arc<Source>, AuthError> {
        if let Some(source) = self.sources.get(uri) {
            return Ok(Arc::clone(&source));
        }
        // Checked when configured; a stored URI that no longer reads names no key.
        let parsed = JwksUri::parse(uri).map_err(|e| {
            tracing::warn!(error = %e, "a JWKS URI cannot be used");
            AuthError::NoKey
        })?;
        let source = Arc::new(Source {
            uri: parsed,
            cached: RwLock::new(None),
            fetching: Arc::new(Mutex::new(None)),
        });
        Ok(Arc::clone(self.sources.entry(uri.to_owned()).or_insert(source).value()))
    }

    fn may_fetch(&self, last: &Option<Instant>) -> bool {
        last.is_none_or(|at| at.elapsed() >= self.timings.min_refresh)
    }

    async fn run_refresh(&self, source: &Arc<Source>, guard: OwnedMutexGuard<Option<Instant>>) -> bool {
        let task = tokio::spawn(Arc::clone(&self.fetcher).refresh(Arc::clone(source), guard));
        task.await.unwrap_or(false)
    }

    /// The key of the JWKS at `uri` for a token whose header names `kid`.
    pub(crate) async fn key(&self, uri: &str, kid: Option<&str>) -> Result<Arc<PreparedKey>, AuthError> {
        let source = self.source(uri)?;
        if let Some((set, fetched_at)) = source.snapshot() {
            if let Some(key) = set.find(kid) {
                if fetched_at.elapsed() < self.timings.cache_ttl {
                    return Ok(key);
                }
                // Stale: one request refreshes while the others go on with the cached
                // keys. A key the refreshed set no longer has was withdrawn.
                let Ok(guard) = Arc::clone(&source.fetching).try_lock_owned() else {
                    return Ok(key);
                };
                if !self.may_fetch(&guard) || !self.run_refresh(&source, guard).await {
                    return Ok(key);
                }
                return source
                    .snapshot()
                    .and_then(|(set, _)| set.find(kid))
                    .ok_or(AuthError::UnknownKey);
            }
        }
        // No key for this kid: wait for a fetch in flight, or start one if allowed.
        let guard = Arc::clone(&source.fetching).lock_owned().await;
        if let Some(key) = source.snapshot().and_then(|(set, _)| set.find(kid)) {
            return Ok(key);
        }
        let fetched = self.may_fetch(&guard) && self.run_refresh(&source, guard).await;
        match source.snapshot() {
            Some((set, _)) => set.find(kid).ok_or(AuthError::UnknownKey),
            None if fetched => Err(AuthError::UnknownKey),
            None => Err(AuthError::KeysUnavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_uri_is_https_a_file_or_http_to_loopback() {
        assert!(matches!(
            JwksUri::parse("https://idp.example.com/jwks.json"),
            Ok(JwksUri::Http(_))
        ));
        assert_eq!(
            JwksUri::parse("file:///etc/drisc/jwks.json"),
            Ok(JwksUri::File("/etc/drisc/jwks.json".into()))
        );
        for loopback in ["http://127.0.0.1:9/jwks", "http://[::1]/jwks", "http://localhost/jwks"] {
            assert!(JwksUri::parse(loopback).is_ok(), "{loopback}");
        }
        for refused in [
            "http://idp.example.com/jwks.json",
            "http://10.0.0.1/jwks",
            "ftp://idp.example.com/jwks",
            "jwks.json",
        ] {
            assert!(JwksUri::parse(refused).is_err(), "{refused}");
        }
        assert_eq!(
            JwksUri::parse(&format!("https://a.example/{}", "x".repeat(MAX_URI_LEN))),
            Err(JwksUriError::TooLong)
        );
    }

    #[test]
    fn unusable_keys_are_skipped_and_a_lone_key_serves_tokens_without_kid() {
        let set = parse_set(
            br#"{"keys": [
                {"kty": "oct", "kid": "a", "k": "c2VjcmV0"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "weird", "kid": "w"}
            ]}"#,
        )
        .unwrap();
        assert!(set.find(Some("a")).is_some());
        assert!(set.find(Some("p521")).is_none() && set.find(Some("w")).is_none());
        assert!(set.find(None).is_some(), "one usable key: a token without kid uses it");
        assert!(parse_set(br#"{"keys": []}"#).is_err());
        assert!(parse_set(b"[1, 2]").is_err());
    }
}
