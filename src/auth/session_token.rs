//! The session token embedded in the endpoint we hand out (PROTOCOL 2.3).
//!
//! It names the session and its pool, so a socket can be bound without any lookup
//! by id, on whichever node it lands. It is signed HS256 with the server secret,
//! which is persisted (or configured), so tokens outlive restarts.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::domain::{PoolKey, SessionId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sid: SessionId,
    #[serde(rename = "pub")]
    pub publisher_id: String,
    #[serde(rename = "cus")]
    pub customer_id: String,
    #[serde(rename = "off")]
    pub offer_id: String,
    /// Seconds since the epoch.
    pub exp: u64,
}

impl SessionClaims {
    pub fn pool(&self) -> PoolKey {
        PoolKey {
            publisher_id: self.publisher_id.clone(),
            customer_id: self.customer_id.clone(),
            offer_id: self.offer_id.clone(),
        }
    }

    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.exp <= now_secs
    }
}

pub struct SessionTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl SessionTokens {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is still *ours*: the socket is accepted and told EXPIRED.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn issue(&self, pool: &PoolKey, sid: SessionId, now_secs: u64) -> String {
        let claims = SessionClaims {
            sid,
            publisher_id: pool.publisher_id.clone(),
            customer_id: pool.customer_id.clone(),
            offer_id: pool.offer_id.clone(),
            exp: now_secs + self.ttl_secs,
        };
        // Encoding a plain struct with an HMAC key cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// The claims of a token we signed, expired or not; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<SessionClaims> {
        decode::<SessionClaims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolKey {
        PoolKey {
            publisher_id: "p".into(),
            customer_id: "c".into(),
            offer_id: "o".into(),
        }
    }

    #[test]
    fn a_token_round_trips_and_outlives_its_issuer() {
        let sid = SessionId::random();
        let token = SessionTokens::new(b"secret", 60).issue(&pool(), sid, 1_000);
        let claims = SessionTokens::new(b"secret", 60).verify(&token).unwrap();
        assert_eq!((claims.sid, claims.pool(), claims.exp), (sid, pool(), 1_060));
        assert!(claims.is_expired(1_060));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = SessionTokens::new(b"other", 60).issue(&pool(), SessionId::random(), 1_000);
        assert!(SessionTokens::new(b"secret", 60).verify(&token).is_none());
        assert!(SessionTokens::new(b"secret", 60).verify("not.a.token").is_none());
    }
}
