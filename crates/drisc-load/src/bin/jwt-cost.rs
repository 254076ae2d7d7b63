//! `jwt-cost`: what the two JWT operations of a create cost on this machine, in
//! µs per operation, to set against µs per create (1 / creates per server
//! core-second, bench/admission). No server, no network: one thread, N rounds.
//!
//! - **verify**: a customer token as drisc-load's players mint it (HS256,
//!   `publisherId`, `customerId`, `exp`), checked as drisc's `CustomerVerifier`
//!   does: `jsonwebtoken::decode` with the HMAC family's algorithms, `exp` and
//!   `nbf` validated, 5 s leeway (header, signature, claims).
//! - **peek**: reading `publisherId` from the payload before the key is known
//!   (base64 and JSON of the payload only), as drisc does to pick the key.
//! - **sign**: a session token as drisc's `SessionTokens::issue` makes it: the
//!   claims serialized, base64url, HMAC-SHA256 over the pre-encoded header and
//!   them (`jsonwebtoken::crypto::sign`); and, for comparison, `jsonwebtoken::encode`
//!   (the header encoded again each time), which drisc used before.
//! - **read once and verify** and **sign with a keyed HMAC**: the same two operations
//!   as drisc makes them since round eight (bench/analysis.md): the token's claims
//!   parsed once (base64 and one JSON parse; the header recognized by its encoded
//!   text), the signature checked with an HMAC keyed once and cloned per token, `exp`
//!   and `nbf` checked by hand; the session token signed with a keyed HMAC as well.
//!
//! Run: `cargo run --release -p drisc-load --bin jwt-cost -- [N]` (default 200000).
//! Pin it to one core (`taskset -c 1`) and repeat: the machine is shared.

use std::hint::black_box;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &[u8] = b"drisc-dev-customer-secret";

#[derive(Deserialize)]
#[allow(dead_code)]
struct CustomerClaims {
    #[serde(rename = "customerId")]
    customer_id: Option<Value>,
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
}

/// drisc's one parse of a customer token's claims (`auth::customer::Claims`).
#[derive(Deserialize)]
#[allow(dead_code)]
struct AllClaims {
    #[serde(rename = "customerId")]
    customer_id: Option<Value>,
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    sub: Option<Value>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PublisherClaim {
    #[serde(rename = "publisherId")]
    publisher_id: Option<Value>,
}

/// drisc's session claims, borrowed from the pool as `SessionTokens::issue` does.
#[derive(Serialize)]
struct SessionClaims<'a> {
    sid: &'a str,
    #[serde(rename = "pub")]
    publisher_id: &'a str,
    #[serde(rename = "cus")]
    customer_id: &'a str,
    #[serde(rename = "off")]
    offer_id: &'a str,
    exp: u64,
}

/// µs per call of `op`, over `n` calls after `n / 10` to warm up.
fn time(n: u32, mut op: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        op(i);
    }
    let started = Instant::now();
    for i in 0..n {
        op(i);
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let now = jsonwebtoken::get_current_timestamp();
    let customer_key = EncodingKey::from_secret(SECRET);
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"publisherId": "load-0123abcd", "customerId": "42317", "exp": now + 3600}),
        &customer_key,
    )?;

    let decoding = DecodingKey::from_secret(SECRET);
    let mut validation = Validation::default();
    validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    validation.leeway = 5;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    // Fails loudly if the token does not verify: a benchmark of errors is no benchmark.
    decode::<CustomerClaims>(&token, &decoding, &validation)?;
    let verify = time(n, |_| {
        let claims = decode::<CustomerClaims>(black_box(&token), &decoding, &validation);
        black_box(claims.is_ok());
    });

    let peek = time(n, |_| {
        use base64::Engine;
        let payload = black_box(&token).split('.').nth(1).unwrap_or_default();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_default();
        black_box(serde_json::from_slice::<PublisherClaim>(&json).is_ok());
    });

    let session_key = EncodingKey::from_secret(b"a server secret of 32 random bytes");
    let sid = "6f1c2b9e-3a47-4d2b-9c1e-0b7a4f2d8e13";
    let header = {
        use base64::Engine;
        let mut h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Header::new(Algorithm::HS256))?);
        h.push('.');
        h
    };
    let claims = |i: u32| SessionClaims {
        sid,
        publisher_id: "load-0123abcd",
        customer_id: "42317",
        offer_id: "bench",
        exp: now + u64::from(i % 7),
    };
    let sign = time(n, |i| {
        use base64::Engine;
        let json = serde_json::to_vec(&claims(i)).unwrap_or_default();
        let mut token = header.clone();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(json, &mut token);
        let signature = jsonwebtoken::crypto::sign(token.as_bytes(), &session_key, Algorithm::HS256);
        black_box((token, signature.is_ok()));
    });
    let encode_full = time(n, |i| {
        let token = encode(&Header::new(Algorithm::HS256), &claims(i), &session_key);
        black_box(token.is_ok());
    });

    // As drisc verifies since round eight: one parse, a keyed HMAC cloned per token.
    let keyed = Hmac::<Sha256>::new_from_slice(SECRET)?;
    let common_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Header::new(Algorithm::HS256))?);
    let read_and_verify = |token: &str| -> Option<()> {
        let (message, signature) = token.rsplit_once('.')?;
        let (header, payload) = message.rsplit_once('.')?;
        let claims: AllClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        // The header nearly every token carries is recognized by its text.
        (header == common_header).then_some(())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        keyed
            .clone()
            .chain_update(message.as_bytes())
            .verify_slice(&signature)
            .ok()?;
        let exp = claims.exp.as_ref()?.as_u64()?;
        let nbf = claims.nbf.as_ref().and_then(Value::as_u64).unwrap_or(0);
        (exp + 5 >= now && nbf <= now + 5).then_some(())
    };
    read_and_verify(&token).ok_or_else(|| anyhow::anyhow!("the token does not verify the new way"))?;
    let verify_once = time(n, |_| {
        black_box(read_and_verify(black_box(&token)).is_some());
    });
    let session_signer = Hmac::<Sha256>::new_from_slice(b"a server secret of 32 random bytes")?;
    let sign_keyed = time(n, |i| {
        let json = serde_json::to_vec(&claims(i)).unwrap_or_default();
        let mut token = header.clone();
        URL_SAFE_NO_PAD.encode_string(json, &mut token);
        let signature = session_signer
            .clone()
            .chain_update(token.as_bytes())
            .finalize()
            .into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        black_box(token);
    });

    println!("jwt-cost: {n} operations each, µs per operation (one thread)");
    println!("  verify a customer token (jsonwebtoken::decode, HS256)      {verify:.2}");
    println!("  peek at its publisherId (payload only)                     {peek:.2}");
    println!("  sign a session token (pre-encoded header, crypto::sign)    {sign:.2}");
    println!("  sign a session token (jsonwebtoken::encode, as before)     {encode_full:.2}");
    println!(
        "  the two operations of a create (verify + peek + sign)      {:.2}",
        verify + peek + sign
    );
    println!("  read once and verify (keyed HMAC, as drisc now)            {verify_once:.2}");
    println!("  sign with a keyed HMAC (as drisc now)                      {sign_keyed:.2}");
    println!(
        "  the two operations of a create, as drisc now               {:.2}",
        verify_once + sign_keyed
    );
    Ok(())
}
