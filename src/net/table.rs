//! The open connections: how many, what each is doing, and which to close first
//! when the process runs short of file descriptors.
//!
//! A connection's [`Slot`] lives as long as its socket: inside hyper while it speaks
//! HTTP, then inside the WebSocket after an upgrade. Dropping it is what makes the
//! count exact, whoever ends up owning the socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How many connections one shedding pass closes: enough that a flood is not met
/// with one pass per new connection, few enough to spare the rest.
pub(super) const SHED_BATCH: usize = 16;

/// What a connection is doing, which decides its deadline and whether it may be shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// No request in flight and no byte of the next one: waits at most `idle_timeout`.
    /// A connection that never sent a byte is idle too.
    Idle = 0,
    /// Bytes of a request head arrived: the rest must follow within `header_read_timeout`.
    Head = 1,
    /// A request is being handled (its body has its own deadline).
    Busy = 2,
    /// A WebSocket: it holds (or is about to hold) a session and is never shed.
    Upgraded = 3,
    /// Chosen to be shed; its task closes it.
    Closing = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Head,
            2 => Self::Busy,
            3 => Self::Upgraded,
            _ => Self::Closing,
        }
    }

    /// Costs nothing to close: no request in flight, no session.
    fn sheddable(self) -> bool {
        matches!(self, Self::Idle | Self::Head)
    }
}

/// The deadlines of an HTTP connection between requests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// One connection's phase, shared by its socket, its request handler and its task.
pub(super) struct Entry {
    id: u64,
    epoch: Instant,
    /// The phase (low 8 bits) and when it began (ms since `epoch`, the rest), in one
    /// word so that a reader never pairs a phase with another phase's start.
    state: AtomicU64,
    /// Wakes the connection's task when it is shed: its deadline moved to now.
    pub(super) wake: Notify,
}

fn pack(phase: Phase, since_ms: u64) -> u64 {
    (since_ms << 8) | phase as u64
}

fn unpack(state: u64) -> (Phase, u64) {
    (Phase::from_u8((state & 0xff) as u8), state >> 8)
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 8)
}

impl Entry {
    fn new(id: u64, epoch: Instant) -> Self {
        Self {
            id,
            epoch,
            state: AtomicU64::new(pack(Phase::Idle, ms_since(epoch))),
            wake: Notify::new(),
        }
    }

    pub(super) fn phase(&self) -> Phase {
        unpack(self.state.load(Ordering::Acquire)).0
    }

    /// Moves from `from` to `to`, starting the new phase now; false if the
    /// connection was no longer in `from`.
    fn shift(&self, from: Phase, to: Phase) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if unpack(current).0 != from {
                return false;
            }
            let next = pack(to, ms_since(self.epoch));
            match self
                .state
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Bytes arrived on the socket: on an idle connection they start a request head,
    /// whose deadline is shorter than the idle one. The connection's task is not
    /// woken: the head's deadline is at least a tick of its timer away
    /// (`connection::serve`).
    pub(super) fn on_read(&self) {
        if self.phase() == Phase::Idle {
            self.shift(Phase::Idle, Phase::Head);
        }
    }

    /// hyper parsed a head and called the service.
    pub(super) fn request_started(&self) {
        let _ = self.shift(Phase::Head, Phase::Busy) || self.shift(Phase::Idle, Phase::Busy);
    }

    /// The response is on its way: the connection is idle again (unless upgraded or shed).
    /// Not woken either, as for [`Self::on_read`].
    pub(super) fn request_ended(&self) {
        self.shift(Phase::Busy, Phase::Idle);
    }

    pub(super) fn in_flight(&self) -> bool {
        self.phase() == Phase::Busy
    }

    /// When the connection must be closed if nothing changes; `None`: no deadline.
    pub(super) fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        let (phase, since) = unpack(self.state.load(Ordering::Acquire));
        let since = self.epoch + Duration::from_millis(since);
        match phase {
            Phase::Idle => Some(since + timeouts.idle),
            Phase::Head => Some(since + timeouts.header_read),
            Phase::Busy | Phase::Upgraded => None,
            Phase::Closing => Some(self.epoch),
        }
    }
}

/// Every open connection of the server.
pub(super) struct Table {
    epoch: Instant,
    /// Connections beyond this many are shed (the file limit minus the reserve).
    max_open: usize,
    open: AtomicUsize,
    /// Asked to close but not closed yet: already counted as gone when deciding to shed.
    closing: AtomicUsize,
    next_id: AtomicU64,
    /// HTTP connections by age (ids grow): the candidates for shedding, oldest first.
    /// WebSockets leave it on upgrade, since they are never shed.
    http: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

impl Table {
    pub(super) fn new(max_open: usize) -> Self {
        Self {
            epoch: Instant::now(),
            max_open,
            open: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            http: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn http(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.http.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a connection just accepted. Over the cap, the oldest idle connections
    /// are shed to make room; `Err(())` if none can be: the new one must be closed.
    pub(super) fn admit(self: &Arc<Self>) -> Result<(Slot, usize), ()> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut shed = 0;
        if open.saturating_sub(self.closing.load(Ordering::Acquire)) > self.max_open {
            shed = self.shed(SHED_BATCH);
            if shed == 0 {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(());
            }
        }
        let entry = Arc::new(Entry::new(self.next_id.fetch_add(1, Ordering::Relaxed), self.epoch));
        self.http().insert(entry.id, entry.clone());
        Ok((
            Slot {
                table: self.clone(),
                entry,
            },
            shed,
        ))
    }

    /// Asks up to `n` of the oldest connections with nothing in flight to close;
    /// returns how many were asked.
    pub(super) fn shed(&self, n: usize) -> usize {
        let mut shed = 0;
        for entry in self.http().values() {
            if shed == n {
                break;
            }
            let phase = entry.phase();
            if phase.sheddable() && entry.shift(phase, Phase::Closing) {
                self.closing.fetch_add(1, Ordering::AcqRel);
                entry.wake.notify_one();
                shed += 1;
            }
        }
        shed
    }

    /// The connection became a WebSocket: it leaves the shedding candidates for good.
    pub(super) fn upgraded(&self, entry: &Entry) {
        if entry.shift(Phase::Busy, Phase::Upgraded) {
            self.http().remove(&entry.id);
        }
    }
}

/// One open connection's place in the [`Table`]; freed when the socket is dropped.
pub(super) struct Slot {
    table: Arc<Table>,
    pub(super) entry: Arc<Entry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.entry.phase() == Phase::Closing {
            self.table.closing.fetch_sub(1, Ordering::AcqRel);
        }
        // An upgraded socket left the shedding candidates when it was upgraded.
        if self.entry.phase() != Phase::Upgraded {
            self.table.http().remove(&self.entry.id);
        }
        self.table.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> Arc<Table> {
        Arc::new(Table::new(max))
    }

    #[tokio::test]
    async fn past_the_cap_the_oldest_idle_connections_are_shed_first() {
        let t = table(3);
        let a = t.admit().unwrap().0;
        let b = t.admit().unwrap().0;
        let c = t.admit().unwrap().0;
        b.entry.request_started();
        let (_d, shed) = t.admit().unwrap();
        assert_eq!(shed, 2, "the idle a and c, not the busy b");
        assert_eq!(a.entry.phase(), Phase::Closing);
        assert_eq!(b.entry.phase(), Phase::Busy);
        assert_eq!(c.entry.phase(), Phase::Closing);
        assert_eq!(t.open(), 4);
        drop((a, c));
        assert_eq!(t.open(), 2);
        assert_eq!(t.closing.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn websockets_are_never_shed_and_a_newcomer_is_refused_when_nothing_else_can_go() {
        let t = table(2);
        let slots: Vec<Slot> = (0..2).map(|_| t.admit().unwrap().0).collect();
        for s in &slots {
            s.entry.request_started();
            t.upgraded(&s.entry);
        }
        assert!(t.admit().is_err());
        assert_eq!(t.open(), 2);
        assert!(slots.iter().all(|s| s.entry.phase() == Phase::Upgraded));
    }

    #[tokio::test]
    async fn connections_already_closing_make_room_without_shedding_more() {
        let t = table(2);
        let _a = t.admit().unwrap().0;
        let _b = t.admit().unwrap().0;
        assert_eq!(t.admit().unwrap().1, 2);
        // Both old ones are on their way out: the next newcomers shed nothing more.
        let (_d, shed) = t.admit().unwrap();
        assert_eq!(shed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_gets_the_header_deadline_and_idleness_the_idle_one() {
        let t = table(10);
        let s = t.admit().unwrap().0;
        let timeouts = Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let start = Instant::now();
        assert_eq!(s.entry.deadline(&timeouts), Some(start + timeouts.idle));
        tokio::time::advance(Duration::from_secs(5)).await;
        s.entry.on_read();
        assert_eq!(s.entry.phase(), Phase::Head);
        assert_eq!(
            s.entry.deadline(&timeouts),
            Some(start + Duration::from_secs(5) + timeouts.header_read)
        );
        s.entry.request_started();
        assert_eq!(s.entry.deadline(&timeouts), None);
        s.entry.request_ended();
        assert_eq!(s.entry.phase(), Phase::Idle);
    }
}
