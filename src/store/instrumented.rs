//! A session store that times every operation of the store it wraps and counts
//! its failures, for `drisc_store_operation_duration_seconds{store,op}` and
//! `drisc_store_errors_total{store,op}`. The stores themselves know nothing of it.
//! It wraps a store's [`LocalSessions`] too, when the store has them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::domain::listing::{SessionPage, SessionQuery};
use crate::domain::pool::{Attached, Granted, Limits, NewSession, Refusal, TakenOver};
use crate::domain::ports::{
    EndCause, Ended, Heartbeat, LocalSessions, Reaped, SessionStore, SessionsByState, StoreError,
};
use crate::domain::{Customer, Holder, Millis, PoolKey, Session, SessionId};
use crate::meter::{Meter, StoreOperation};

/// Every operation of the ports, registered up front (`reap` and `snapshot` stay
/// at zero on a store without local sessions).
const OPERATIONS: [&str; 14] = [
    "admit",
    "take_over",
    "attach",
    "heartbeat",
    "detach",
    "end",
    "list",
    "customer_sessions",
    "end_customer",
    "locate",
    "reap",
    "snapshot",
    "restore",
    "hand_over",
];

/// Generic over the store, so that one wrapper offers whichever ports the store
/// implements (a trait object would hide [`LocalSessions`]).
pub struct Instrumented<S: ?Sized> {
    inner: Arc<S>,
    operations: HashMap<&'static str, StoreOperation, foldhash::fast::RandomState>,
}

impl<S: ?Sized> Instrumented<S> {
    /// `name` is the store's label: "memory" or "redis".
    pub fn new(inner: Arc<S>, name: &'static str, meter: Arc<Meter>) -> Self {
        let operations = OPERATIONS
            .iter()
            .map(|op| (*op, meter.store_operation(name, op)))
            .collect();
        Self { inner, operations }
    }

    /// Runs one operation and records how long it took and whether it failed.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        if let Some(handles) = self.operations.get(op) {
            handles.duration.record(started.elapsed().as_secs_f64());
            if result.is_err() {
                handles.errors.increment(1);
            }
        }
        result
    }
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Instrumented<S> {
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Result<Granted, Refusal>, StoreError> {
        self.timed("admit", self.inner.admit(pool, new, limits, now)).await
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        self.timed("take_over", self.inner.take_over(pool, victim, new, now))
            .await
    }

    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError> {
        self.timed("attach", self.inner.attach(pool, id, holder, now)).await
    }

    async fn heartbeat(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Heartbeat, StoreError> {
        self.timed("heartbeat", self.inner.heartbeat(pool, id, holder, now))
            .await
    }

    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        self.timed("detach", self.inner.detach(pool, id, holder, now)).await
    }

    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        self.timed("end", self.inner.end(pool, id, holder, now)).await
    }

    /// Timed as an `end`: it is one.
    async fn end_by_socket(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        cause: EndCause,
        now: Millis,
    ) -> Result<Ended, StoreError> {
        self.timed("end", self.inner.end_by_socket(pool, id, holder, cause, now))
            .await
    }

    /// Timed as an `end`: it is one.
    async fn end_taken_over(
        &self,
        pool: &PoolKey,
        id: SessionId,
        session_name: &str,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        self.timed("end", self.inner.end_taken_over(pool, id, session_name, now))
            .await
    }

    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError> {
        self.timed("list", self.inner.list(pool, now)).await
    }

    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError> {
        self.timed("customer_sessions", self.inner.customer_sessions(query, now))
            .await
    }

    async fn end_customer(
        &self,
        customer: &Customer,
        offer_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        self.timed("end_customer", self.inner.end_customer(customer, offer_id, now))
            .await
    }

    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        self.timed("locate", self.inner.locate(id)).await
    }

    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        self.timed("restore", self.inner.restore(sessions)).await
    }

    async fn hand_over(&self, now: Millis) -> Result<(), StoreError> {
        self.timed("hand_over", self.inner.hand_over(now)).await
    }

    fn by_state(&self) -> SessionsByState {
        self.inner.by_state()
    }
}

#[async_trait]
impl<S: LocalSessions + ?Sized> LocalSessions for Instrumented<S> {
    async fn reap_some(&self, now: Millis, pools: usize) -> Result<Reaped, StoreError> {
        self.timed("reap", self.inner.reap_some(now, pools)).await
    }

    /// Not timed: two atomic reads, asked by every admission.
    fn any_due(&self, now: Millis) -> bool {
        self.inner.any_due(now)
    }

    /// Not timed: the sweep's, now and then.
    fn trim(&self) -> usize {
        self.inner.trim()
    }

    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        self.timed("snapshot", self.inner.snapshot()).await
    }
}
