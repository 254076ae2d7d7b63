//! Verification keys, and the algorithms each kind of key may verify.
//!
//! The algorithm comes from the key, never from the token: an HMAC secret verifies
//! only HS*, an RSA key only RS*/PS*, an EC key only ES*, an Ed25519 key only EdDSA.
//! This is what defeats `alg: none` (not an algorithm jsonwebtoken knows) and
//! algorithm confusion (an RSA public key used as an HMAC secret).

use jsonwebtoken::{Algorithm, DecodingKey};

#[derive(Clone)]
pub struct VerificationKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the PEM key is neither an RSA, an EC nor an Ed25519 public key")]
    UnreadablePem,
}

impl VerificationKey {
    /// Reads a key: a PEM public key (`-----BEGIN PUBLIC KEY-----`, or
    /// `-----BEGIN RSA PUBLIC KEY-----`), else the text is an HMAC secret.
    pub fn parse(material: &str) -> Result<Self, KeyError> {
        let trimmed = material.trim();
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        if !trimmed.starts_with("-----BEGIN") {
            return Ok(Self {
                key: DecodingKey::from_secret(trimmed.as_bytes()),
                algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            });
        }
        let pem = trimmed.as_bytes();
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            use Algorithm::*;
            return Ok(Self {
                key,
                algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512],
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            });
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![Algorithm::EdDSA],
            });
        }
        Err(KeyError::UnreadablePem)
    }
}
