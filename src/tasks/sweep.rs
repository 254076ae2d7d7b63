//! The sweep: removes sessions that died without anyone noticing (pending ones
//! never connected, detached ones never came back) and closes any socket still
//! bound to a dead session. Admission does not depend on it, since expiry is
//! checked there too; the sweep keeps memory and the sockets honest.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::control::SessionControl;

pub async fn run(control: Arc<SessionControl>, every: Duration, cancel: CancellationToken) {
    super::every(every, cancel, || async {
        match control.reap().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(reaped = n, "dead sessions removed"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; admission still checks expiry"),
        }
    })
    .await;
}
