//! Verifying the customer tokens that players present (PROTOCOL 1.1).
//!
//! A token is read once ([`CustomerVerifier::read`]): its parts are located and its
//! claims parsed into one struct, whose `publisherId` picks the key. Then
//! [`CustomerVerifier::verify_read`] checks, in this order, the header's algorithm
//! against the key's, the signature, and the claims by the rules jsonwebtoken's
//! `decode` applies (the required claims, `exp` and `nbf` with the leeway, `iss`,
//! `aud`). jsonwebtoken's `decode` would parse the header twice and the claims twice
//! more, and key an HMAC afresh for every token; its rules are not public, so they are
//! written here, and `tests` hold them against `decode` itself, case by case.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use super::jwks::{JwksCache, JwksTimings};
use super::keys::VerificationKey;
use crate::domain::Customer;

/// Ids longer than this are refused rather than stored.
const MAX_ID_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header: send 'Authorization: Bearer <customer JWT>'")]
    Missing,
    #[error("the Authorization header must be 'Bearer <customer JWT>'")]
    NotBearer,
    #[error("the customer token is longer than the {0} bytes accepted (auth.max_token_bytes)")]
    TooLong(usize),
    #[error("the customer token is not a well-formed JWT")]
    Malformed,
    #[error("the customer token has expired (exp)")]
    Expired,
    #[error("the customer token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the customer token's aud is not an audience this server accepts (auth.audience)")]
    WrongAudience,
    #[error("the customer token's iss is not an issuer this server accepts (auth.issuer)")]
    WrongIssuer,
    #[error("the customer token lives longer than auth.max_token_lifetime allows (exp - iat)")]
    TooLongLived,
    #[error("the customer token's {0} claim is malformed")]
    BadClaim(&'static str),
    #[error("the customer token's signature or algorithm is not accepted")]
    BadSignature,
    #[error("the customer token must carry {0}")]
    MissingClaim(&'static str),
    #[error("no key is configured to verify this publisher's tokens")]
    NoKey,
    #[error("no key of the JWKS matches the customer token's kid")]
    UnknownKey,
    /// Not the token's fault: the JWKS that would verify it cannot be fetched.
    #[error("the keys verifying this publisher's tokens cannot be fetched; try again later")]
    KeysUnavailable,
}

/// What a customer token must satisfy besides its signature, from `[auth]`.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Accepted `aud` values; empty: not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: not checked.
    pub issuer: Vec<String>,
    /// Longest `exp - iat` (or `exp - now`); 0: any.
    pub max_lifetime_secs: u64,
    /// Longest token accepted, checked before anything is parsed.
    pub max_token_bytes: usize,
}

impl TokenRules {
    /// The claims' checks, as jsonwebtoken's `decode` makes them with `exp` required
    /// and validated, `nbf` validated, and `aud` and `iss` required and checked only
    /// when configured (identity providers put an `aud` in every token: it means
    /// nothing to a server that was not told its own name).
    fn check(&self, claims: &Claims, now: u64) -> Result<(), AuthError> {
        // jsonwebtoken gives up on a token whose `exp`, `nbf` or `sub` is a non-empty
        // array or object: its parser is left inside it (a JSON error, so malformed).
        if [&claims.exp, &claims.nbf, &claims.sub]
            .into_iter()
            .any(|v| is_nested(v.as_ref()))
        {
            return Err(AuthError::Malformed);
        }
        // Required claims first: one that is there but unreadable counts as missing.
        let NumericDate::At(exp) = NumericDate::of(claims.exp.as_ref()) else {
            return Err(AuthError::MissingClaim("exp"));
        };
        let audience = Names::of(claims.aud.as_ref());
        if !self.audience.is_empty() && !audience.is_read() {
            return Err(AuthError::MissingClaim("aud"));
        }
        let issuer = Names::of(claims.iss.as_ref());
        if !self.issuer.is_empty() && !issuer.is_read() {
            return Err(AuthError::MissingClaim("iss"));
        }
        let not_before = NumericDate::of(claims.nbf.as_ref());
        if matches!(not_before, NumericDate::Unreadable) {
            return Err(AuthError::BadClaim("nbf"));
        }
        if exp < now.saturating_sub(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if let NumericDate::At(nbf) = not_before
            && nbf > now.saturating_add(self.leeway_secs)
        {
            return Err(AuthError::NotYetValid);
        }
        if !self.issuer.is_empty() && !issuer.any_in(&self.issuer) {
            return Err(AuthError::WrongIssuer);
        }
        if !self.audience.is_empty() && !audience.any_in(&self.audience) {
            return Err(AuthError::WrongAudience);
        }
        Ok(())
    }
}

fn is_nested(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
        _ => false,
    }
}

/// A NumericDate claim (`exp`, `nbf`) as jsonwebtoken reads it: a non-negative
/// integer, or a non-negative finite number rounded to whole seconds; anything else
/// there (a string, a negative number, `null`) is unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumericDate {
    Absent,
    Unreadable,
    At(u64),
}

impl NumericDate {
    fn of(value: Option<&Value>) -> Self {
        let Some(value) = value else {
            return Self::Absent;
        };
        let Value::Number(n) = value else {
            return Self::Unreadable;
        };
        if let Some(seconds) = n.as_u64() {
            return Self::At(seconds);
        }
        match n.as_f64() {
            // A negative integer is read as neither: only floats are rounded.
            Some(f) if n.is_f64() && f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Self::At(f.round() as u64),
            _ => Self::Unreadable,
        }
    }
}

/// An `iss` or `aud` claim: one string or an array of strings (`null`: absent).
enum Names<'a> {
    Absent,
    Unreadable,
    One(&'a str),
    Many(&'a [Value]),
}

impl<'a> Names<'a> {
    fn of(value: Option<&'a Value>) -> Self {
        match value {
            None | Some(Value::Null) => Self::Absent,
            Some(Value::String(s)) => Self::One(s),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Self::Many(items),
            Some(_) => Self::Unreadable,
        }
    }

    fn is_read(&self) -> bool {
        matches!(self, Self::One(_) | Self::Many(_))
    }

    /// Whether one of the names is accepted (an empty array names none).
    fn any_in(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(name) => accepted.iter().any(|a| a == name),
            Self::Many(names) => names
                .iter()
                .filter_map(Value::as_str)
                .any(|name| accepted.iter().any(|a| a == name)),
            Self::Absent | Self::Unreadable => false,
        }
    }
}

/// Where the server-wide customer tokens' key comes from.
pub enum ServerKeys {
    None,
    Key(VerificationKey),
    /// The `auth.jwks_uri`.
    Jwks(String),
}

/// Which key verifies a publisher's tokens, from its settings.
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// The server-wide key or JWKS.
    Server,
    /// The publisher's own HMAC secret or PEM public key.
    Key(&'a str),
    /// The publisher's own JWKS.
    Jwks(&'a str),
}

/// Every claim read, parsed once. The ones jsonwebtoken's rules look at are all
/// declared (`sub` included, though no rule names a subject), so that a token
/// naming one of them twice is malformed, as `decode` finds it.
#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "customerId")]
    customer_id: Option<Value>,
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
    // `null` is kept (not read as absent): jsonwebtoken finds a null date unreadable.
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    iat: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    sub: Option<Value>,
}

/// A claim that is there, `null` included.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Reads an id that may arrive as a JSON string or integer (`"4"` or `4`).
fn id_of(value: Option<Value>, claim: &'static str) -> Result<String, AuthError> {
    let id = match value {
        // The parsed string is kept when it needs no trimming (the usual case).
        Some(Value::String(s)) if s.trim().len() == s.len() => s,
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(AuthError::MissingClaim(claim)),
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(AuthError::MissingClaim(claim));
    }
    Ok(id)
}

/// A NumericDate claim (seconds, integer or not), as the lifetime check reads it.
fn seconds_of(value: Option<&Value>, claim: &'static str) -> Result<Option<u64>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(AuthError::BadClaim(claim)),
        Some(_) => Err(AuthError::BadClaim(claim)),
    }
}

/// A customer token read but not yet verified: what [`CustomerVerifier::read`] found.
pub struct CustomerToken<'t> {
    /// `header.payload`: what the signature signs.
    message: &'t str,
    header: &'t str,
    signature: &'t str,
    claims: Claims,
    publisher: String,
}

impl CustomerToken<'_> {
    /// The publisher the token claims to come from, not yet verified: it only
    /// chooses which key verifies the token.
    pub fn publisher(&self) -> &str {
        &self.publisher
    }
}

/// An HMAC secret keyed once for each algorithm of its family: keying costs two
/// hash blocks, cloning a keyed state costs none.
struct HmacKeys {
    hs256: Hmac<Sha256>,
    hs384: Hmac<Sha384>,
    hs512: Hmac<Sha512>,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> Option<Self> {
        Some(Self {
            hs256: Hmac::new_from_slice(secret).ok()?,
            hs384: Hmac::new_from_slice(secret).ok()?,
            hs512: Hmac::new_from_slice(secret).ok()?,
        })
    }

    /// `None`: not an HMAC algorithm.
    fn matches(&self, algorithm: Algorithm, message: &[u8], signature: &[u8]) -> Option<bool> {
        // `verify_slice` compares in constant time.
        Some(match algorithm {
            Algorithm::HS256 => self.hs256.clone().chain_update(message).verify_slice(signature).is_ok(),
            Algorithm::HS384 => self.hs384.clone().chain_update(message).verify_slice(signature).is_ok(),
            Algorithm::HS512 => self.hs512.clone().chain_update(message).verify_slice(signature).is_ok(),
            _ => return None,
        })
    }
}

/// A key ready to verify: an HMAC secret keyed once, when it is parsed.
pub(crate) struct PreparedKey {
    key: VerificationKey,
    hmac: Option<HmacKeys>,
}

impl PreparedKey {
    pub(crate) fn new(key: VerificationKey) -> Self {
        let hmac = key.key.try_get_hmac_secret().ok().and_then(HmacKeys::new);
        Self { key, hmac }
    }

    /// Whether `signature` (base64url) signs `message` with this key and `algorithm`,
    /// which the caller has checked is one of the key's.
    fn check_signature(&self, algorithm: Algorithm, message: &str, signature: &str) -> Result<(), AuthError> {
        if let Some(hmac) = &self.hmac {
            let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
            if let Some(matches) = hmac.matches(algorithm, message.as_bytes(), &signature) {
                return if matches { Ok(()) } else { Err(AuthError::BadSignature) };
            }
        }
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.key.key, algorithm) {
            Ok(true) => Ok(()),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Base64(_)) => Err(AuthError::Malformed),
            Ok(false) | Err(_) => Err(AuthError::BadSignature),
        }
    }
}

/// The encoded headers of the HMAC algorithms as identity libraries write them
/// (`typ` first or last, or no `typ`), each with the algorithm it names and no `kid`.
fn common_headers() -> Vec<(String, Algorithm)> {
    let mut headers = Vec::new();
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
    ] {
        for json in [
            format!(r#"{{"typ":"JWT","alg":"{name}"}}"#),
            format!(r#"{{"alg":"{name}","typ":"JWT"}}"#),
            format!(r#"{{"alg":"{name}"}}"#),
        ] {
            headers.push((URL_SAFE_NO_PAD.encode(json), alg));
        }
    }
    headers
}

/// Publishers' parsed keys kept at most: far above the publishers of one deployment.
const MAX_PARSED_KEYS: u64 = 10_000;

pub struct CustomerVerifier {
    server: ServerSource,
    /// The headers nearly every token carries (`{"typ":"JWT","alg":"HS256"}` and
    /// its like), by their encoded text: recognized without base64 or JSON.
    common_headers: Vec<(String, Algorithm)>,
    rules: TokenRules,
    /// Parsed per-publisher keys, by the key text, so a PEM is parsed once.
    /// Bounded: a key replaced through the admin API leaves its old entry behind
    /// until it is evicted.
    parsed: moka::sync::Cache<String, Arc<PreparedKey>>,
    jwks: JwksCache,
}

enum ServerSource {
    None,
    Key(Arc<PreparedKey>),
    Jwks(String),
}

impl CustomerVerifier {
    /// Fails only if no HTTPS client can be built for fetching JWKS.
    pub fn new(server: ServerKeys, rules: TokenRules, jwks: JwksTimings) -> Result<Self, reqwest::Error> {
        let server = match server {
            ServerKeys::None => ServerSource::None,
            ServerKeys::Key(key) => ServerSource::Key(Arc::new(PreparedKey::new(key))),
            ServerKeys::Jwks(uri) => ServerSource::Jwks(uri),
        };
        Ok(Self {
            server,
            common_headers: common_headers(),
            jwks: JwksCache::new(jwks)?,
            rules,
            parsed: moka::sync::Cache::new(MAX_PARSED_KEYS),
        })
    }

    /// Reads a token once, before any key is chosen: its length, its three parts
    /// (split from the right, as jsonwebtoken splits them), its claims, and the
    /// publisher they name. Nothing read here is trusted until [`Self::verify_read`].
    pub fn read<'t>(&self, token: &'t str) -> Result<CustomerToken<'t>, AuthError> {
        if token.len() > self.rules.max_token_bytes {
            return Err(AuthError::TooLong(self.rules.max_token_bytes));
        }
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (header, payload) = message.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::Malformed)?;
        // A claims set is a JSON object (RFC 7519 7.2); serde would fill the struct
        // from an array too, by position.
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AuthError::Malformed);
        }
        let mut claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        let publisher = id_of(claims.publisher_id.take(), "publisherId")?;
        Ok(CustomerToken {
            message,
            header,
            signature,
            claims,
            publisher,
        })
    }

    fn parsed_key(&self, material: &str) -> Result<Arc<PreparedKey>, AuthError> {
        if let Some(key) = self.parsed.get(material) {
            return Ok(key);
        }
        let key = VerificationKey::parse(material).map_err(|e| {
            tracing::warn!(error = %e, "a publisher's verification key cannot be read");
            AuthError::NoKey
        })?;
        let key = Arc::new(PreparedKey::new(key));
        self.parsed.insert(material.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    async fn key_for(&self, kid: Option<&str>, source: KeySource<'_>) -> Result<Arc<PreparedKey>, AuthError> {
        let jwks_uri = match (source, &self.server) {
            (KeySource::Key(material), _) => return self.parsed_key(material),
            (KeySource::Jwks(uri), _) => uri,
            (KeySource::Server, ServerSource::Jwks(uri)) => uri.as_str(),
            (KeySource::Server, ServerSource::Key(key)) => return Ok(Arc::clone(key)),
            (KeySource::Server, ServerSource::None) => return Err(AuthError::NoKey),
        };
        // The header only names the key; the key decides the algorithm.
        self.jwks.key(jwks_uri, kid).await
    }

    /// Verifies `token` with the key `source` names and returns the customer it names.
    pub async fn verify(&self, token: &str, source: KeySource<'_>) -> Result<Customer, AuthError> {
        let token = self.read(token)?;
        self.verify_read(token, source).await
    }

    /// Verifies a token [`Self::read`] has read, with the key `source` names.
    pub async fn verify_read(&self, token: CustomerToken<'_>, source: KeySource<'_>) -> Result<Customer, AuthError> {
        let (alg, kid) = match self.common_headers.iter().find(|(text, _)| text == token.header) {
            Some((_, alg)) => (*alg, None),
            None => {
                let header = URL_SAFE_NO_PAD.decode(token.header).map_err(|_| AuthError::Malformed)?;
                let header: Header = serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
                (header.alg, header.kid)
            }
        };
        let prepared = self.key_for(kid.as_deref(), source).await?;
        // The key's own algorithms, never the token's choice alone: this is what
        // refuses `alg: none` and an RSA public key used as an HMAC secret.
        if !prepared.key.algorithms.contains(&alg) {
            return Err(AuthError::BadSignature);
        }
        prepared.check_signature(alg, token.message, token.signature)?;
        self.rules.check(&token.claims, jsonwebtoken::get_current_timestamp())?;
        self.check_lifetime(&token.claims)?;
        Ok(Customer {
            publisher_id: token.publisher,
            customer_id: id_of(token.claims.customer_id, "customerId")?,
        })
    }

    /// A token minted for years is as good as a password: refused when the operator
    /// bounds lifetimes. Without `iat`, what is left of it counts.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), AuthError> {
        let max = self.rules.max_lifetime_secs;
        if max == 0 {
            return Ok(());
        }
        let exp = seconds_of(claims.exp.as_ref(), "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        let start = seconds_of(claims.iat.as_ref(), "iat")?.unwrap_or_else(jsonwebtoken::get_current_timestamp);
        if exp.saturating_sub(start) > max {
            return Err(AuthError::TooLongLived);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "unit-test-secret";

    fn rules() -> TokenRules {
        TokenRules {
            leeway_secs: 5,
            audience: Vec::new(),
            issuer: Vec::new(),
            max_lifetime_secs: 0,
            max_token_bytes: 8192,
        }
    }

    fn timings() -> JwksTimings {
        JwksTimings {
            cache_ttl: Duration::from_secs(600),
            min_refresh: Duration::from_secs(30),
        }
    }

    fn verifier_with(rules: TokenRules) -> CustomerVerifier {
        let key = ServerKeys::Key(VerificationKey::parse(SECRET).unwrap());
        CustomerVerifier::new(key, rules, timings()).unwrap()
    }

    fn verifier() -> CustomerVerifier {
        verifier_with(rules())
    }

    fn sign(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn exp() -> u64 {
        now() + 600
    }

    /// A valid token's claims with `extra` merged in.
    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut claims = json!({"customerId": 1, "publisherId": 7, "exp": exp()});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    async fn check(v: &CustomerVerifier, claims: serde_json::Value) -> Result<Customer, AuthError> {
        v.verify(&sign(Algorithm::HS256, claims), KeySource::Server).await
    }

    #[tokio::test]
    async fn string_and_numeric_ids_name_the_same_customer() {
        let v = verifier();
        let a = check(&v, json!({"customerId": "4", "publisherId": "7", "exp": exp()}))
            .await
            .unwrap();
        let b = v
            .verify(
                &sign(
                    Algorithm::HS512,
                    json!({"customerId": 4, "publisherId": 7, "exp": exp()}),
                ),
                KeySource::Server,
            )
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.customer_id, "4");
    }

    #[tokio::test]
    async fn tokens_without_ids_or_exp_are_refused() {
        let v = verifier();
        let no_customer = json!({"publisherId": 7, "exp": exp()});
        assert_eq!(check(&v, no_customer).await, Err(AuthError::MissingClaim("customerId")));
        let no_exp = json!({"customerId": 1, "publisherId": 7});
        assert_eq!(check(&v, no_exp).await, Err(AuthError::MissingClaim("exp")));
        let float_id = claims(json!({"customerId": 1.5}));
        assert_eq!(check(&v, float_id).await, Err(AuthError::MissingClaim("customerId")));
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_after_the_leeway() {
        let v = verifier();
        assert!(
            check(&v, claims(json!({"exp": now() - 2}))).await.is_ok(),
            "inside the 5 s leeway"
        );
        assert_eq!(
            check(&v, claims(json!({"exp": now() - 60}))).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(format!(r#"{{"customerId":1,"publisherId":7,"exp":{}}}"#, exp()).as_bytes());
        let token = format!("{header}.{body}.");
        assert!(verifier().verify(&token, KeySource::Server).await.is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[tokio::test]
    async fn a_publisher_key_replaces_the_server_key() {
        let v = verifier();
        let token = sign(Algorithm::HS256, claims(json!({})));
        assert_eq!(
            v.verify(&token, KeySource::Key("another-secret")).await,
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.read(&token).unwrap().publisher(), "7");
    }

    #[tokio::test]
    async fn aud_is_ignored_unless_an_audience_is_configured() {
        let open = verifier();
        assert!(check(&open, claims(json!({"aud": "some-api"}))).await.is_ok());
        assert!(check(&open, claims(json!({"aud": ["a", "b"]}))).await.is_ok());

        let strict = verifier_with(TokenRules {
            audience: vec!["drisc".into(), "drisc-staging".into()],
            ..rules()
        });
        assert!(check(&strict, claims(json!({"aud": "drisc"}))).await.is_ok());
        assert!(
            check(&strict, claims(json!({"aud": ["other", "drisc-staging"]})))
                .await
                .is_ok()
        );
        assert_eq!(
            check(&strict, claims(json!({"aud": "other"}))).await,
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check(&strict, claims(json!({}))).await,
            Err(AuthError::MissingClaim("aud"))
        );
    }

    #[tokio::test]
    async fn iss_is_checked_only_when_configured() {
        assert!(check(&verifier(), claims(json!({"iss": "anyone"}))).await.is_ok());
        let strict = verifier_with(TokenRules {
            issuer: vec!["https://idp.example.com/".into()],
            ..rules()
        });
        assert!(
            check(&strict, claims(json!({"iss": "https://idp.example.com/"})))
                .await
                .is_ok()
        );
        assert_eq!(
            check(&strict, claims(json!({"iss": "https://evil.example.com/"}))).await,
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            check(&strict, claims(json!({}))).await,
            Err(AuthError::MissingClaim("iss"))
        );
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused_beyond_the_leeway() {
        let v = verifier();
        assert!(
            check(&v, claims(json!({"nbf": now() + 3}))).await.is_ok(),
            "inside the 5 s leeway"
        );
        assert_eq!(
            check(&v, claims(json!({"nbf": now() + 60}))).await,
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            check(&v, claims(json!({"nbf": "soon"}))).await,
            Err(AuthError::BadClaim("nbf"))
        );
    }

    #[tokio::test]
    async fn a_maximum_lifetime_bounds_exp_from_iat_or_from_now() {
        let v = verifier_with(TokenRules {
            max_lifetime_secs: 3600,
            ..rules()
        });
        let n = now();
        assert!(check(&v, claims(json!({"iat": n, "exp": n + 3600}))).await.is_ok());
        assert_eq!(
            check(&v, claims(json!({"iat": n, "exp": n + 3601}))).await,
            Err(AuthError::TooLongLived)
        );
        // An old iat counts: the token was minted for longer than allowed.
        assert_eq!(
            check(&v, claims(json!({"iat": n - 7200, "exp": n + 60}))).await,
            Err(AuthError::TooLongLived)
        );
        assert!(check(&v, claims(json!({"exp": n + 600}))).await.is_ok());
        assert_eq!(
            check(&v, claims(json!({"exp": n + 86_400}))).await,
            Err(AuthError::TooLongLived)
        );
        assert!(
            check(&verifier(), claims(json!({"exp": n + 86_400 * 365})))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_before_it_is_read() {
        let v = verifier_with(TokenRules {
            max_token_bytes: 1024,
            ..rules()
        });
        let padded = sign(Algorithm::HS256, claims(json!({"pad": "x".repeat(2000)})));
        assert_eq!(v.read(&padded).err(), Some(AuthError::TooLong(1024)));
        assert_eq!(
            v.verify(&padded, KeySource::Server).await,
            Err(AuthError::TooLong(1024))
        );
        // Not even a JWT: refused for its length, not its shape.
        assert_eq!(v.read(&"a".repeat(1025)).err(), Some(AuthError::TooLong(1024)));
    }

    /// The verdict of jsonwebtoken's `decode` on a token, with the validation the
    /// verifier used before it read tokens itself, its errors named as it named them.
    fn decode_verdict(token: &str, rules: &TokenRules) -> Result<(), AuthError> {
        use jsonwebtoken::{DecodingKey, Validation, decode};
        let mut validation = Validation::default();
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = rules.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        validation.validate_aud = !rules.audience.is_empty();
        if !rules.audience.is_empty() {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        if !rules.issuer.is_empty() {
            validation.set_issuer(&rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<serde_json::Value>(token, &DecodingKey::from_secret(SECRET.as_bytes()), &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind::*;
                match e.kind() {
                    ExpiredSignature => AuthError::Expired,
                    ImmatureSignature => AuthError::NotYetValid,
                    InvalidAudience => AuthError::WrongAudience,
                    InvalidIssuer => AuthError::WrongIssuer,
                    MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
                        "aud" => "aud",
                        "iss" => "iss",
                        _ => "exp",
                    }),
                    InvalidClaimFormat(claim) => AuthError::BadClaim(match claim.as_str() {
                        "nbf" => "nbf",
                        _ => "exp",
                    }),
                    InvalidToken | Base64(_) | Json(_) | Utf8(_) => AuthError::Malformed,
                    _ => AuthError::BadSignature,
                }
            })?;
        id_of(data.claims.get("publisherId").cloned(), "publisherId")?;
        id_of(data.claims.get("customerId").cloned(), "customerId")?;
        Ok(())
    }

    /// `header.payload.signature` over raw JSON, so that a claim can be named twice.
    fn sign_raw(header: &str, payload: &str, alg: Algorithm) -> String {
        let message = format!("{}.{}", base64_url(header.as_bytes()), base64_url(payload.as_bytes()));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
        format!("{message}.{signature}")
    }

    #[tokio::test]
    async fn the_claims_are_judged_as_jsonwebtoken_decode_judges_them() {
        let n = now();
        let nf = n as f64;
        // One claim changed (or removed, with null as the marker) at a time, so that at
        // most one required claim is missing: decode names the first of several missing
        // in a random order.
        let changes: Vec<(&str, serde_json::Value)> = vec![
            ("exp", json!(n + 600)),
            ("exp", json!(n - 2)),
            ("exp", json!(n - 60)),
            ("exp", json!(nf - 5.4)),
            ("exp", json!(nf - 5.6)),
            ("exp", json!(nf + 600.5)),
            ("exp", json!(-1)),
            ("exp", json!("soon")),
            ("exp", json!(null)),
            ("exp", json!(1e30)),
            ("exp", json!(true)),
            ("exp", json!([n + 600])),
            ("exp", json!([])),
            ("exp", json!({"at": n})),
            ("exp", json!({})),
            ("nbf", json!(n + 3)),
            ("nbf", json!(n + 60)),
            ("nbf", json!(nf + 5.4)),
            ("nbf", json!(nf + 5.6)),
            ("nbf", json!(n - 600)),
            ("nbf", json!(-5)),
            ("nbf", json!("soon")),
            ("nbf", json!(null)),
            ("nbf", json!([1])),
            ("nbf", json!([])),
            ("nbf", json!({"a": [1]})),
            ("aud", json!("drisc")),
            ("aud", json!("other")),
            ("aud", json!(["other", "drisc"])),
            ("aud", json!(["other"])),
            ("aud", json!([])),
            ("aud", json!(["drisc", 5])),
            ("aud", json!(5)),
            ("aud", json!(null)),
            ("aud", json!({"drisc": true})),
            ("iss", json!("https://idp.example.com/")),
            ("iss", json!("https://evil.example.com/")),
            ("iss", json!(["https://evil.example.com/", "https://idp.example.com/"])),
            ("iss", json!([])),
            ("iss", json!(7)),
            ("iss", json!(null)),
            ("sub", json!("someone")),
            ("sub", json!(5)),
            ("sub", json!(["a", 1])),
            ("sub", json!({"a": 1})),
            ("iss", json!([{"a": 1}])),
            ("aud", json!([["drisc"]])),
            ("iat", json!("yesterday")),
            ("customerId", json!(" 42 ")),
            ("customerId", json!(-3)),
            ("customerId", json!("")),
            ("customerId", json!(null)),
            ("publisherId", json!(null)),
        ];
        let rule_sets = [
            rules(),
            TokenRules {
                audience: vec!["drisc".into(), "drisc-staging".into()],
                ..rules()
            },
            TokenRules {
                issuer: vec!["https://idp.example.com/".into()],
                ..rules()
            },
            TokenRules {
                audience: vec!["drisc".into()],
                issuer: vec!["https://idp.example.com/".into()],
                ..rules()
            },
        ];
        let base = json!({
            "customerId": 1, "publisherId": 7, "exp": n + 600,
            "aud": "drisc", "iss": "https://idp.example.com/",
        });
        let mut differ = Vec::new();
        for rules in &rule_sets {
            let v = verifier_with(rules.clone());
            for (claim, value) in &changes {
                for remove in [false, true] {
                    let mut claims = base.clone();
                    if remove {
                        claims.as_object_mut().unwrap().remove(*claim);
                    } else {
                        claims[*claim] = value.clone();
                    }
                    let token = sign(Algorithm::HS256, claims.clone());
                    let ours = v.verify(&token, KeySource::Server).await.map(|_| ());
                    let theirs = decode_verdict(&token, rules);
                    if ours != theirs {
                        differ.push(format!("{claims} with {rules:?}: {ours:?}, decode {theirs:?}"));
                    }
                }
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    #[tokio::test]
    async fn headers_signatures_and_shapes_are_judged_as_jsonwebtoken_decode_judges_them() {
        let v = verifier();
        let payload = format!(r#"{{"customerId":1,"publisherId":7,"exp":{}}}"#, exp());
        let good = sign_raw(r#"{"typ":"JWT","alg":"HS256"}"#, &payload, Algorithm::HS256);
        let (message, signature) = good.rsplit_once('.').unwrap();
        let other_key = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(b"another"),
            Algorithm::HS256,
        )
        .unwrap();
        let tokens = vec![
            good.clone(),
            sign_raw(r#"{"alg":"HS384"}"#, &payload, Algorithm::HS384),
            sign_raw(r#"{"alg":"HS512","kid":"k1","cty":"x"}"#, &payload, Algorithm::HS512),
            // The header says one algorithm, the signature is another's.
            sign_raw(r#"{"alg":"HS512"}"#, &payload, Algorithm::HS256),
            sign_raw(r#"{"alg":"RS256"}"#, &payload, Algorithm::HS256),
            sign_raw(r#"{"alg":"none"}"#, &payload, Algorithm::HS256),
            sign_raw(r#"{"alg":"XX1"}"#, &payload, Algorithm::HS256),
            sign_raw(r#"{"typ":"JWT"}"#, &payload, Algorithm::HS256),
            sign_raw(r#"{"alg":"HS256","kid":5}"#, &payload, Algorithm::HS256),
            sign_raw("not json", &payload, Algorithm::HS256),
            // A claim named twice.
            sign_raw(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"customerId":1,"publisherId":7,"exp":{0},"exp":{0}}}"#, exp()),
                Algorithm::HS256,
            ),
            sign_raw(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"customerId":1,"publisherId":7,"exp":{},"sub":"a","sub":"b"}}"#,
                    exp()
                ),
                Algorithm::HS256,
            ),
            // Whitespace around the claims, and unknown claims.
            sign_raw(
                r#"{"alg":"HS256"}"#,
                &format!(
                    " \n{{\"customerId\":1,\"publisherId\":7,\"exp\":{},\"x\":[1,{{}}]}} ",
                    exp()
                ),
                Algorithm::HS256,
            ),
            format!("{message}.{other_key}"),
            format!("{message}.{signature}x"),
            format!("{message}.!!!"),
            format!("{message}."),
            format!("{message}.{signature}.{signature}"),
            message.to_owned(),
            format!("x.{good}"),
        ];
        for token in tokens {
            let ours = v.verify(&token, KeySource::Server).await.map(|_| ());
            assert_eq!(ours, decode_verdict(&token, &rules()), "{token}");
        }
    }

    #[tokio::test]
    async fn claims_that_are_not_an_object_are_malformed() {
        let v = verifier();
        let token = sign_raw(r#"{"alg":"HS256"}"#, &format!(r#"[1, 7, {}]"#, exp()), Algorithm::HS256);
        assert_eq!(v.read(&token).err(), Some(AuthError::Malformed));
        let token = sign_raw(r#"{"alg":"HS256"}"#, "7", Algorithm::HS256);
        assert_eq!(v.read(&token).err(), Some(AuthError::Malformed));
    }

    #[tokio::test]
    async fn a_token_is_read_once_and_verified_with_the_key_its_publisher_picks() {
        let v = verifier();
        let token = sign(Algorithm::HS256, claims(json!({"publisherId": " p1 "})));
        let read = v.read(&token).unwrap();
        assert_eq!(read.publisher(), "p1");
        let customer = v.verify_read(read, KeySource::Key(SECRET)).await.unwrap();
        assert_eq!(
            (customer.publisher_id.as_str(), customer.customer_id.as_str()),
            ("p1", "1")
        );
        let read = v.read(&token).unwrap();
        assert_eq!(
            v.verify_read(read, KeySource::Key("other")).await,
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn a_common_header_names_what_parsing_it_finds() {
        for (text, alg) in common_headers() {
            let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&text).unwrap()).unwrap();
            assert_eq!((header.alg, header.kid), (alg, None), "{text}");
        }
    }
}
