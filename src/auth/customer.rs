//! Verifying the customer tokens that players present (PROTOCOL 1.1).

use std::sync::Arc;

use dashmap::DashMap;
use jsonwebtoken::{Validation, dangerous::insecure_decode, decode};
use serde::Deserialize;
use serde_json::Value;

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
    #[error("the customer token is not a well-formed JWT")]
    Malformed,
    #[error("the customer token has expired")]
    Expired,
    #[error("the customer token's signature or algorithm is not accepted")]
    BadSignature,
    #[error("the customer token must carry {0}")]
    MissingClaim(&'static str),
    #[error("no key is configured to verify this publisher's tokens")]
    NoKey,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "customerId")]
    customer_id: Option<Value>,
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

/// A key with the validation rules that go with it, built once.
struct PreparedKey {
    key: VerificationKey,
    validation: Validation,
}

impl PreparedKey {
    fn new(key: VerificationKey, leeway_secs: u64) -> Self {
        // The key's own algorithms, never the token's: decode refuses any other.
        let mut validation = Validation::new(key.algorithms[0]);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp"]);
        Self { key, validation }
    }
}

pub struct CustomerVerifier {
    server_key: Option<Arc<PreparedKey>>,
    leeway_secs: u64,
    /// Parsed per-publisher keys, by the key text, so a PEM is parsed once.
    parsed: DashMap<String, Arc<PreparedKey>>,
}

impl CustomerVerifier {
    pub fn new(server_key: Option<VerificationKey>, leeway_secs: u64) -> Self {
        Self {
            server_key: server_key.map(|k| Arc::new(PreparedKey::new(k, leeway_secs))),
            leeway_secs,
            parsed: DashMap::new(),
        }
    }

    /// The publisher a token claims to come from, read before its signature is
    /// checked: it only chooses which key verifies the token.
    pub fn claimed_publisher(token: &str) -> Result<String, AuthError> {
        let data = insecure_decode::<Claims>(token).map_err(|_| AuthError::Malformed)?;
        id_of(data.claims.publisher_id.as_ref(), "publisherId")
    }

    fn key_for(&self, publisher_key: Option<&str>) -> Result<Arc<PreparedKey>, AuthError> {
        let Some(material) = publisher_key else {
            return self.server_key.clone().ok_or(AuthError::NoKey);
        };
        if let Some(key) = self.parsed.get(material) {
            return Ok(Arc::clone(&key));
        }
        let key = VerificationKey::parse(material).map_err(|e| {
            tracing::warn!(error = %e, "a publisher's verification key cannot be read");
            AuthError::NoKey
        })?;
        let key = Arc::new(PreparedKey::new(key, self.leeway_secs));
        self.parsed.insert(material.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    /// Verifies `token` with the publisher's key (or the server-wide key when the
    /// publisher has none) and returns the customer it names.
    pub fn verify(&self, token: &str, publisher_key: Option<&str>) -> Result<Customer, AuthError> {
        let prepared = self.key_for(publisher_key)?;
        let data = decode::<Claims>(token, &prepared.key.key, &prepared.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => AuthError::Expired,
                MissingRequiredClaim(_) => AuthError::MissingClaim("exp"),
                InvalidToken | Base64(_) | Json(_) | Utf8(_) => AuthError::Malformed,
                _ => AuthError::BadSignature,
            }
        })?;
        Ok(Customer {
            publisher_id: id_of(data.claims.publisher_id.as_ref(), "publisherId")?,
            customer_id: id_of(data.claims.customer_id.as_ref(), "customerId")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "unit-test-secret";

    fn verifier() -> CustomerVerifier {
        CustomerVerifier::new(Some(VerificationKey::parse(SECRET).unwrap()), 5)
    }

    fn sign(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn exp() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn string_and_numeric_ids_name_the_same_customer() {
        let v = verifier();
        let a = v
            .verify(
                &sign(
                    Algorithm::HS256,
                    json!({"customerId": "4", "publisherId": "7", "exp": exp()}),
                ),
                None,
            )
            .unwrap();
        let b = v
            .verify(
                &sign(
                    Algorithm::HS512,
                    json!({"customerId": 4, "publisherId": 7, "exp": exp()}),
                ),
                None,
            )
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.customer_id, "4");
    }

    #[test]
    fn tokens_without_ids_or_exp_are_refused() {
        let v = verifier();
        let no_customer = sign(Algorithm::HS256, json!({"publisherId": 7, "exp": exp()}));
        assert_eq!(v.verify(&no_customer, None), Err(AuthError::MissingClaim("customerId")));
        let no_exp = sign(Algorithm::HS256, json!({"customerId": 1, "publisherId": 7}));
        assert_eq!(v.verify(&no_exp, None), Err(AuthError::MissingClaim("exp")));
        let float_id = sign(
            Algorithm::HS256,
            json!({"customerId": 1.5, "publisherId": 7, "exp": exp()}),
        );
        assert_eq!(v.verify(&float_id, None), Err(AuthError::MissingClaim("customerId")));
    }

    #[test]
    fn expired_tokens_are_refused_after_the_leeway() {
        let v = verifier();
        let now = jsonwebtoken::get_current_timestamp();
        let recent = sign(
            Algorithm::HS256,
            json!({"customerId": 1, "publisherId": 7, "exp": now - 2}),
        );
        assert!(v.verify(&recent, None).is_ok(), "inside the 5 s leeway");
        let old = sign(
            Algorithm::HS256,
            json!({"customerId": 1, "publisherId": 7, "exp": now - 60}),
        );
        assert_eq!(v.verify(&old, None), Err(AuthError::Expired));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(format!(r#"{{"customerId":1,"publisherId":7,"exp":{}}}"#, exp()).as_bytes());
        let token = format!("{header}.{body}.");
        assert!(verifier().verify(&token, None).is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_publisher_key_replaces_the_server_key() {
        let v = verifier();
        let token = sign(
            Algorithm::HS256,
            json!({"customerId": 1, "publisherId": 7, "exp": exp()}),
        );
        assert_eq!(v.verify(&token, Some("another-secret")), Err(AuthError::BadSignature));
        assert_eq!(CustomerVerifier::claimed_publisher(&token).unwrap(), "7");
    }
}
