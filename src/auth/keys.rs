//! Verification keys, and the algorithms each kind of key may verify.
//!
//! The algorithm comes from the key, never from the token: an HMAC secret verifies
//! only HS*, an RSA key only RS*/PS*, an EC key only ES*, an Ed25519 key only EdDSA.
//! This is what defeats `alg: none` (not an algorithm jsonwebtoken knows) and
//! algorithm confusion (an RSA public key used as an HMAC secret).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
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
    #[error("the JWK is for encryption, not for signatures")]
    NotForSignatures,
    #[error("the JWK's alg {0:?} does not suit its key type or curve")]
    AlgorithmMismatch(KeyAlgorithm),
    #[error("the JWK's curve {0:?} is not supported")]
    UnsupportedCurve(EllipticCurve),
    #[error("the JWK cannot be read: {0}")]
    UnreadableJwk(jsonwebtoken::errors::Error),
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

    /// Reads a key of a JWKS. Its algorithms follow from its type and curve, narrowed
    /// to its `alg` when it names one: a JWK whose `alg` does not suit its type is
    /// refused rather than trusted.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        use Algorithm::*;
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err(KeyError::NotForSignatures);
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![ES256],
                EllipticCurve::P384 => vec![ES384],
                ref other => return Err(KeyError::UnsupportedCurve(other.clone())),
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => vec![EdDSA],
                ref other => return Err(KeyError::UnsupportedCurve(other.clone())),
            },
            AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
        };
        let algorithms = match jwk.common.key_algorithm {
            None => family,
            Some(named) => {
                let alg = named
                    .to_string()
                    .parse::<Algorithm>()
                    .ok()
                    .filter(|alg| family.contains(alg))
                    .ok_or(KeyError::AlgorithmMismatch(named))?;
                vec![alg]
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(KeyError::UnreadableJwk)?;
        Ok(Self { key, algorithms })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).expect("a JWK")
    }

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn a_jwks_key_takes_its_algorithms_from_its_type_and_alg() {
        let rsa = VerificationKey::from_jwk(&jwk(json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"}))).unwrap();
        assert!(rsa.algorithms.contains(&Algorithm::PS256) && !rsa.algorithms.contains(&Algorithm::HS256));
        let rs384 =
            VerificationKey::from_jwk(&jwk(json!({"kty": "RSA", "alg": "RS384", "n": RSA_N, "e": "AQAB"}))).unwrap();
        assert_eq!(rs384.algorithms, [Algorithm::RS384]);
        let hmac = VerificationKey::from_jwk(&jwk(json!({"kty": "oct", "k": "c2VjcmV0"}))).unwrap();
        assert_eq!(hmac.algorithms, [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
    }

    #[test]
    fn a_jwk_whose_alg_does_not_suit_its_type_or_use_is_refused() {
        let confused = jwk(json!({"kty": "RSA", "alg": "HS256", "n": RSA_N, "e": "AQAB"}));
        assert!(matches!(
            VerificationKey::from_jwk(&confused),
            Err(KeyError::AlgorithmMismatch(_))
        ));
        let enc = jwk(json!({"kty": "RSA", "use": "enc", "n": RSA_N, "e": "AQAB"}));
        assert!(matches!(
            VerificationKey::from_jwk(&enc),
            Err(KeyError::NotForSignatures)
        ));
    }
}
