//! Tokens: the customer tokens publishers issue, and the session tokens we sign.

pub mod customer;
pub mod jwks;
pub mod keys;
pub mod session_token;

pub use customer::{AuthError, CustomerToken, CustomerVerifier, KeySource, ServerKeys, TokenRules};
pub use jwks::{JwksTimings, JwksUri};
pub use keys::VerificationKey;
pub use session_token::{SessionClaims, SessionTokens};
