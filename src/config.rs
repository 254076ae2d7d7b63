//! Typed settings, loaded once and validated before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::auth::jwks::JwksUri;
use crate::auth::{JwksTimings, TokenRules};
use crate::domain::Timings;
use crate::domain::control::{PublisherPolicy, UnavailablePolicy};
use crate::domain::settings::UnknownOffers;

/// The documented defaults, built into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The highest `publishers.max_pools_per_customer`: a customer's pools are checked
/// one by one when it reaches the cap, so the cap must stay small.
const MAX_POOLS_PER_CUSTOMER: u32 = 1024;
/// Seed nodes a Redis Cluster may be given: the client learns the others from them.
const MAX_REDIS_CLUSTER_SEEDS: usize = 64;

/// The longest `server.drain_period`: a drain longer than this would only keep a
/// stopping node around, and supervisors kill what takes too long to stop.
const MAX_DRAIN_PERIOD: Duration = Duration::from_secs(300);

/// Published development keys: fine on a laptop, never in production.
pub const DEV_CUSTOMER_KEY: &str = "drisc-dev-customer-secret";
pub const DEV_ADMIN_KEY: &str = "drisc-dev-admin-key";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub cluster: ClusterSettings,
    pub auth: AuthSettings,
    pub liveness: LivenessSettings,
    pub publishers: PublisherSettings,
    pub websocket: WebSocketSettings,
    pub limits: LimitSettings,
    pub cors: CorsSettings,
    pub metrics: MetricsSettings,
    pub events: EventSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    pub web: WebSettings,
}

/// The longest `events.outbox_gather`.
const MAX_OUTBOX_GATHER: Duration = Duration::from_secs(1);

/// Session events: the queue behind every report, and the operators' live stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Events waiting to be written to the webhooks' outbox; past it, new ones
    /// are dropped and counted.
    pub outbox_queue: usize,
    /// Events written to the outbox in one transaction at most.
    pub outbox_batch: usize,
    /// The least time between the starts of two writes of the outbox writer,
    /// unless the batch fills first: under load fewer, larger commits; an event
    /// waits at most this long before its write begins.
    #[serde(with = "humantime_serde")]
    pub outbox_gather: Duration,
    /// Events a stream reader may fall behind by before it skips ahead.
    pub stream_buffer: usize,
    /// Concurrent `GET /admin/v1/events` streams.
    pub max_streams: usize,
    #[serde(with = "humantime_serde")]
    pub stream_keep_alive: Duration,
}

/// Delivery of session events to publishers' webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Allow webhook URLs on loopback, private, link-local or otherwise
    /// non-public addresses (checked at registration and at every connection).
    pub allow_private_targets: bool,
    /// Events waiting or dead-lettered per publisher, at most.
    pub outbox_cap: u64,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// Age after which a failing event is dead-lettered, whatever its attempts.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The wait after the first failure; doubled after each (with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// One request, from connect to the end of the answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight at once from this node.
    pub max_in_flight: u32,
    /// How often the outbox is looked at when nothing new arrived, and the
    /// webhooks re-read (changes made on other nodes).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How the delivery's thread is scheduled against admissions.
    pub delivery_priority: DeliveryPriority,
    /// A PEM file of CA certificates trusted for `https://` webhooks besides the
    /// web's roots (receivers behind a private CA); empty: the web's roots alone.
    pub ca_file: String,
}

/// `webhooks.delivery_priority`: `idle` (the delivery gets only the CPU that
/// admissions leave: none while the node is saturated, all of it otherwise) or
/// `normal` (an equal share: webhooks keep flowing on a node that is always
/// saturated, at the cost of admissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryPriority {
    Idle,
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub public_ws_url: String,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub connection_reserve: u64,
    pub max_requests_in_flight: usize,
    /// After SIGTERM, how long `/readyz` answers 503 while everything else goes on.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub sessions: SessionBackend,
    pub settings: SettingsBackend,
    pub data_dir: PathBuf,
    /// Keep the memory store's sessions in the settings database as they change.
    pub journal: bool,
    #[serde(with = "humantime_serde")]
    pub journal_interval: Duration,
    #[serde(serialize_with = "url_redacted")]
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster: when any are listed, sessions are kept in
    /// that cluster and `redis_url` is not used.
    #[serde(default, serialize_with = "urls_redacted")]
    pub redis_cluster_nodes: Vec<String>,
    #[serde(serialize_with = "url_redacted")]
    pub postgres_url: String,
    /// PEM file of the CA(s) a `rediss://` server's certificate must chain to
    /// (empty: the system's roots).
    pub redis_ca_file: String,
    /// PEM files of a client certificate (chain) and its key, for a Redis that
    /// requires them (`tls-auth-clients yes`). Both or neither.
    pub redis_client_cert: String,
    pub redis_client_key: String,
    /// `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`;
    /// empty: the URL's `sslmode` (or PostgreSQL's default, `prefer`).
    pub postgres_sslmode: String,
    /// PEM file of the CA(s) for `verify-ca`/`verify-full` (empty: the URL's
    /// `sslrootcert`, else the system's roots).
    pub postgres_ca_file: String,
    /// PEM files of a client certificate and its key (both or neither).
    pub postgres_client_cert: String,
    pub postgres_client_key: String,
}

/// The values `storage.postgres_sslmode` takes (libpq's names).
pub const POSTGRES_SSLMODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// Shown without the passwords the URLs may carry (logs, debug output).
impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("sessions", &self.sessions)
            .field("settings", &self.settings)
            .field("data_dir", &self.data_dir)
            .field("journal", &self.journal)
            .field("journal_interval", &self.journal_interval)
            .field("redis_url", &redact_url(&self.redis_url))
            .field(
                "redis_cluster_nodes",
                &self
                    .redis_cluster_nodes
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_client_cert", &self.redis_client_cert)
            .field("redis_client_key", &self.redis_client_key)
            .field("postgres_sslmode", &self.postgres_sslmode)
            .field("postgres_ca_file", &self.postgres_ca_file)
            .field("postgres_client_cert", &self.postgres_client_cert)
            .field("postgres_client_key", &self.postgres_client_key)
            .finish()
    }
}

/// What secrets are shown as. Also refused as a value (see
/// [`Settings::validate`]): a `drisc check-config` output pasted back as a
/// configuration must not run with it.
pub const REDACTED: &str = "[REDACTED]";
/// Inside a URL, where brackets would be percent-encoded.
const REDACTED_IN_URL: &str = "REDACTED";

/// A secret as `drisc check-config` prints it: the placeholder, or `""` when
/// none is set (which means something: the admin API is off, a session secret is
/// generated).
fn secret_redacted<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        serializer.serialize_str("")
    } else {
        serializer.serialize_str(REDACTED)
    }
}

fn url_redacted<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

fn urls_redacted<S: Serializer>(urls: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|u| redact_url(u)))
}

/// Checks a store's CA file, client certificate and key (`{prefix}_ca_file`,
/// `{prefix}_client_cert`, `{prefix}_client_key`): each one set is a readable PEM
/// file holding what its name says, and the certificate and key come together.
fn check_tls_files(prefix: &str, ca: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    let read = |suffix: &str, path: &str| -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("invalid configuration: {prefix}_{suffix}: cannot read {path:?}"))
    };
    let certificates = |suffix: &str, path: &str| check_certificates(&format!("{prefix}_{suffix}"), path);
    if !ca.is_empty() {
        certificates("ca_file", ca)?;
    }
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => {}
        (false, false) => {
            certificates("client_cert", cert)?;
            let pem = read("client_key", key)?;
            PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                anyhow::anyhow!("invalid configuration: {prefix}_client_key: {key:?} holds no PEM private key: {e}")
            })?;
        }
        _ => bail!(
            "invalid configuration: {prefix}_client_cert and {prefix}_client_key go together: set both or neither"
        ),
    }
    Ok(())
}

/// Checks that the file setting `name` names is readable PEM holding at least
/// one certificate.
fn check_certificates(name: &str, path: &str) -> anyhow::Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let pem = std::fs::read(path).with_context(|| format!("invalid configuration: {name}: cannot read {path:?}"))?;
    let found = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {name}: {path:?} is not PEM: {e}"))?;
    if found.is_empty() {
        bail!("invalid configuration: {name}: {path:?} holds no PEM certificate (BEGIN CERTIFICATE)");
    }
    Ok(())
}

/// Whether `url` carries the placeholder [`redact_url`] puts in place of a password.
fn has_redacted_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.password() == Some(REDACTED_IN_URL)
            || u.query_pairs().any(|(k, v)| {
                (k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")) && v == REDACTED_IN_URL
            })
    })
}

/// `url` with its password (and any `password=` query parameter, which PostgreSQL
/// URLs may use) replaced by `REDACTED`; a URL that cannot be read is hidden whole,
/// since where its password would be is unknown.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return if raw.is_empty() { String::new() } else { REDACTED.into() };
    };
    if url.password().is_some() && url.set_password(Some(REDACTED_IN_URL)).is_err() {
        return REDACTED.into();
    }
    let has_secret_param = url
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword"));
    if has_secret_param {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
                (
                    k.into_owned(),
                    if secret { REDACTED_IN_URL.into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBackend {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingsBackend {
    Sqlite,
    Postgres,
}

/// The longest `cluster.node_lost_after`: a record marked lost must be reported
/// long before a check would rewrite its deadline (`store::redis::scripts`).
pub const MAX_NODE_LOST_AFTER: Duration = Duration::from_secs(600);

/// The longest `cluster.purge_interval`: two rounds within the fifteen minutes a
/// customer's data outlives its last session in Redis (`store::redis::purge`).
pub const MAX_PURGE_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// How often one node walks Redis for the sessions that died there with no
    /// node to end them, and reports their end (`store::redis::purge`).
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// How long a session whose node stopped vouching for it waits, marked
    /// lost in Redis, for that node to come back and put it back, before its
    /// end (`node_lost`) is reported; a node cut off for longer puts none back.
    #[serde(with = "humantime_serde")]
    pub node_lost_after: Duration,
    pub on_store_unavailable: UnavailablePolicy,
    #[serde(with = "humantime_serde")]
    pub settings_cache_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(serialize_with = "secret_redacted")]
    pub customer_key: SecretString,
    pub customer_key_file: String,
    /// A JWKS (`file://`, `https://`, or `http://` on loopback) replacing customer_key.
    #[serde(serialize_with = "url_redacted")]
    pub jwks_uri: String,
    #[serde(with = "humantime_serde")]
    pub jwks_cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuer: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Zero: any lifetime.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    pub max_token_bytes: usize,
    #[serde(serialize_with = "secret_redacted")]
    pub admin_key: SecretString,
    #[serde(serialize_with = "secret_redacted")]
    pub session_secret: SecretString,
    #[serde(with = "humantime_serde")]
    pub session_token_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessSettings {
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherSettings {
    pub auto_create: bool,
    pub enabled: bool,
    pub takeover_enabled: bool,
    pub default_session_limit: u32,
    pub unknown_offers: UnknownOffers,
    pub max_pools_per_customer: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    pub max_message_bytes: usize,
    pub max_bad_messages: u32,
    pub message_burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub enabled: bool,
    pub customer_per_second: u32,
    pub customer_burst: u32,
    pub failed_auth_per_minute: u32,
    pub failed_auth_burst: u32,
    pub trusted_proxies: Vec<String>,
    pub max_keys: usize,
    #[serde(with = "humantime_serde")]
    pub forget_idle_every: Duration,
}

impl LimitSettings {
    /// The trusted proxies as networks; a bare address is a network of one.
    pub fn trusted_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "invalid configuration: limits.trusted_proxies has {p:?}, which is neither an IP address nor a CIDR network"
                        )
                    })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` without the admin key (behind a private network only).
    pub public: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    pub allowed_origins: Vec<String>,
}

/// Whether `/demo` (and its token minting) is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoMode {
    /// Only while customer tokens are verified with the published development key.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Serve the operator console at `/console` (it still needs the admin key).
    pub console: bool,
    pub demo: DemoMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

impl Settings {
    /// Defaults, then `file` if given, then `DRISC__SECTION__KEY` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::finish(Self::layered(file))
    }

    /// The sources of [`Settings::load`], in order; `drisc check-config` prints what they add up to.
    fn layered(file: Option<&Path>) -> config::ConfigBuilder<config::builder::DefaultState> {
        let mut builder = Self::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env = config::Environment::with_prefix("DRISC")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("cors.allowed_origins")
            .with_list_parse_key("limits.trusted_proxies")
            .with_list_parse_key("auth.audience")
            .with_list_parse_key("auth.issuer")
            .with_list_parse_key("storage.redis_cluster_nodes");
        builder.add_source(env)
    }

    /// The defaults alone, for tests and tools.
    pub fn defaults() -> anyhow::Result<Self> {
        Self::finish(Self::builder())
    }

    fn builder() -> config::ConfigBuilder<config::builder::DefaultState> {
        config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
    }

    fn finish(builder: config::ConfigBuilder<config::builder::DefaultState>) -> anyhow::Result<Self> {
        let settings: Settings = builder
            .build()
            .context("invalid configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot, naming the setting at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.liveness;
        for (name, value) in [
            ("liveness.ping_interval", l.ping_interval),
            ("liveness.pong_timeout", l.pong_timeout),
            ("liveness.reconnect_grace", l.reconnect_grace),
            ("liveness.connect_timeout", l.connect_timeout),
            ("liveness.sweep_interval", l.sweep_interval),
            ("auth.session_token_ttl", self.auth.session_token_ttl),
            ("cluster.refresh_interval", self.cluster.refresh_interval),
            ("cluster.tombstone_ttl", self.cluster.tombstone_ttl),
            ("cluster.purge_interval", self.cluster.purge_interval),
            ("cluster.node_lost_after", self.cluster.node_lost_after),
            ("storage.journal_interval", self.storage.journal_interval),
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.body_timeout", self.server.body_timeout),
            ("limits.forget_idle_every", self.limits.forget_idle_every),
            ("auth.jwks_cache_ttl", self.auth.jwks_cache_ttl),
        ] {
            if value.is_zero() {
                bail!("invalid configuration: {name} must be longer than 0");
            }
        }
        if l.pong_timeout <= l.ping_interval {
            bail!(
                "invalid configuration: liveness.pong_timeout ({:?}) must be longer than liveness.ping_interval ({:?}), \
                 or every player would time out between two PINGs",
                l.pong_timeout,
                l.ping_interval
            );
        }
        if self.storage.sessions == SessionBackend::Redis
            && self.cluster.refresh_interval * 2 > l.pong_timeout.saturating_sub(l.ping_interval)
        {
            bail!(
                "invalid configuration: cluster.refresh_interval ({:?}) must be at most half of \
                 liveness.pong_timeout - liveness.ping_interval, or PONGs could reach Redis too late",
                self.cluster.refresh_interval
            );
        }
        if self.cluster.purge_interval > MAX_PURGE_INTERVAL {
            bail!(
                "invalid configuration: cluster.purge_interval ({:?}) must be at most {MAX_PURGE_INTERVAL:?}: \
                 a customer's data in Redis outlives its last session by 15 minutes, and two purge rounds \
                 must fit in it, or a dead session could be dropped unreported",
                self.cluster.purge_interval
            );
        }
        if self.cluster.node_lost_after <= l.pong_timeout || self.cluster.node_lost_after > MAX_NODE_LOST_AFTER {
            bail!(
                "invalid configuration: cluster.node_lost_after ({:?}) must be longer than liveness.pong_timeout \
                 ({:?}), since a node is counted lost only once its liveness key ran out, and at most \
                 {MAX_NODE_LOST_AFTER:?}",
                self.cluster.node_lost_after,
                l.pong_timeout
            );
        }
        if self.storage.sessions == SessionBackend::Redis && !self.storage.redis_url.starts_with("redis") {
            bail!("invalid configuration: storage.redis_url must be a redis:// or rediss:// URL");
        }
        if self.storage.redis_cluster_nodes.len() > MAX_REDIS_CLUSTER_SEEDS {
            bail!(
                "invalid configuration: storage.redis_cluster_nodes lists {} nodes; list at most \
                 {MAX_REDIS_CLUSTER_SEEDS} (a few seeds are enough: the client learns the rest from them)",
                self.storage.redis_cluster_nodes.len()
            );
        }
        for node in &self.storage.redis_cluster_nodes {
            let parsed = url::Url::parse(node).ok();
            let ok = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() && matches!(u.path(), "" | "/" | "/0")
            });
            if !ok {
                bail!(
                    "invalid configuration: storage.redis_cluster_nodes: {:?} is not a redis:// or \
                     rediss:// URL of a node (host and port, database 0: a cluster has no other)",
                    redact_url(node)
                );
            }
        }
        if self.storage.settings == SettingsBackend::Postgres && !self.storage.postgres_url.starts_with("postgres") {
            bail!("invalid configuration: storage.postgres_url must be a postgres:// URL");
        }
        self.validate_store_tls()?;
        if !(1..=MAX_POOLS_PER_CUSTOMER).contains(&self.publishers.max_pools_per_customer) {
            bail!(
                "invalid configuration: publishers.max_pools_per_customer must be between 1 and {MAX_POOLS_PER_CUSTOMER}"
            );
        }
        if !(16..=16 * 1024 * 1024).contains(&self.server.max_body_bytes) {
            bail!("invalid configuration: server.max_body_bytes must be between 16 and 16777216");
        }
        if !(1024..=1024 * 1024).contains(&self.server.max_header_bytes) {
            bail!("invalid configuration: server.max_header_bytes must be between 1024 and 1048576");
        }
        if self.server.connection_reserve < 32 {
            bail!(
                "invalid configuration: server.connection_reserve must be at least 32 (the files the \
                 server itself needs: listener, database, logs)"
            );
        }
        if self.server.drain_period > MAX_DRAIN_PERIOD {
            bail!(
                "invalid configuration: server.drain_period must be at most {MAX_DRAIN_PERIOD:?} \
                 (a few times the load balancer's health-check interval is enough)"
            );
        }
        if self.server.max_requests_in_flight == 0 {
            bail!("invalid configuration: server.max_requests_in_flight must be at least 1");
        }
        if !(64..=1024 * 1024).contains(&self.websocket.max_message_bytes) {
            bail!("invalid configuration: websocket.max_message_bytes must be between 64 and 1048576");
        }
        let m = &self.limits;
        for (name, value) in [
            ("limits.customer_per_second", m.customer_per_second),
            ("limits.customer_burst", m.customer_burst),
            ("limits.failed_auth_per_minute", m.failed_auth_per_minute),
            ("limits.failed_auth_burst", m.failed_auth_burst),
            ("websocket.message_burst", self.websocket.message_burst),
        ] {
            if value == 0 {
                bail!(
                    "invalid configuration: {name} must be at least 1 (set limits.enabled = false to switch the limits off)"
                );
            }
        }
        if m.max_keys < 16 {
            bail!("invalid configuration: limits.max_keys must be at least 16");
        }
        m.trusted_networks()?;
        let url = &self.server.public_ws_url;
        if !url.is_empty() && !url.starts_with("ws://") && !url.starts_with("wss://") {
            bail!("invalid configuration: server.public_ws_url must start with ws:// or wss://");
        }
        if self.cors.allowed_origins.is_empty() {
            bail!("invalid configuration: cors.allowed_origins must list at least one origin (or \"*\")");
        }
        for origin in &self.cors.allowed_origins {
            if origin != "*" && origin.parse::<axum::http::HeaderValue>().is_err() {
                bail!("invalid configuration: cors.allowed_origins has an invalid origin {origin:?}");
            }
        }
        self.validate_auth()?;
        self.validate_events()?;
        if self.log.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            bail!(
                "invalid configuration: log.level {:?} is not a valid filter",
                self.log.level
            );
        }
        Ok(())
    }

    /// The stores' TLS files are read once here, so a wrong path or a file holding
    /// no certificate stops the start with the setting's name, not a handshake
    /// error on the first connection.
    fn validate_store_tls(&self) -> anyhow::Result<()> {
        let st = &self.storage;
        if self.storage.sessions == SessionBackend::Redis {
            let files = [&st.redis_ca_file, &st.redis_client_cert, &st.redis_client_key];
            let cluster = !st.redis_cluster_nodes.is_empty();
            let tls_seeds = st
                .redis_cluster_nodes
                .iter()
                .filter(|n| n.starts_with("rediss://"))
                .count();
            if cluster && tls_seeds != 0 && tls_seeds != st.redis_cluster_nodes.len() {
                bail!(
                    "invalid configuration: storage.redis_cluster_nodes: either every seed is rediss:// \
                     (TLS) or none is"
                );
            }
            let tls = if cluster {
                tls_seeds > 0
            } else {
                st.redis_url.starts_with("rediss://")
            };
            if files.iter().any(|f| !f.is_empty()) && !tls {
                bail!(
                    "invalid configuration: storage.redis_ca_file, redis_client_cert and redis_client_key \
                     apply to TLS only: storage.redis_url (or, for a cluster, storage.redis_cluster_nodes) \
                     must then be rediss://"
                );
            }
            check_tls_files(
                "storage.redis",
                &st.redis_ca_file,
                &st.redis_client_cert,
                &st.redis_client_key,
            )?;
        }
        if self.storage.settings == SettingsBackend::Postgres {
            if !st.postgres_sslmode.is_empty() && !POSTGRES_SSLMODES.contains(&st.postgres_sslmode.as_str()) {
                bail!(
                    "invalid configuration: storage.postgres_sslmode is {:?}; it must be one of {} (or empty: the URL's)",
                    st.postgres_sslmode,
                    POSTGRES_SSLMODES.join(", ")
                );
            }
            check_tls_files(
                "storage.postgres",
                &st.postgres_ca_file,
                &st.postgres_client_cert,
                &st.postgres_client_key,
            )?;
        }
        Ok(())
    }

    fn validate_events(&self) -> anyhow::Result<()> {
        let (e, w) = (&self.events, &self.webhooks);
        for (name, value, range) in [
            ("events.outbox_queue", e.outbox_queue, 1..=10_000_000),
            ("events.outbox_batch", e.outbox_batch, 1..=10_000),
            ("events.stream_buffer", e.stream_buffer, 1..=1_000_000),
            ("events.max_streams", e.max_streams, 0..=10_000),
            ("webhooks.max_in_flight", w.max_in_flight as usize, 1..=1_000),
            ("webhooks.max_attempts", w.max_attempts as usize, 1..=1_000),
            (
                "webhooks.outbox_cap",
                usize::try_from(w.outbox_cap).unwrap_or(usize::MAX),
                1..=100_000_000,
            ),
        ] {
            if !range.contains(&value) {
                bail!(
                    "invalid configuration: {name} must be between {} and {}",
                    range.start(),
                    range.end()
                );
            }
        }
        for (name, value) in [
            ("events.stream_keep_alive", e.stream_keep_alive),
            ("webhooks.max_age", w.max_age),
            ("webhooks.retry_base", w.retry_base),
            ("webhooks.retry_max", w.retry_max),
            ("webhooks.request_timeout", w.request_timeout),
            ("webhooks.poll_interval", w.poll_interval),
        ] {
            if value.is_zero() {
                bail!("invalid configuration: {name} must be longer than 0");
            }
        }
        if w.retry_max < w.retry_base {
            bail!("invalid configuration: webhooks.retry_max must be at least webhooks.retry_base");
        }
        // A crash loses what the queue holds: no longer than the session journal's
        // own window (storage.journal_interval's default).
        if e.outbox_gather > MAX_OUTBOX_GATHER {
            bail!("invalid configuration: events.outbox_gather must be at most {MAX_OUTBOX_GATHER:?}");
        }
        if !w.ca_file.is_empty() {
            check_certificates("webhooks.ca_file", &w.ca_file)?;
        }
        Ok(())
    }

    fn validate_auth(&self) -> anyhow::Result<()> {
        let a = &self.auth;
        for (name, value) in [
            ("auth.customer_key", a.customer_key.expose_secret()),
            ("auth.admin_key", a.admin_key.expose_secret()),
            ("auth.session_secret", a.session_secret.expose_secret()),
        ] {
            if value == REDACTED {
                bail!(
                    "invalid configuration: {name} is {REDACTED:?}, the placeholder `drisc check-config` \
                     prints in place of a secret: put the secret back (or set it in the environment)"
                );
            }
        }
        for url in &self.storage.redis_cluster_nodes {
            if url.as_str() == REDACTED || has_redacted_password(url) {
                bail!(
                    "invalid configuration: storage.redis_cluster_nodes holds the placeholder `drisc \
                     check-config` prints in place of a password: put the password back (or set it in \
                     the environment)"
                );
            }
        }
        for (name, url) in [
            ("storage.redis_url", &self.storage.redis_url),
            ("storage.postgres_url", &self.storage.postgres_url),
            ("auth.jwks_uri", &a.jwks_uri),
        ] {
            if url.as_str() == REDACTED || has_redacted_password(url) {
                bail!(
                    "invalid configuration: {name} holds the placeholder `drisc check-config` prints \
                     in place of a password: put the password back (or set it in the environment)"
                );
            }
        }
        if !a.jwks_uri.is_empty() {
            JwksUri::parse(&a.jwks_uri).map_err(|e| anyhow::anyhow!("invalid configuration: auth.jwks_uri: {e}"))?;
            // The development secret is the default: only a key the operator chose conflicts.
            let custom_key =
                !a.customer_key.expose_secret().trim().is_empty() && a.customer_key.expose_secret() != DEV_CUSTOMER_KEY;
            if custom_key || !a.customer_key_file.is_empty() {
                bail!(
                    "invalid configuration: auth.jwks_uri and auth.customer_key (or auth.customer_key_file) \
                     are alternatives: set only one"
                );
            }
        }
        if a.jwks_min_refresh < Duration::from_secs(1) {
            bail!(
                "invalid configuration: auth.jwks_min_refresh must be at least 1s, \
                 or unknown kids could make the server fetch the JWKS on every request"
            );
        }
        for (name, values) in [("auth.audience", &a.audience), ("auth.issuer", &a.issuer)] {
            if values.iter().any(|v| v.trim().is_empty()) {
                bail!("invalid configuration: {name} must not contain an empty value");
            }
        }
        if !(512..=64 * 1024).contains(&a.max_token_bytes) {
            bail!("invalid configuration: auth.max_token_bytes must be between 512 and 65536");
        }
        Ok(())
    }

    /// The settings in effect as a TOML configuration file (`drisc check-config`),
    /// secrets and passwords replaced by a placeholder the server refuses to start with.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let body = toml::to_string(self).context("cannot write the settings as TOML")?;
        Ok(format!(
            "# The settings in effect (drisc check-config): the defaults, then the\n\
             # configuration file, then DRISC__SECTION__KEY environment variables.\n\
             # Secrets and passwords are shown as {REDACTED:?} (\"{REDACTED_IN_URL}\" inside URLs):\n\
             # the server refuses to start with one of those; put the real value back, or\n\
             # set it in the environment, before using this as a configuration file.\n\n{body}"
        ))
    }

    pub fn timings(&self) -> Timings {
        Timings {
            ping_interval: self.liveness.ping_interval,
            pong_timeout: self.liveness.pong_timeout,
            reconnect_grace: self.liveness.reconnect_grace,
            connect_timeout: self.liveness.connect_timeout,
        }
    }

    /// Whether customer tokens are verified with the published development secret
    /// (no key of the operator's own, no key file, no JWKS): anyone can mint them.
    pub fn uses_dev_customer_key(&self) -> bool {
        let a = &self.auth;
        a.customer_key.expose_secret() == DEV_CUSTOMER_KEY && a.customer_key_file.is_empty() && a.jwks_uri.is_empty()
    }

    /// Whether `/demo` is served: `auto` only with the development customer key,
    /// since the demo is for a laptop, not for a server with real customers.
    pub fn demo_enabled(&self) -> bool {
        match self.web.demo {
            DemoMode::On => true,
            DemoMode::Off => false,
            DemoMode::Auto => self.uses_dev_customer_key(),
        }
    }

    /// The key verifying customer tokens server-wide, read from the file if one is named.
    pub fn customer_key(&self) -> anyhow::Result<Option<String>> {
        if !self.auth.customer_key_file.is_empty() {
            let text = std::fs::read_to_string(&self.auth.customer_key_file).with_context(|| {
                format!(
                    "invalid configuration: auth.customer_key_file {:?}",
                    self.auth.customer_key_file
                )
            })?;
            return Ok(Some(text));
        }
        if !self.auth.jwks_uri.is_empty() {
            return Ok(None);
        }
        let key = self.auth.customer_key.expose_secret();
        Ok(Some(key.to_owned()).filter(|k| !k.trim().is_empty()))
    }
}

// What each part of the server takes from its section of the settings: the
// conversions live here, beside the sections, so the parts need not know the
// configuration's shape.

impl From<&PublisherSettings> for PublisherPolicy {
    fn from(p: &PublisherSettings) -> Self {
        Self {
            auto_create: p.auto_create,
            enabled: p.enabled,
            takeover_enabled: p.takeover_enabled,
            default_session_limit: p.default_session_limit,
            unknown_offers: p.unknown_offers,
            max_pools_per_customer: p.max_pools_per_customer,
        }
    }
}

impl From<&AuthSettings> for TokenRules {
    fn from(auth: &AuthSettings) -> Self {
        Self {
            leeway_secs: auth.leeway.as_secs(),
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
            max_lifetime_secs: auth.max_token_lifetime.as_secs(),
            max_token_bytes: auth.max_token_bytes,
        }
    }
}

impl From<&AuthSettings> for JwksTimings {
    fn from(auth: &AuthSettings) -> Self {
        Self {
            cache_ttl: auth.jwks_cache_ttl,
            min_refresh: auth.jwks_min_refresh,
        }
    }
}

impl ServerSettings {
    /// The deadlines and caps of every connection; `max_connections` comes from
    /// the open-file limit, which only the running process knows.
    pub fn connection_limits(&self, max_connections: usize) -> crate::net::Limits {
        crate::net::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
            max_requests_in_flight: self.max_requests_in_flight,
            max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_load_and_validate() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.timings(), Timings::default());
        assert!(s.storage.journal);
        assert_eq!(s.storage.journal_interval, Duration::from_secs(1));
    }

    #[test]
    fn the_outbox_gather_defaults_to_200ms_takes_0_and_refuses_more_than_a_second_by_name() {
        let mut s = Settings::defaults().unwrap();
        assert_eq!(s.events.outbox_gather, Duration::from_millis(200));
        assert_eq!(s.events.outbox_batch, 4096);
        s.events.outbox_gather = Duration::ZERO;
        s.validate().expect("0: each batch is written as soon as it is read");
        s.events.outbox_gather = Duration::from_secs(1);
        s.validate().expect("1s");
        s.events.outbox_gather = Duration::from_millis(1001);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("events.outbox_gather"), "{err}");
        let builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .set_override("events.outbox_gather", "20ms")
            .unwrap();
        assert_eq!(
            Settings::finish(builder).unwrap().events.outbox_gather,
            Duration::from_millis(20)
        );
    }

    #[test]
    fn a_journal_interval_of_zero_is_refused_by_name() {
        let mut s = Settings::defaults().unwrap();
        s.storage.journal_interval = Duration::ZERO;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("storage.journal_interval"), "{err}");
    }

    #[test]
    fn node_lost_after_must_outlast_the_pong_timeout_and_stay_under_ten_minutes() {
        let mut s = Settings::defaults().unwrap();
        assert_eq!(s.cluster.node_lost_after, Duration::from_secs(120));
        for bad in [s.liveness.pong_timeout, MAX_NODE_LOST_AFTER + Duration::from_secs(1)] {
            s.cluster.node_lost_after = bad;
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("cluster.node_lost_after"), "{err}");
        }
        s.cluster.node_lost_after = MAX_NODE_LOST_AFTER;
        s.validate().unwrap();
    }

    #[test]
    fn unknown_offers_default_to_shared_and_accept_the_old_name() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.publishers.unknown_offers, UnknownOffers::Shared);
        assert_eq!(s.publishers.max_pools_per_customer, 16);
        let old = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .set_override("publishers.unknown_offers", "default")
            .unwrap();
        let s = Settings::finish(old).unwrap();
        assert_eq!(s.publishers.unknown_offers, UnknownOffers::Each);
    }

    #[test]
    fn the_demo_is_on_by_default_only_with_the_development_customer_key() {
        let mut s = Settings::defaults().unwrap();
        assert_eq!(s.web.demo, DemoMode::Auto);
        assert!(s.web.console);
        assert!(s.uses_dev_customer_key() && s.demo_enabled());
        s.auth.customer_key = "an operator's own".into();
        assert!(!s.uses_dev_customer_key() && !s.demo_enabled());
        s.web.demo = DemoMode::On;
        assert!(s.demo_enabled(), "on is on, whatever the key");
        let mut s = Settings::defaults().unwrap();
        s.auth.jwks_uri = "https://idp.example.com/jwks.json".into();
        assert!(!s.demo_enabled(), "a JWKS is not the development key");
        let mut s = Settings::defaults().unwrap();
        s.web.demo = DemoMode::Off;
        assert!(!s.demo_enabled());
    }

    #[test]
    fn a_demo_mode_that_does_not_exist_is_refused_by_name() {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .set_override("web.demo", "maybe")
            .unwrap();
        let err = format!("{:#}", Settings::finish(builder).unwrap_err());
        assert!(err.contains("maybe") && err.contains("demo"), "{err}");
    }

    #[test]
    fn a_cap_of_zero_pools_names_its_setting() {
        let mut s = Settings::defaults().unwrap();
        s.publishers.max_pools_per_customer = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("publishers.max_pools_per_customer"), "{err}");
    }

    #[test]
    fn redis_cluster_seeds_must_be_node_urls_and_are_printed_without_passwords() {
        let mut s = Settings::defaults().unwrap();
        assert!(s.storage.redis_cluster_nodes.is_empty(), "one Redis by default");
        s.storage.redis_cluster_nodes = vec![
            "redis://:cl-s3cret@10.0.0.5:7000".into(),
            "rediss://10.0.0.6:7000/".into(),
        ];
        s.validate().unwrap();
        let printed = format!("{s:#?}");
        assert!(
            !printed.contains("cl-s3cret") && printed.contains("10.0.0.6:7000"),
            "{printed}"
        );
        let toml = toml::to_string(&s).unwrap();
        assert!(!toml.contains("cl-s3cret") && toml.contains("10.0.0.5:7000"), "{toml}");
        for bad in [
            "10.0.0.5:7000",
            "http://10.0.0.5:7000",
            "redis://10.0.0.5:7000/3",
            "redis://:REDACTED@x:1",
        ] {
            s.storage.redis_cluster_nodes = vec![bad.into()];
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("storage.redis_cluster_nodes"), "{bad}: {err}");
        }
        s.storage.redis_cluster_nodes = vec!["redis://10.0.0.5:7000".into(); 65];
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn passwords_in_storage_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/"),
            "redis://:REDACTED@127.0.0.1:6379/"
        );
        let pg = redact_url("postgres://drisc:s3cret@db:5432/drisc?password=other&sslmode=require");
        assert!(!pg.contains("s3cret") && !pg.contains("other"), "{pg}");
        assert!(pg.contains("sslmode=require"), "{pg}");
        assert_eq!(
            redact_url("postgres://drisc@127.0.0.1:5432/drisc"),
            "postgres://drisc@127.0.0.1:5432/drisc"
        );
        assert_eq!(redact_url("not a url with a s3cret"), "[REDACTED]");
    }

    #[test]
    fn secrets_are_not_in_the_printed_settings() {
        let mut s = Settings::defaults().unwrap();
        s.auth.customer_key = "customer-key-s3cret".into();
        s.auth.admin_key = "admin-key-s3cret".into();
        s.auth.session_secret = "session-s3cret".into();
        s.storage.redis_url = "redis://user:redis-s3cret@127.0.0.1/".into();
        let printed = format!("{s:#?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn the_printed_toml_hides_secrets_behind_a_placeholder_the_server_refuses() {
        let mut s = Settings::defaults().unwrap();
        s.auth.customer_key = "customer-key-s3cret".into();
        s.auth.admin_key = "admin-key-s3cret".into();
        s.auth.session_secret = "session-s3cret".into();
        s.storage.redis_url = "redis://user:redis-s3cret@127.0.0.1/".into();
        s.storage.postgres_url = "postgres://drisc:pg-s3cret@db/drisc?sslpassword=ssl-s3cret".into();
        let printed = s.to_toml().unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        let table: toml::Table = toml::from_str(&printed).unwrap();
        assert_eq!(table["auth"]["admin_key"].as_str(), Some(REDACTED));
        let pasted_back = Settings::finish(
            config::Config::builder().add_source(config::File::from_str(&printed, config::FileFormat::Toml)),
        );
        let err = format!("{:#}", pasted_back.unwrap_err());
        assert!(
            err.contains("auth.customer_key") && err.contains("placeholder"),
            "{err}"
        );

        let mut s = Settings::defaults().unwrap();
        s.storage.redis_url = "redis://:hunter2@127.0.0.1/".into();
        s.storage.redis_url = redact_url(&s.storage.redis_url);
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("storage.redis_url") && err.contains("placeholder"),
            "{err}"
        );
    }

    #[test]
    fn the_printed_toml_without_secrets_loads_back_as_the_same_settings() {
        let mut s = Settings::defaults().unwrap();
        s.auth.customer_key = "".into();
        s.auth.admin_key = "".into();
        s.server.drain_period = Duration::from_millis(2500);
        s.server.host = "0.0.0.0".into();
        s.cors.allowed_origins = vec!["https://a.example".into(), "https://b.example".into()];
        s.limits.trusted_proxies = vec!["10.0.0.0/8".into()];
        let printed = s.to_toml().unwrap();
        let loaded = Settings::finish(
            config::Config::builder().add_source(config::File::from_str(&printed, config::FileFormat::Toml)),
        )
        .unwrap();
        assert_eq!(loaded.server.drain_period, Duration::from_millis(2500));
        assert_eq!(loaded.to_toml().unwrap(), printed);
    }

    #[test]
    fn a_drain_period_beyond_five_minutes_names_its_setting() {
        let mut s = Settings::defaults().unwrap();
        assert_eq!(s.server.drain_period, Duration::ZERO);
        s.server.drain_period = Duration::from_secs(301);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("server.drain_period"), "{err}");
    }

    #[test]
    fn a_jwks_uri_and_a_chosen_customer_key_are_exclusive() {
        let mut s = Settings::defaults().unwrap();
        s.auth.jwks_uri = "https://idp.example.com/.well-known/jwks.json".into();
        s.validate().expect("the development key gives way to the JWKS");
        assert_eq!(s.customer_key().unwrap(), None);
        s.auth.customer_key = "my-own-secret".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("auth.jwks_uri"), "{err}");
        s.auth.customer_key = "".into();
        s.auth.jwks_uri = "http://idp.example.com/jwks.json".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("auth.jwks_uri"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_setting() {
        let mut s = Settings::defaults().unwrap();
        s.liveness.pong_timeout = Duration::from_secs(5);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("liveness.pong_timeout"), "{err}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks_and_name_a_bad_entry() {
        let mut s = Settings::defaults().unwrap();
        assert!(s.limits.trusted_proxies.is_empty(), "no proxy is trusted by default");
        s.limits.trusted_proxies = vec!["127.0.0.1".into(), "10.0.0.0/8".into(), "::1".into()];
        assert_eq!(s.limits.trusted_networks().unwrap().len(), 3);
        s.limits.trusted_proxies.push("proxy.example".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("limits.trusted_proxies") && err.contains("proxy.example"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_rate_names_its_setting() {
        let mut s = Settings::defaults().unwrap();
        s.limits.customer_burst = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("limits.customer_burst"), "{err}");
    }
}
