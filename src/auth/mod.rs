//! Tokens: the customer tokens publishers issue, and the session tokens we sign.

pub mod customer;
pub mod keys;
pub mod session_token;

pub use customer::{AuthError, CustomerVerifier};
pub use keys::VerificationKey;
pub use session_token::{SessionClaims, SessionTokens};
