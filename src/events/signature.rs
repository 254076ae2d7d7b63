//! Webhook signatures, the Standard Webhooks way (standardwebhooks.com): the
//! secret is `whsec_` and the base64 of the key; the signature of a message is
//! `v1,` and the base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}").

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";
/// The key lengths the specification asks for (bytes).
pub const MIN_KEY_BYTES: usize = 24;
pub const MAX_KEY_BYTES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("must start with \"whsec_\" followed by base64")]
    Prefix,
    #[error("is not valid base64 after \"whsec_\"")]
    Base64,
    #[error("must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes of key (it holds {0})")]
    Length(usize),
}

/// The signing key a secret holds.
pub fn key_of(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(SecretError::Prefix)?;
    let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(SecretError::Length(key.len()));
    }
    Ok(key)
}

/// A fresh secret of 32 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// What `GET` shows instead of the secret: enough to tell two secrets apart.
pub fn hint(secret: &str) -> String {
    let visible: String = secret.chars().take(SECRET_PREFIX.len() + 4).collect();
    format!("{visible}…")
}

/// The `webhook-signature` header's value.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_and_fresh_ones_pass() {
        assert_eq!(key_of("abc"), Err(SecretError::Prefix));
        assert_eq!(key_of("whsec_%%%"), Err(SecretError::Base64));
        assert_eq!(key_of("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
        let fresh = new_secret();
        assert_eq!(key_of(&fresh).map(|k| k.len()), Ok(32));
        assert!(!hint(&fresh).contains(&fresh[10..]));
    }

    #[test]
    fn signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification.
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_default();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
