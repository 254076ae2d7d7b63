//! The session token embedded in the endpoint we hand out (PROTOCOL 2.3).
//!
//! It names the session and its pool, so a socket can be bound without any lookup
//! by id, on whichever node it lands. It is signed HS256 with the server secret,
//! which is persisted (or configured), so tokens outlive restarts.

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, decode};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::{PoolKey, SessionId};
use crate::json_text;

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
        PoolKey::from_ids(&self.publisher_id, &self.customer_id, &self.offer_id)
    }

    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.exp <= now_secs
    }
}

pub struct SessionTokens {
    /// HMAC-SHA256 keyed with the secret once: keying hashes two blocks, which
    /// `jsonwebtoken::crypto::sign` would do again for every token.
    signer: Hmac<Sha256>,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// The encoded header with its dot (`base64(header).`): the same for every
    /// token, so it is encoded once instead of once per create.
    header: String,
}

/// The claims [`SessionTokens::issue`] signs, the bytes serde_json writes for
/// [`SessionClaims`] (same names, same order; a test holds them equal), written by
/// hand: serde's map of five entries was 1,600 instructions of a create.
fn claims_json(pool: &PoolKey, sid: SessionId, exp: u64) -> String {
    let ids = pool.publisher_id().len() + pool.customer_id().len() + pool.offer_id().len();
    let mut json = String::with_capacity(CLAIMS_FIXED + ids);
    json.push_str(r#"{"sid":""#);
    sid.with_text(|id| json.push_str(id));
    json.push_str(r#"","pub":"#);
    json_text::push_str(&mut json, pool.publisher_id());
    json.push_str(r#","cus":"#);
    json_text::push_str(&mut json, pool.customer_id());
    json.push_str(r#","off":"#);
    json_text::push_str(&mut json, pool.offer_id());
    json.push_str(r#","exp":"#);
    // Writing into a `String` cannot fail.
    let _ = write!(json, "{exp}}}");
    json
}

/// The claims' bytes beside the three ids: names, quotes, the session id and up to
/// 20 digits of `exp`.
const CLAIMS_FIXED: usize = 100;

impl SessionTokens {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is still *ours*: the socket is accepted and told EXPIRED.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp"]);
        // A header of two fixed fields always serializes.
        let header = serde_json::to_vec(&Header::new(Algorithm::HS256)).unwrap_or_default();
        let mut encoded = URL_SAFE_NO_PAD.encode(header);
        encoded.push('.');
        Self {
            // HMAC hashes a key longer than its block and pads a shorter one: it
            // refuses none.
            signer: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
            header: encoded,
        }
    }

    /// The same token as `jsonwebtoken::encode` makes (`header.claims.signature`,
    /// each part base64url without padding), without encoding the header again
    /// nor cloning the pool's ids into owned claims.
    pub fn issue(&self, pool: &PoolKey, sid: SessionId, now_secs: u64) -> String {
        let json = claims_json(pool, sid, now_secs + self.ttl_secs);
        let mut token = String::with_capacity(self.header.len() + json.len() * 4 / 3 + 48);
        token.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(json, &mut token);
        let signature = self
            .signer
            .clone()
            .chain_update(token.as_bytes())
            .finalize()
            .into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
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
    use jsonwebtoken::EncodingKey;

    use super::*;

    fn pool() -> PoolKey {
        PoolKey::from_ids("p", "c", "o")
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
    fn a_token_is_the_one_jsonwebtoken_would_encode() {
        let sid = SessionId::random();
        let claims = SessionClaims {
            sid,
            publisher_id: "p".into(),
            customer_id: "c".into(),
            offer_id: "o".into(),
            exp: 1_060,
        };
        let expected = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(SessionTokens::new(b"secret", 60).issue(&pool(), sid, 1_000), expected);
    }

    #[test]
    fn the_claims_are_the_bytes_serde_json_writes_whatever_the_ids() {
        let sid = SessionId::random();
        for (p, c, o) in [
            ("p", "c", "o"),
            ("pub\"q", "back\\slash", "line\nbreak\u{1}"),
            ("", "é", ""),
        ] {
            for exp in [0, 1_060, u64::MAX] {
                let claims = SessionClaims {
                    sid,
                    publisher_id: p.into(),
                    customer_id: c.into(),
                    offer_id: o.into(),
                    exp,
                };
                let ours = claims_json(&PoolKey::from_ids(p, c, o), sid, exp);
                assert_eq!(ours, serde_json::to_string(&claims).unwrap());
                if [p, c, o].iter().all(|id| json_text::needs_no_escape(id)) {
                    assert!(ours.len() <= CLAIMS_FIXED + p.len() + c.len() + o.len(), "{ours}");
                }
            }
        }
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = SessionTokens::new(b"other", 60).issue(&pool(), SessionId::random(), 1_000);
        assert!(SessionTokens::new(b"secret", 60).verify(&token).is_none());
        assert!(SessionTokens::new(b"secret", 60).verify("not.a.token").is_none());
    }
}
