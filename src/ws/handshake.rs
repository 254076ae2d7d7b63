//! The server's half of the WebSocket opening handshake (RFC 6455 4.2.2), so that the
//! upgraded connection comes back to us rather than to axum's socket type.
//!
//! axum's `WebSocketUpgrade` still checks the request and words its refusals; this
//! extractor only keeps what accepting needs, which that extractor keeps private.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};

/// The GUID every accept key is derived with (RFC 6455 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub struct Handshake {
    key: Option<HeaderValue>,
    upgrade: Option<OnUpgrade>,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = std::convert::Infallible;

    /// Takes a handle on the pending upgrade (a clone: axum's extractor, which runs
    /// after this one, takes its own) and the client's key.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            key: parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned(),
            upgrade: parts.extensions.get::<OnUpgrade>().cloned(),
        })
    }
}

impl Handshake {
    /// The `101 Switching Protocols` answer (the same headers, in the same order, as
    /// axum's) and the upgrade it completes; `None` if the request cannot be upgraded.
    pub fn accept(self) -> Option<(Response, OnUpgrade)> {
        let (key, upgrade) = (self.key?, self.upgrade?);
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()))
            .body(Body::empty())
            .ok()?;
        Some((response, upgrade))
    }
}

fn accept_key(key: &[u8]) -> HeaderValue {
    let digest = Sha1::new().chain_update(key).chain_update(ACCEPT_GUID).finalize();
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
    // Base64 is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_the_one_in_the_rfc() {
        // RFC 6455 1.3's example.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
