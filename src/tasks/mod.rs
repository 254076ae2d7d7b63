//! Background loops. Each one takes a cancellation token and runs on the app's
//! task tracker; none is fire-and-forget.

pub mod journal;
pub mod metrics;
pub mod rate_limits;
pub mod sweep;
