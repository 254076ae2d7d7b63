//! The webhooks' outbox (`WebhookOutbox`) on both settings databases: SQLite and
//! a real PostgreSQL must keep webhooks, order per session, leases, the cap and
//! dead letters the same way.

use std::any::Any;
use std::sync::Arc;

use drisc::domain::events::{
    EventKind, EventType, OutboxBody, OutboxEvent, RefusalReason, SessionEvent, Webhook, WebhookOutbox,
};
use drisc::domain::ports::EndCause;
use drisc::domain::ports::SettingsRepo;
use drisc::domain::{PoolKey, SessionId};
use drisc::event_body;
use drisc::store::SqliteSettings;
use sqlx::Connection;

use super::settings_conformance::publisher;
use super::support_postgres::PgServer;

pub struct Subject {
    outbox: Arc<dyn WebhookOutbox>,
    repo: Arc<dyn SettingsRepo>,
    _home: Box<dyn Any + Send>,
}

impl Subject {
    async fn sqlite() -> Subject {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("drisc.db")).await.unwrap();
        Subject {
            outbox: Arc::new(db.clone()),
            repo: Arc::new(db),
            _home: Box::new(dir),
        }
    }

    async fn postgres() -> Subject {
        let server = PgServer::start().await;
        let mut s = Subject::postgres_on(&server).await;
        s._home = Box::new(server);
        s
    }

    /// On a server the caller keeps.
    async fn postgres_on(server: &PgServer) -> Subject {
        let db = super::settings_postgres::repo(server).await;
        Subject {
            outbox: Arc::new(db.clone()),
            repo: Arc::new(db),
            _home: Box::new(()),
        }
    }

    async fn with_webhook(self, publisher_id: &str) -> Subject {
        self.repo.create_publisher(&publisher(publisher_id)).await.unwrap();
        self.outbox.put_webhook(&hook(publisher_id)).await.unwrap();
        self
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() { super::$name(super::Subject::sqlite().await).await; })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() { super::$name(super::Subject::postgres().await).await; })*
        }
    };
}

conformance!(
    a_webhook_is_put_read_replaced_and_deleted_with_its_events,
    only_the_oldest_undelivered_event_of_a_session_is_claimed,
    a_claimed_event_is_not_claimed_again_until_its_lease_ends_or_it_is_retried,
    a_dead_letter_lets_the_next_event_of_its_session_go,
    a_full_outbox_makes_room_from_dead_letters_then_refuses_new_events,
    a_sessions_events_written_in_many_batches_go_out_in_order_whatever_the_claims_size,
    a_large_batch_of_interleaved_sessions_goes_out_in_order_per_session,
    a_batch_of_one_publisher_past_its_cap_is_cut_to_the_room_left,
    room_freed_by_deliveries_and_deletes_is_taken_up_to_the_cap_exactly,
    the_pending_count_holds_while_failed_events_are_written_back_for_a_retry,
    every_kind_of_event_given_as_itself_is_delivered_as_its_body,
    a_batch_of_many_rows_is_cut_at_each_publishers_cap,
    one_publishers_batch_of_many_rows_past_its_cap_is_cut_at_the_cap,
);

/// Events given as themselves (as the server gives them) come out as the bytes
/// of their body at `created_at`, whatever each outbox keeps of them (PostgreSQL
/// the rendered body, SQLite a packed form and then a record): every kind, every
/// cause and reason, ids that need escaping, no session name, a message id not of
/// the server's making, times that step back.
async fn every_kind_of_event_given_as_itself_is_delivered_as_its_body(s: Subject) {
    let s = s.with_webhook("p").await;
    let pool = PoolKey::from_ids("p", "c\"\u{e9}\n", "o\u{1f600}");
    let mut kinds = vec![
        (EventKind::Granted, true, Some("tv")),
        (EventKind::Granted, true, None),
        (EventKind::Kicked, true, Some("")),
        (
            EventKind::TakenOver {
                by: SessionId::random(),
                by_name: "phone \"2\"".into(),
            },
            true,
            Some("tv"),
        ),
    ];
    for reason in [
        RefusalReason::LimitExceeded,
        RefusalReason::TooManyPools,
        RefusalReason::HouseholdLimit,
    ] {
        for enforced in [true, false] {
            kinds.push((EventKind::Refused { reason, enforced }, !enforced, None));
        }
    }
    kinds.extend(EndCause::ALL.map(|cause| (EventKind::Ended { cause }, true, Some("tv"))));
    let events: Vec<(SessionEvent, OutboxEvent)> = kinds
        .into_iter()
        .enumerate()
        .map(|(n, (kind, with_session, name))| {
            let event = SessionEvent::new(kind, &pool, with_session.then(SessionId::random), name);
            let message_id = if n == 1 {
                "not-a-msg id".to_owned()
            } else {
                format!("msg_{:032x}", 0xabcdef_u128 * (n as u128 + 1))
            };
            let created_at = if n == 3 { 5 } else { 500_000 + n as u64 * 1_001 };
            let outbox_event = OutboxEvent {
                message_id,
                publisher_id: "p".into(),
                event_type: event.event_type(),
                body: OutboxBody::Event(event.clone()),
                created_at,
            };
            (event, outbox_event)
        })
        .collect();
    let batch: Vec<OutboxEvent> = events.iter().map(|(_, e)| e.clone()).collect();
    let done = s.outbox.enqueue(&batch, 1_000).await.unwrap();
    assert_eq!(done.written, events.len() as u64);
    let mut claimed = Vec::new();
    loop {
        let round = s.outbox.claim(NOW, LEASE, 100).await.unwrap();
        if round.is_empty() {
            break;
        }
        for c in &round {
            s.outbox.delivered(c.id).await.unwrap();
        }
        claimed.extend(round);
    }
    assert_eq!(claimed.len(), events.len());
    for (event, sent) in &events {
        let c = claimed
            .iter()
            .find(|c| c.message_id == sent.message_id)
            .unwrap_or_else(|| panic!("{} was not claimed", sent.message_id));
        assert_eq!((c.publisher_id.as_str(), c.created_at), ("p", sent.created_at));
        let body = event_body::deliverable(&c.body, &c.publisher_id, c.created_at).unwrap();
        assert_eq!(body, event_body::render_at(event, sent.created_at), "{:?}", event.kind);
    }
}

/// The cap stays exact as the held count falls and rises again (SQLite's appender
/// checks a batch against a bound it keeps on the count, read again when the bound
/// says the batch may not fit): room that deliveries freed is taken, no more;
/// room a webhook's deletion freed likewise.
async fn room_freed_by_deliveries_and_deletes_is_taken_up_to_the_cap_exactly(s: Subject) {
    let s = s.with_webhook("p").await;
    let batch =
        |from: u64, n: u64| -> Vec<OutboxEvent> { (from..from + n).map(|n| event("p", &format!("k{n}"), n)).collect() };
    let done = s.outbox.enqueue(&batch(0, 3), 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (3, 0));
    // Two delivered: 1 held, room for 3.
    let claimed = s.outbox.claim(NOW, LEASE, 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        s.outbox.delivered(c.id).await.unwrap();
    }
    let done = s.outbox.enqueue(&batch(3, 2), 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (2, 0));
    let done = s.outbox.enqueue(&batch(5, 2), 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (1, 1), "one place was left");
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 4);
    let done = s.outbox.enqueue(&batch(7, 1), 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (0, 1), "full");
    // The webhook and its events deleted, then put again: the whole cap is free.
    assert!(s.outbox.delete_webhook("p").await.unwrap());
    s.outbox.put_webhook(&hook("p")).await.unwrap();
    for from in [8, 10] {
        let done = s.outbox.enqueue(&batch(from, 2), 4).await.unwrap();
        assert_eq!((done.written, done.refused_full), (2, 0));
    }
    let done = s.outbox.enqueue(&batch(12, 1), 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (0, 1));
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 4);
}

/// The admin view's `pending` is exact while deliveries fail: an event that
/// failed is still pending, so a count read at any moment, while the failures
/// are being written back for a retry, sees every event. (SQLite's lane once
/// counted a failed event as gone before the row that replaces it was
/// committed: a read in between saw one too few.)
async fn the_pending_count_holds_while_failed_events_are_written_back_for_a_retry(s: Subject) {
    const EVENTS: u64 = 200;
    let s = s.with_webhook("p").await;
    let batch: Vec<_> = (0..EVENTS).map(|n| event("p", &format!("k{n}"), n)).collect();
    let done = s.outbox.enqueue(&batch, 1_000).await.unwrap();
    assert_eq!(done.written, EVENTS);
    let claimed = s.outbox.claim(NOW, LEASE, EVENTS as u32).await.unwrap();
    assert_eq!(claimed.len() as u64, EVENTS);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (outbox, stop) = (s.outbox.clone(), stop.clone());
        async move {
            let mut seen = std::collections::BTreeMap::<u64, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                *seen
                    .entry(outbox.outbox_counts("p").await.unwrap().pending)
                    .or_default() += 1;
                tokio::task::yield_now().await;
            }
            seen
        }
    });
    for c in &claimed {
        let retry = drisc::domain::events::Settled::Retry {
            id: c.id,
            attempts: 1,
            next_at: NOW + 5,
            error: "HTTP 500".into(),
        };
        s.outbox.settle(&[retry]).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(
        seen.values().sum::<u32>() > 0,
        "the count was read while the failures were written"
    );
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        [EVENTS],
        "pending as read during the retries (count: times read)\n{seen:?}"
    );
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, EVENTS);
}

/// A batch of one publisher (SQLite appends it in one statement when it fits):
/// one that fits is written whole, one that does not is cut to the room left, the
/// rest refused, and the order of what was written holds.
async fn a_batch_of_one_publisher_past_its_cap_is_cut_to_the_room_left(s: Subject) {
    let s = s.with_webhook("p").await;
    let first: Vec<_> = (0..3).map(|n| event("p", "a", n)).collect();
    let done = s.outbox.enqueue(&first, 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (3, 0));
    let more = [event("p", "a", 3), event("p", "a", 4)];
    let done = s.outbox.enqueue(&more, 4).await.unwrap();
    assert_eq!((done.written, done.refused_full), (1, 1));
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 4);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let claimed = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "one event of session a at a time");
        seen.push(claimed[0].message_id.clone());
        s.outbox.delivered(claimed[0].id).await.unwrap();
    }
    assert_eq!(seen, ["msg_a_0", "msg_a_1", "msg_a_2", "msg_a_3"]);
}

/// SQLite only: the outbox writer's own connection. Events it wrote are read by
/// the next process on the same file (this one dropped without a graceful stop),
/// and a batch that failed (an event without an ordering key is refused) leaves the
/// connection closed, and the next batch opens a new one and is written.
#[tokio::test]
async fn events_the_writer_wrote_are_read_after_a_restart_and_a_failed_batch_does_not_stop_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    {
        let db = SqliteSettings::open(&path).await.unwrap();
        db.create_publisher(&publisher("p")).await.unwrap();
        db.put_webhook(&hook("p")).await.unwrap();
        assert_eq!(db.enqueue(&[event("p", "a", 0)], 100).await.unwrap().written, 1);
        let mut keyless = event("p", "a", 1);
        if let OutboxBody::Text { ordering_key, .. } = &mut keyless.body {
            ordering_key.clear();
        }
        assert!(db.enqueue(&[keyless], 100).await.is_err());
        let done = db
            .enqueue(&[event("p", "a", 2), event("p", "b", 3)], 100)
            .await
            .unwrap();
        assert_eq!(done.written, 2);
        // No close: the process is gone.
    }
    let db = SqliteSettings::open(&path).await.unwrap();
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let claimed = db.claim(NOW, LEASE, 10).await.unwrap();
        assert!(!claimed.is_empty());
        for c in claimed {
            seen.push(c.message_id.clone());
            db.delivered(c.id).await.unwrap();
        }
        if seen.len() == 3 {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["msg_a_0", "msg_a_2", "msg_b_3"]);
    db.close().await;
}

/// Two writer batches of 1,300 events of 7 sessions interleaved, each staged as
/// rows of at most 512 events in one transaction (SQLite's first with the
/// cap's count read, its second appended by the bound it then knows;
/// PostgreSQL's each in one statement): each session's events are claimed one at
/// a time, in the order written, and every event exactly once.
async fn a_large_batch_of_interleaved_sessions_goes_out_in_order_per_session(s: Subject) {
    const EVENTS: u64 = 2_600;
    let s = s.with_webhook("p").await;
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    let batch: Vec<_> = (0..EVENTS).map(|n| event("p", keys[(n * 5 % 7) as usize], n)).collect();
    let (first, second) = batch.split_at(1_300);
    assert_eq!(s.outbox.enqueue(first, 10_000).await.unwrap().written, 1_300);
    assert_eq!(s.outbox.enqueue(second, 10_000).await.unwrap().written, 1_300);
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, EVENTS);
    let mut seen: Vec<(String, u64)> = Vec::new();
    for _ in 0..EVENTS {
        let round = s.outbox.claim(NOW, LEASE, 100).await.unwrap();
        if round.is_empty() {
            break;
        }
        let mut keys_in_round: Vec<&str> = Vec::new();
        for c in &round {
            let (key, n) = c.message_id["msg_".len()..].split_once('_').unwrap();
            assert!(!keys_in_round.contains(&key), "two events of {key} claimed at once");
            keys_in_round.push(key);
            seen.push((key.to_owned(), n.parse().unwrap()));
        }
        let settled: Vec<_> = round
            .iter()
            .map(|c| drisc::domain::events::Settled::Delivered { id: c.id })
            .collect();
        s.outbox.settle(&settled).await.unwrap();
    }
    assert_eq!(seen.len(), EVENTS as usize, "every event once");
    // The counts the cap is checked against followed every insert and delete.
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 0);
    assert_eq!(s.outbox.enqueue(&batch[..3], 3).await.unwrap().written, 3);
    assert_eq!(s.outbox.enqueue(&batch[3..4], 3).await.unwrap().refused_full, 1);
    for key in keys {
        let ns: Vec<u64> = seen.iter().filter(|(k, _)| k == key).map(|(_, n)| *n).collect();
        let expected: Vec<u64> = (0..EVENTS).filter(|n| keys[(n * 5 % 7) as usize] == key).collect();
        assert_eq!(ns, expected, "session {key} in the order written");
    }
}

/// Claims `limit` at a time and settles each round as delivered until nothing
/// is due (at most `rounds` rounds): the message ids in the order claimed.
async fn deliver_all(s: &Subject, limit: u32, rounds: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..rounds {
        let round = s.outbox.claim(NOW, LEASE, limit).await.unwrap();
        if round.is_empty() {
            break;
        }
        seen.extend(round.iter().map(|c| c.message_id.clone()));
        let settled: Vec<_> = round
            .iter()
            .map(|c| drisc::domain::events::Settled::Delivered { id: c.id })
            .collect();
        s.outbox.settle(&settled).await.unwrap();
    }
    seen
}

/// One publisher's batch of three staged rows past its cap (PostgreSQL's one
/// statement for them refused, then the rows written apart): the row before the
/// cut whole, the cut row to the room left, the row after it refused, and every
/// event written delivered once, in order.
async fn one_publishers_batch_of_many_rows_past_its_cap_is_cut_at_the_cap(s: Subject) {
    let s = s.with_webhook("p").await;
    let batch: Vec<_> = (0..1_200u64)
        .map(|n| event("p", ["a", "b"][(n % 2) as usize], n))
        .collect();
    let done = s.outbox.enqueue(&batch, 1_000).await.unwrap();
    assert_eq!((done.written, done.refused_full), (1_000, 200));
    let seen = deliver_all(&s, 50, 1_000).await;
    for key in ["a", "b"] {
        let got: Vec<&String> = seen.iter().filter(|m| m.starts_with(&format!("msg_{key}_"))).collect();
        let want: Vec<String> = (0..1_000u64)
            .filter(|n| ["a", "b"][(n % 2) as usize] == key)
            .map(|n| format!("msg_{key}_{n}"))
            .collect();
        assert_eq!(
            got,
            want.iter().collect::<Vec<_>>(),
            "session {key}: the first 1,000 events, in order"
        );
    }
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 0);
}

/// A batch of two publishers, each with more events than a staged row holds,
/// past one publisher's cap: that publisher's events are cut at its cap (the
/// rows after the cut refused whole), the other's written whole, and each
/// publisher's events go out in the order written.
async fn a_batch_of_many_rows_is_cut_at_each_publishers_cap(s: Subject) {
    let s = s.with_webhook("p").await.with_webhook("q").await;
    let mut batch = Vec::new();
    for n in 0..1_200u64 {
        batch.push(event("p", "a", n));
        if n < 700 {
            batch.push(event("q", "b", n));
        }
    }
    assert_eq!(
        s.outbox.enqueue(&[event("q", "b0", 0)], 1_000).await.unwrap().written,
        1
    );
    let done = s.outbox.enqueue(&batch, 1_000).await.unwrap();
    assert_eq!((done.written, done.refused_full), (1_000 + 700, 200));
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 1_000);
    assert_eq!(s.outbox.outbox_counts("q").await.unwrap().pending, 701);
    let seen = deliver_all(&s, 10, 2_000).await;
    let of = |prefix: &str| -> Vec<String> { seen.iter().filter(|m| m.starts_with(prefix)).cloned().collect() };
    let a: Vec<String> = (0..1_000u64).map(|n| format!("msg_a_{n}")).collect();
    let b: Vec<String> = (0..700u64).map(|n| format!("msg_b_{n}")).collect();
    assert_eq!(of("msg_a_"), a, "p's first 1,000 events, in order");
    assert_eq!(of("msg_b_"), b, "q's events, in order");
    assert_eq!(of("msg_b0_"), ["msg_b0_0"]);
}

fn hook(publisher_id: &str) -> Webhook {
    Webhook {
        publisher_id: publisher_id.into(),
        url: format!("https://example.com/{publisher_id}"),
        secret: "whsec_dGhpcy1pcy1hLXRlc3Qtc2VjcmV0LW9mLTMyLWJ5dGVz".into(),
        events: vec![EventType::Granted, EventType::Ended],
    }
}

fn event(publisher_id: &str, key: &str, n: u64) -> OutboxEvent {
    OutboxEvent {
        message_id: format!("msg_{key}_{n}"),
        publisher_id: publisher_id.into(),
        event_type: EventType::Granted,
        body: OutboxBody::Text {
            body: format!("{{\"n\":{n}}}"),
            ordering_key: key.into(),
        },
        created_at: 1_000 + n,
    }
}

const NOW: u64 = 1_000_000;
const LEASE: u64 = 60_000;

async fn a_webhook_is_put_read_replaced_and_deleted_with_its_events(s: Subject) {
    let s = s.with_webhook("p").await;
    assert_eq!(s.outbox.webhook("p").await.unwrap(), Some(hook("p")));
    let mut changed = hook("p");
    changed.url = "https://example.org/other".into();
    changed.events = vec![EventType::Kicked];
    s.outbox.put_webhook(&changed).await.unwrap();
    assert_eq!(s.outbox.webhooks().await.unwrap(), vec![changed]);
    s.outbox.enqueue(&[event("p", "a", 1)], 10).await.unwrap();
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 1);
    assert!(s.outbox.delete_webhook("p").await.unwrap());
    assert!(!s.outbox.delete_webhook("p").await.unwrap());
    assert_eq!(s.outbox.webhook("p").await.unwrap(), None);
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 0);
}

async fn only_the_oldest_undelivered_event_of_a_session_is_claimed(s: Subject) {
    let s = s.with_webhook("p").await;
    let batch = [
        event("p", "a", 1),
        event("p", "b", 2),
        event("p", "a", 3),
        event("p", "a", 4),
    ];
    let done = s.outbox.enqueue(&batch, 100).await.unwrap();
    assert_eq!((done.written, done.refused_full), (4, 0));
    let claimed = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["msg_a_1", "msg_b_2"]);
    assert_eq!(claimed[0].body, "{\"n\":1}");
    assert_eq!(claimed[0].attempts, 0);
    s.outbox.delivered(claimed[0].id).await.unwrap();
    let next = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<_> = next.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["msg_a_3"]);
    s.outbox.delivered(next[0].id).await.unwrap();
    let last = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].message_id, "msg_a_4");
    // An event written after its session's queue emptied is due at once.
    s.outbox.delivered(last[0].id).await.unwrap();
    s.outbox.enqueue(&[event("p", "a", 5)], 100).await.unwrap();
    let again = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, "msg_a_5");
}

/// SQLite keeps a written batch as one staged row and moves it into the outbox as
/// it claims: order per session must hold across batches, whatever a claim asks
/// for, and a round's outcomes settled at once.
async fn a_sessions_events_written_in_many_batches_go_out_in_order_whatever_the_claims_size(s: Subject) {
    let s = s.with_webhook("p").await;
    s.repo.create_publisher(&publisher("q")).await.unwrap();
    s.outbox.put_webhook(&hook("q")).await.unwrap();
    for batch in [
        vec![event("p", "a", 1), event("q", "b", 2)],
        vec![event("p", "a", 3), event("p", "c", 4)],
        vec![event("p", "a", 5)],
    ] {
        s.outbox.enqueue(&batch, 100).await.unwrap();
    }
    // Written is pending, before any claim.
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 4);
    assert_eq!(s.outbox.outbox_counts("q").await.unwrap().pending, 1);
    let first = s.outbox.claim(NOW, LEASE, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, "msg_a_1");
    let rest = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["msg_b_2", "msg_c_4"]);
    let round: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|c| drisc::domain::events::Settled::Delivered { id: c.id })
        .collect();
    s.outbox.settle(&round).await.unwrap();
    let second = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<_> = second.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["msg_a_3"]);
    s.outbox.delivered(second[0].id).await.unwrap();
    let third = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<_> = third.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(ids, ["msg_a_5"]);
    s.outbox.delivered(third[0].id).await.unwrap();
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 0);
    assert_eq!(s.outbox.outbox_counts("q").await.unwrap().pending, 0);
    assert!(s.outbox.claim(NOW, LEASE, 10).await.unwrap().is_empty());
}

async fn a_claimed_event_is_not_claimed_again_until_its_lease_ends_or_it_is_retried(s: Subject) {
    let s = s.with_webhook("p").await;
    s.outbox.enqueue(&[event("p", "a", 1)], 100).await.unwrap();
    let claimed = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(s.outbox.claim(NOW + LEASE - 1, LEASE, 10).await.unwrap().is_empty());
    let after_lease = s.outbox.claim(NOW + LEASE, LEASE, 10).await.unwrap();
    assert_eq!(after_lease.len(), 1, "a node that died mid-attempt leaves it to others");
    s.outbox.retry(claimed[0].id, 1, NOW + 5, "HTTP 500").await.unwrap();
    assert!(s.outbox.claim(NOW + 4, LEASE, 10).await.unwrap().is_empty());
    let retried = s.outbox.claim(NOW + 5, LEASE, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempts, 1);
}

async fn a_dead_letter_lets_the_next_event_of_its_session_go(s: Subject) {
    let s = s.with_webhook("p").await;
    s.outbox
        .enqueue(&[event("p", "a", 1), event("p", "a", 2)], 100)
        .await
        .unwrap();
    let claimed = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    s.outbox.dead_letter(claimed[0].id, 3, "HTTP 500").await.unwrap();
    let counts = s.outbox.outbox_counts("p").await.unwrap();
    assert_eq!((counts.pending, counts.dead), (1, 1));
    let next = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].message_id, "msg_a_2");
}

async fn a_full_outbox_makes_room_from_dead_letters_then_refuses_new_events(s: Subject) {
    let s = s.with_webhook("p").await.with_webhook("q").await;
    let first: Vec<_> = (0..3).map(|n| event("p", &format!("k{n}"), n)).collect();
    assert_eq!(s.outbox.enqueue(&first, 3).await.unwrap().written, 3);
    let claimed = s.outbox.claim(NOW, LEASE, 1).await.unwrap();
    s.outbox.dead_letter(claimed[0].id, 5, "gone").await.unwrap();
    // Full (2 waiting + 1 dead): the dead letter makes room for one, then refusals.
    let more = [event("p", "x", 10), event("p", "y", 11), event("q", "z", 12)];
    let done = s.outbox.enqueue(&more, 3).await.unwrap();
    assert_eq!((done.written, done.refused_full), (2, 1));
    let counts = s.outbox.outbox_counts("p").await.unwrap();
    assert_eq!((counts.pending, counts.dead), (3, 0));
    // Another publisher's outbox is its own.
    assert_eq!(s.outbox.outbox_counts("q").await.unwrap().pending, 1);
}

/// PostgreSQL only: several nodes claim from one outbox, and never the same event.
#[tokio::test]
async fn two_nodes_claiming_at_once_never_claim_the_same_event() {
    let (_server, nodes) = two_nodes_with_a_webhook().await;
    let events: Vec<_> = (0..60).map(|n| event("p", &format!("k{n}"), n)).collect();
    nodes[0].enqueue(&events, 1000).await.unwrap();
    let mut claimed = Vec::new();
    // Bounded: 60 events, at least one claimed per round while any are due.
    for _ in 0..60 {
        let (a, b) = tokio::join!(nodes[0].claim(NOW, LEASE, 7), nodes[1].claim(NOW, LEASE, 7));
        let round: Vec<_> = a.unwrap().into_iter().chain(b.unwrap()).collect();
        if round.is_empty() {
            break;
        }
        claimed.extend(round.into_iter().map(|c| c.message_id));
    }
    let total = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "an event was claimed twice");
    assert_eq!(total, 60);
}

/// Two nodes on one PostgreSQL and publisher `p` with a webhook (the server
/// stops when the returned `PgServer` is dropped).
async fn two_nodes_with_a_webhook() -> (PgServer, [drisc::store::PostgresSettings; 2]) {
    let server = PgServer::start().await;
    let nodes = [
        super::settings_postgres::repo(&server).await,
        super::settings_postgres::repo(&server).await,
    ];
    nodes[0].create_publisher(&publisher("p")).await.unwrap();
    nodes[0].put_webhook(&hook("p")).await.unwrap();
    (server, nodes)
}

/// PostgreSQL only: staged batches are moved into rows by one node at a time,
/// in their order, while two nodes claim and deliver at once: every event once,
/// each session's in the order written, across many batches.
#[tokio::test]
async fn two_nodes_moving_staged_batches_at_once_keep_each_sessions_order() {
    let (_server, nodes) = two_nodes_with_a_webhook().await;
    // 20 batches of 6, ten sessions interleaved across them, from both nodes.
    for b in 0..20u64 {
        let batch: Vec<_> = (0..6)
            .map(|i| b * 6 + i)
            .map(|n| event("p", &format!("k{}", n % 10), n))
            .collect();
        nodes[(b % 2) as usize].enqueue(&batch, 1000).await.unwrap();
    }
    assert_eq!(nodes[1].outbox_counts("p").await.unwrap().pending, 120);
    let mut seen: Vec<(String, u64)> = Vec::new();
    // Bounded: 120 events, and a round claims at least one while any is left.
    for _ in 0..200 {
        let (a, b) = tokio::join!(nodes[0].claim(NOW, LEASE, 4), nodes[1].claim(NOW, LEASE, 4));
        let (a, b) = (a.unwrap(), b.unwrap());
        if a.is_empty() && b.is_empty() {
            break;
        }
        for (node, claimed) in [(0, a), (1, b)] {
            for c in claimed {
                let (key, n) = c.message_id["msg_".len()..].split_once('_').unwrap();
                seen.push((key.to_owned(), n.parse().unwrap()));
                nodes[node].delivered(c.id).await.unwrap();
            }
        }
    }
    assert_eq!(seen.len(), 120, "every event, once: {seen:?}");
    for k in 0..10 {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(key, _)| *key == format!("k{k}"))
            .map(|(_, n)| *n)
            .collect();
        let written: Vec<u64> = (0..120).filter(|n| n % 10 == k).collect();
        assert_eq!(order, written, "session k{k}'s events out of order");
    }
    assert_eq!(nodes[0].outbox_counts("p").await.unwrap().pending, 0);
}

/// PostgreSQL only: rows the version before wrote (one per event, no staged
/// batch) go out before the staged events of their session, and a staged batch
/// this version cannot read stops the move there: nothing behind it passes, and
/// its events still count.
#[tokio::test]
async fn rows_of_the_version_before_go_first_and_an_unreadable_batch_holds_the_rest_back() {
    let server = PgServer::start().await;
    let s = Subject::postgres_on(&server).await.with_webhook("p").await;
    let old = sqlx::PgPool::connect(&server.url).await.unwrap();
    sqlx::query(
        "INSERT INTO webhook_outbox (message_id, publisher_id, ordering_key, event_type, body, created_at, \
         next_attempt_at) VALUES ('msg_old_1', 'p', 'a', 'session.granted', '{\"old\":1}', 1, 1)",
    )
    .execute(&old)
    .await
    .unwrap();
    s.outbox
        .enqueue(&[event("p", "a", 2), event("p", "b", 3)], 100)
        .await
        .unwrap();
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 3);
    let first = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(
        ids,
        ["msg_old_1", "msg_b_3"],
        "a's staged event waits behind its old row"
    );
    for c in &first {
        s.outbox.delivered(c.id).await.unwrap();
    }
    let next = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].message_id.as_str(), next[0].body.as_str()),
        ("msg_a_2", "{\"n\":2}")
    );
    s.outbox.delivered(next[0].id).await.unwrap();

    // A newer node's form, then a batch of this version's behind it.
    sqlx::query("INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES ('p', 1, '\\x00', 99)")
        .execute(&old)
        .await
        .unwrap();
    s.outbox.enqueue(&[event("p", "c", 4)], 100).await.unwrap();
    assert!(s.outbox.claim(NOW, LEASE, 10).await.unwrap().is_empty());
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 2);
    // Once the unreadable batch is gone (an operator's choice), the rest moves.
    sqlx::query("DELETE FROM webhook_outbox_staged WHERE form = 99")
        .execute(&old)
        .await
        .unwrap();
    let after = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|c| c.message_id.as_str()).collect::<Vec<_>>(),
        ["msg_c_4"]
    );
    old.close().await;
}

/// PostgreSQL only: a move stopped by an unreadable batch has let go of the
/// move's lock when the claim returns, not later, when a task of the pool's
/// gets to roll back a dropped transaction (until then no node would move
/// anything). The node runs on a runtime of its own that nothing drives between
/// its calls, so whatever it left to such a task has not happened when the test
/// looks.
#[test]
fn a_move_stopped_by_an_unreadable_batch_lets_go_of_its_lock_before_the_claim_returns() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (tests, node) = (runtime(), runtime());
    let server = tests.block_on(PgServer::start());
    let s = node.block_on(async { Subject::postgres_on(&server).await.with_webhook("p").await });
    let mut probe = tests.block_on(async {
        let mut probe = sqlx::PgConnection::connect(&server.url).await.unwrap();
        sqlx::query(
            "INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES ('p', 1, '\\x00', 99)",
        )
        .execute(&mut probe)
        .await
        .unwrap();
        probe
    });
    node.block_on(async {
        s.outbox.enqueue(&[event("p", "a", 1)], 100).await.unwrap();
        assert!(s.outbox.claim(NOW, LEASE, 10).await.unwrap().is_empty());
    });
    let held: i64 = tests
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&mut probe),
        )
        .unwrap();
    assert_eq!(held, 0, "the stopped move still holds its lock");
    node.block_on(async move { drop(s) });
    tests.block_on(async move {
        probe.close().await.unwrap();
        drop(server);
    });
}

/// SQLite only: a batch staged by the version before framed batches (form 1, a
/// JSON array with each body escaped inside) is still read after the upgrade, its
/// bodies as they were, and goes before the batches staged after it.
#[tokio::test]
async fn a_batch_staged_in_the_first_form_is_claimed_after_the_upgrade_before_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = SqliteSettings::open(&path).await.unwrap();
    let s = Subject {
        outbox: Arc::new(db.clone()),
        repo: Arc::new(db),
        _home: Box::new(()),
    }
    .with_webhook("p")
    .await;
    let old = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO webhook_outbox_staged (publisher_id, events, batch) VALUES ('p', 2, ?)")
        .bind(
            r#"[["msg_old_1","a","session.granted","{\"n\":\"x y\\n\"}",1],["msg_old_2","a","session.ended","{}",2]]"#,
        )
        .execute(&old)
        .await
        .unwrap();
    old.close().await;
    s.outbox.enqueue(&[event("p", "a", 3)], 100).await.unwrap();
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let claimed = s.outbox.claim(NOW, LEASE, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "one event of session a at a time");
        seen.push((claimed[0].message_id.clone(), claimed[0].body.clone()));
        s.outbox.delivered(claimed[0].id).await.unwrap();
    }
    assert_eq!(
        seen,
        [
            ("msg_old_1".to_owned(), "{\"n\":\"x y\\n\"}".to_owned()),
            ("msg_old_2".to_owned(), "{}".to_owned()),
            ("msg_a_3".to_owned(), "{\"n\":3}".to_owned()),
        ]
    );
    assert_eq!(s.outbox.outbox_counts("p").await.unwrap().pending, 0);
    drop(dir);
}

/// SQLite: a settings database opened on `path`, with a webhook for "p".
async fn sqlite_at(path: &std::path::Path) -> SqliteSettings {
    let db = SqliteSettings::open(path).await.unwrap();
    if db.webhook("p").await.unwrap().is_none() {
        db.create_publisher(&publisher("p")).await.unwrap();
        db.put_webhook(&hook("p")).await.unwrap();
    }
    db
}

/// What the SQLite outbox holds as rows and as staged batches, read beside it.
async fn sqlite_tables(path: &std::path::Path) -> (i64, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    let staged = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox_staged")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (rows, staged)
}

/// The messages of a claim, in order.
fn messages(claimed: &[drisc::domain::events::Claimed]) -> Vec<&str> {
    claimed.iter().map(|c| c.message_id.as_str()).collect()
}

/// SQLite: one batch of a_1, a_2, b_3 written; a_1 and b_3 claimed (a_2 waits
/// behind a_1), and a_1 delivered.
async fn one_of_three_delivered(path: &std::path::Path) -> SqliteSettings {
    let db = sqlite_at(path).await;
    db.enqueue(&[event("p", "a", 1), event("p", "a", 2), event("p", "b", 3)], 100)
        .await
        .unwrap();
    let first = db.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(messages(&first), ["msg_a_1", "msg_b_3"]);
    db.delivered(first[0].id).await.unwrap();
    db
}

/// SQLite only: events are sent from the staged batch with no row of their own
/// (the delivery lane), and the batch goes with its last event.
#[tokio::test]
async fn a_delivered_event_makes_no_row_and_its_batch_goes_with_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = sqlite_at(&path).await;
    let batch = [event("p", "a", 1), event("p", "b", 2), event("p", "a", 3)];
    db.enqueue(&batch, 100).await.unwrap();
    let first = db.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(messages(&first), ["msg_a_1", "msg_b_2"]);
    assert_eq!(sqlite_tables(&path).await, (0, 1), "in flight: no row, the batch kept");
    for c in &first {
        db.delivered(c.id).await.unwrap();
    }
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 1);
    let second = db.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(messages(&second), ["msg_a_3"]);
    db.delivered(second[0].id).await.unwrap();
    assert_eq!(sqlite_tables(&path).await, (0, 0));
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 0);
    db.close().await;
}

/// SQLite only: a failed event becomes a row, the events of its session that
/// waited behind it (in its batch, and in a batch written after) go after it,
/// in order, once it is delivered.
#[tokio::test]
async fn a_failed_event_goes_again_before_the_events_that_waited_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_at(&dir.path().join("drisc.db")).await;
    db.enqueue(&[event("p", "a", 1), event("p", "a", 2), event("p", "b", 3)], 100)
        .await
        .unwrap();
    let first = db.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(messages(&first), ["msg_a_1", "msg_b_3"]);
    db.settle(&[
        drisc::domain::events::Settled::Retry {
            id: first[0].id,
            attempts: 1,
            next_at: NOW + 5,
            error: "HTTP 500".into(),
        },
        drisc::domain::events::Settled::Delivered { id: first[1].id },
    ])
    .await
    .unwrap();
    db.enqueue(&[event("p", "a", 4), event("p", "c", 5)], 100)
        .await
        .unwrap();
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 4);
    assert_eq!(messages(&db.claim(NOW + 4, LEASE, 10).await.unwrap()), ["msg_c_5"]);
    let mut seen = Vec::new();
    for at in [NOW + 5, NOW + 6, NOW + 7] {
        let claimed = db.claim(at, LEASE, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "one event of session a at a time");
        seen.push((claimed[0].message_id.clone(), claimed[0].attempts));
        db.delivered(claimed[0].id).await.unwrap();
    }
    assert_eq!(
        seen,
        [
            ("msg_a_1".to_owned(), 1),
            ("msg_a_2".to_owned(), 0),
            ("msg_a_4".to_owned(), 0)
        ]
    );
    db.close().await;
}

/// SQLite only: events in flight at a graceful stop are sent after the restart,
/// and those already delivered are not sent again; after a crash, nothing is
/// lost (some may go twice: at least once).
#[tokio::test]
async fn a_stop_sends_nothing_twice_and_a_crash_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = one_of_three_delivered(&path).await;
    // b_3 is still in flight, a_2 waits: a graceful stop.
    db.close().await;
    drop(db);
    let db = sqlite_at(&path).await;
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 2);
    let after_stop = db.claim(NOW, LEASE, 10).await.unwrap();
    assert_eq!(messages(&after_stop), ["msg_a_2", "msg_b_3"]);
    // Now a crash: no outcome, no stop. Rows claimed then are claimed again once
    // their lease ends.
    drop(db);
    let db = sqlite_at(&path).await;
    assert!(db.claim(NOW, LEASE, 10).await.unwrap().is_empty(), "leased");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let claimed = db.claim(NOW + LEASE, LEASE, 10).await.unwrap();
        for c in &claimed {
            seen.push(c.message_id.clone());
            db.delivered(c.id).await.unwrap();
        }
    }
    seen.sort();
    assert_eq!(seen, ["msg_a_2", "msg_b_3"]);
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 0);
    db.close().await;
}

/// SQLite only: a crash while events sent from a batch were in flight: the batch
/// is read again at the next start and its events are sent again, the delivered
/// one too (at least once), in order per session.
#[tokio::test]
async fn a_crash_with_events_in_flight_from_a_batch_sends_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = one_of_three_delivered(&path).await;
    drop(db);
    let db = sqlite_at(&path).await;
    assert_eq!(
        db.outbox_counts("p").await.unwrap().pending,
        3,
        "the batch counts whole again"
    );
    assert_eq!(delivered_in(&db, 4).await, ["msg_a_1", "msg_b_3", "msg_a_2"]);
    assert_eq!(sqlite_tables(&path).await, (0, 0));
    db.close().await;
}

/// The message ids `rounds` claims hand out, each delivered at once.
async fn delivered_in(db: &SqliteSettings, rounds: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..rounds {
        for c in db.claim(NOW, LEASE, 10).await.unwrap() {
            seen.push(c.message_id.clone());
            db.delivered(c.id).await.unwrap();
        }
    }
    seen
}

/// The outbox writer on `queue`, writing to `db` with `gather`: its task, what
/// it tells after each write, and its stop.
fn start_writer(
    queue: &Arc<drisc::events::writer::Queue>,
    db: &SqliteSettings,
    gather: std::time::Duration,
    batch: usize,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<tokio::sync::Notify>,
    tokio_util::sync::CancellationToken,
) {
    let written = Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(drisc::events::writer::run(
        queue.clone(),
        Arc::new(db.clone()),
        drisc::events::writer::Limits {
            batch,
            gather,
            cap: 1_000,
        },
        drisc::meter::Meter::new().event_counters(),
        written.clone(),
        stop.clone(),
    ));
    (writer, written, stop)
}

/// The outbox writer on SQLite: an event that finds the last write older than
/// the gather is written at once; events close behind a write wait for the
/// gather since that write began and go in one write (one staged row).
#[tokio::test]
async fn the_writer_writes_an_event_after_a_quiet_spell_at_once_and_gathers_those_close_behind_it() {
    use std::time::{Duration, Instant};
    // Long against a write (milliseconds), so neither bound below is a race.
    const GATHER: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = sqlite_at(&path).await;
    let queue = Arc::new(drisc::events::writer::Queue::new(16, 4096));
    let (writer, written, stop) = start_writer(&queue, &db, GATHER, 4096);
    let start = Instant::now();
    queue
        .push("p", |b| db.pack(b, &event("p", "a", 0)).expect("packed"))
        .unwrap();
    written.notified().await;
    assert!(
        start.elapsed() < GATHER / 2,
        "the first event waited: {:?}",
        start.elapsed()
    );
    assert_eq!(sqlite_tables(&path).await.1, 1);
    for n in 1..4 {
        queue
            .push("p", |b| db.pack(b, &event("p", "a", n)).expect("packed"))
            .unwrap();
    }
    written.notified().await;
    assert!(
        start.elapsed() >= GATHER,
        "written {:?} after the first write began",
        start.elapsed()
    );
    assert_eq!(sqlite_tables(&path).await.1, 2, "the three close behind in one write");
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 4);
    stop.cancel();
    writer.await.unwrap();
}

/// A write's worth of events (`events.outbox_batch`) is written as soon as it
/// is queued, not when the gather is over: the writer slept the gather out,
/// and a burst of more than `outbox_queue` events in one gather (a restart's
/// million sessions ending at once) filled the queue while it slept.
#[tokio::test]
async fn the_writer_writes_a_full_batch_at_once_without_waiting_out_the_gather() {
    const BATCH: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drisc.db");
    let db = sqlite_at(&path).await;
    let queue = Arc::new(drisc::events::writer::Queue::new(BATCH * 4, BATCH));
    // A gather far longer than the test.
    let (writer, written, stop) = start_writer(&queue, &db, std::time::Duration::from_secs(3600), BATCH);
    let push = |from: usize, n: usize| {
        for n in from..from + n {
            queue
                .push("p", |b| db.pack(b, &event("p", &format!("s{n}"), 0)).expect("packed"))
                .unwrap();
        }
    };
    push(0, 1);
    written.notified().await;
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 1, "the first, at once");

    push(1, BATCH - 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        db.outbox_counts("p").await.unwrap().pending,
        1,
        "less than a batch waits for the gather"
    );
    push(BATCH, 1);
    tokio::time::timeout(std::time::Duration::from_secs(30), written.notified())
        .await
        .expect("the event that makes a batch ends the wait");
    assert_eq!(db.outbox_counts("p").await.unwrap().pending, 1 + BATCH as u64);
    assert_eq!(sqlite_tables(&path).await.1, 2, "the batch in one write");
    stop.cancel();
    writer.await.unwrap();
}

/// The writer's queue is bounded (`events.outbox_queue`): a push past it is
/// dropped, never waited for. A graceful stop writes what is queued, gather or
/// not, and refuses what is pushed after.
#[tokio::test]
async fn the_writers_queue_drops_past_its_bound_and_a_graceful_stop_writes_what_it_holds() {
    use drisc::events::writer::{Full, Queue};
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_at(&dir.path().join("drisc.db")).await;
    let queue = Arc::new(Queue::new(3, 4096));
    for n in 0..3 {
        queue
            .push("p", |b| db.pack(b, &event("p", "a", n)).expect("packed"))
            .unwrap();
    }
    assert!(matches!(
        queue.push("p", |b| db.pack(b, &event("p", "a", 3)).expect("packed")),
        Err(Full)
    ));

    // A gather far longer than the test: only the stop ends it.
    let (writer, written, stop) = start_writer(&queue, &db, std::time::Duration::from_secs(3600), 4096);
    written.notified().await;
    assert_eq!(
        db.outbox_counts("p").await.unwrap().pending,
        3,
        "the first write, at once"
    );
    for n in 4..6 {
        queue
            .push("p", |b| db.pack(b, &event("p", "a", n)).expect("packed"))
            .unwrap();
    }
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), writer)
        .await
        .expect("the stop ends the gather")
        .unwrap();
    assert_eq!(
        db.outbox_counts("p").await.unwrap().pending,
        5,
        "written before the writer ended"
    );
    assert!(
        matches!(
            queue.push("p", |b| db.pack(b, &event("p", "a", 6)).expect("packed")),
            Err(Full)
        ),
        "nothing would write it"
    );
    // One key: the claims hand its events out one at a time, in order.
    assert_eq!(
        delivered_in(&db, 7).await,
        ["msg_a_0", "msg_a_1", "msg_a_2", "msg_a_4", "msg_a_5"]
    );
    db.close().await;
}
