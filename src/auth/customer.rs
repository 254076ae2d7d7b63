//! Verifying the customer tokens that players present (PROTOCOL 1.1).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;

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
    /// The checks every key shares; each key then narrows the algorithms.
    fn validation(&self) -> Validation {
        let mut validation = Validation::default();
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        // Identity providers put an aud in every token: it means nothing to a server
        // that was not told its own name, so it is checked only when configured.
        validation.validate_aud = !self.audience.is_empty();
        if !self.audience.is_empty() {
            validation.set_audience(&self.audience);
            required.push("aud");
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&self.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
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

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "customerId")]
    customer_id: Option<Value>,
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
}

/// The one claim read before the signature is checked: it picks the key.
#[derive(Deserialize)]
struct PublisherClaim {
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
}

/// Reads an id that may arrive as a JSON string or integer (`"4"` or `4`).
fn id_of(value: Option<&Value>, claim: &'static str) -> Result<String, AuthError> {
    let id = match value {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(AuthError::MissingClaim(claim)),
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(AuthError::MissingClaim(claim));
    }
    Ok(id)
}

/// A NumericDate claim (seconds, integer or not), as jsonwebtoken reads `exp`.
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

/// A key with the validation rules that go with it, built once.
pub(crate) struct PreparedKey {
    key: VerificationKey,
    validation: Validation,
}

impl PreparedKey {
    pub(crate) fn new(key: VerificationKey, base: &Validation) -> Self {
        // The key's own algorithms, never the token's: decode refuses any other.
        let mut validation = base.clone();
        validation.algorithms = key.algorithms.clone();
        Self { key, validation }
    }
}

/// Publishers' parsed keys kept at most: far above the publishers of one deployment.
const MAX_PARSED_KEYS: u64 = 10_000;

pub struct CustomerVerifier {
    server: ServerSource,
    rules: TokenRules,
    base: Validation,
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
        let base = rules.validation();
        let server = match server {
            ServerKeys::None => ServerSource::None,
            ServerKeys::Key(key) => ServerSource::Key(Arc::new(PreparedKey::new(key, &base))),
            ServerKeys::Jwks(uri) => ServerSource::Jwks(uri),
        };
        Ok(Self {
            server,
            jwks: JwksCache::new(jwks, base.clone())?,
            base,
            rules,
            parsed: moka::sync::Cache::new(MAX_PARSED_KEYS),
        })
    }

    /// Refuses an over-long token before anything reads it.
    fn check_length(&self, token: &str) -> Result<(), AuthError> {
        if token.len() > self.rules.max_token_bytes {
            return Err(AuthError::TooLong(self.rules.max_token_bytes));
        }
        Ok(())
    }

    /// The publisher a token claims to come from, read before its signature is
    /// checked: it only chooses which key verifies the token.
    ///
    /// Only the payload is decoded, and only `publisherId` is kept: the header and
    /// the other claims are read once, by [`Self::verify`], with the signature.
    pub fn claimed_publisher(&self, token: &str) -> Result<String, AuthError> {
        self.check_length(token)?;
        // `header.payload.signature`, split from the right as jsonwebtoken does.
        let (message, _signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (_header, payload) = message.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::Malformed)?;
        let claim: PublisherClaim = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        id_of(claim.publisher_id.as_ref(), "publisherId")
    }

    fn parsed_key(&self, material: &str) -> Result<Arc<PreparedKey>, AuthError> {
        if let Some(key) = self.parsed.get(material) {
            return Ok(key);
        }
        let key = VerificationKey::parse(material).map_err(|e| {
            tracing::warn!(error = %e, "a publisher's verification key cannot be read");
            AuthError::NoKey
        })?;
        let key = Arc::new(PreparedKey::new(key, &self.base));
        self.parsed.insert(material.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    async fn key_for(&self, token: &str, source: KeySource<'_>) -> Result<Arc<PreparedKey>, AuthError> {
        let jwks_uri = match (source, &self.server) {
            (KeySource::Key(material), _) => return self.parsed_key(material),
            (KeySource::Jwks(uri), _) => uri,
            (KeySource::Server, ServerSource::Jwks(uri)) => uri.as_str(),
            (KeySource::Server, ServerSource::Key(key)) => return Ok(Arc::clone(key)),
            (KeySource::Server, ServerSource::None) => return Err(AuthError::NoKey),
        };
        // The header only names the key; the key decides the algorithm.
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        self.jwks.key(jwks_uri, header.kid.as_deref()).await
    }

    /// Verifies `token` with the key `source` names and returns the customer it names.
    pub async fn verify(&self, token: &str, source: KeySource<'_>) -> Result<Customer, AuthError> {
        self.check_length(token)?;
        let prepared = self.key_for(token, source).await?;
        let data = decode::<Claims>(token, &prepared.key.key, &prepared.validation).map_err(|e| {
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
        self.check_lifetime(&data.claims)?;
        Ok(Customer {
            publisher_id: id_of(data.claims.publisher_id.as_ref(), "publisherId")?,
            customer_id: id_of(data.claims.customer_id.as_ref(), "customerId")?,
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
        assert_eq!(v.claimed_publisher(&token).unwrap(), "7");
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
        assert_eq!(v.claimed_publisher(&padded), Err(AuthError::TooLong(1024)));
        assert_eq!(
            v.verify(&padded, KeySource::Server).await,
            Err(AuthError::TooLong(1024))
        );
        // Not even a JWT: refused for its length, not its shape.
        assert_eq!(v.claimed_publisher(&"a".repeat(1025)), Err(AuthError::TooLong(1024)));
    }
}
