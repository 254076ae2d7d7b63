//! Opening the embedded session store.

use std::sync::Arc;

use super::MemoryStore;
use crate::config::Settings;
use crate::domain::Holder;
use crate::domain::journal::Journal;
use crate::domain::ports::Notifier;
use crate::meter::Meter;
use crate::store::Sessions;
use crate::store::instrumented::Instrumented;

/// The session pools in this process: a node of its own (no other node to tell
/// apart, so any id will do), orders delivered by `sockets` directly, and the
/// session journal unless `storage.journal` is off.
pub fn open<L: Notifier>(settings: &Settings, meter: &Arc<Meter>, sockets: impl FnOnce(u64) -> Arc<L>) -> Sessions<L> {
    let sockets = sockets(Holder::random_node());
    let timings = settings.timings();
    let journal = settings.storage.journal.then(|| Arc::new(Journal::new()));
    let store = match &journal {
        Some(journal) => MemoryStore::with_journal(timings, Arc::clone(journal)),
        None => MemoryStore::new(timings),
    };
    let store = store.observed(meter.clone());
    let store = Arc::new(Instrumented::new(Arc::new(store), "memory", meter.clone()));
    Sessions {
        store: store.clone(),
        local: Some(store),
        notifier: sockets.clone(),
        sockets,
        journal,
        cluster: None,
    }
}
