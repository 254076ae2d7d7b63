//! The handles every request and connection shares: cheap to clone, no globals.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CustomerVerifier, SessionTokens};
use crate::config::Settings;
use crate::domain::control::SessionControl;
use crate::events::Events;
use crate::limits::Limits;
use crate::meter::Meter;
use crate::readiness::Readiness;
use crate::ws::hub::Hub;

/// One pointer to [`Shared`]: axum clones the state for every extractor and
/// layer that takes it (several times per request), and cloning eleven handles
/// was eleven atomic increments and as many decrements each time (5% of a create's
/// CPU in the profile, bench/analysis.md). Fields read through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub control: Arc<SessionControl>,
    pub verifier: Arc<CustomerVerifier>,
    pub tokens: Arc<SessionTokens>,
    pub hub: Arc<Hub>,
    pub limits: Arc<Limits>,
    /// This server's metrics (its own registry: see [`crate::meter`]).
    pub meter: Arc<Meter>,
    /// What `/readyz` answers: stores reachable, not draining.
    pub readiness: Arc<Readiness>,
    pub settings: Arc<Settings>,
    /// The endpoint base used when a request carries no usable Host header.
    pub fallback_ws_url: Arc<str>,
    /// Cancelled when the server shuts down: every socket closes with 1012.
    pub shutdown: CancellationToken,
    /// Tracks socket tasks, so shutdown can wait for them before saving sessions.
    pub connections: TaskTracker,
    /// Session events: the live stream and the publishers' webhooks.
    pub events: Arc<Events>,
}
