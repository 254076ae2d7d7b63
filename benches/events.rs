//! What an event's bytes cost the server: the record the outbox keeps (made on the
//! request's thread), the body rendered from it at each delivery attempt, and the
//! body rendered at once (the live stream; an outbox that takes bodies), beside
//! serde_json's rendering of the same body, the reference the hand-written one is
//! held to. No server, no network.
//!
//! `cargo bench --bench events -- --bench [ITERATIONS] [ROUNDS]` (defaults 300,000 and
//! 5) times each operation over ITERATIONS events per round, the operations
//! interleaved round by round so the machine's noise hits them alike, and prints the
//! median and range of ns per event. The events are `session.granted` of the bench's
//! shape (the ids `drisc-load` sends) and one `session.taken_over`.
//!
//! Run by `cargo test --all-targets` without `--bench`: one small round, so the harness
//! keeps compiling and working; it checks that render and the reference agree and
//! times nothing.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use drisc::domain::events::{EventKind, SessionEvent};
use drisc::domain::{PoolKey, SessionId};
use drisc::event_body as body;

mod support;

fn events() -> Vec<SessionEvent> {
    let pool = PoolKey::from_ids("bench", "customer-0012345", "premium");
    let id = SessionId::random();
    vec![
        SessionEvent::new(EventKind::Granted, &pool, Some(id), Some("living room tv")),
        SessionEvent::new(
            EventKind::TakenOver {
                by: SessionId::random(),
                by_name: "phone".into(),
            },
            &pool,
            Some(id),
            Some("living room tv"),
        ),
    ]
}

/// ns per event of `op` over `n` events.
fn time(n: usize, mut op: impl FnMut(usize) -> usize) -> f64 {
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        bytes += op(i);
    }
    black_box(bytes);
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let run = support::Run::from_args(300_000, 5);
    let (iterations, rounds) = (run.iterations, run.rounds);

    let events = events();
    let created_at: u64 = 1_764_527_405_123;
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(created_at);
    let records: Vec<String> = events.iter().map(body::record).collect();
    let publisher = &events[0].pool.publisher_id();
    for (event, record) in events.iter().zip(&records) {
        let rendered = body::render(event, at);
        assert_eq!(
            rendered,
            body::render_reference(event, at),
            "render and its reference differ"
        );
        assert_eq!(
            body::deliverable(record, publisher, created_at).as_deref(),
            Ok(rendered.as_str())
        );
    }

    let ops: [(&str, &dyn Fn(usize) -> usize); 4] = [
        ("record (request's thread)", &|i| {
            body::record(black_box(&events[i % 2])).len()
        }),
        ("deliverable: record to body (delivery)", &|i| {
            body::deliverable(black_box(&records[i % 2]), publisher, created_at).map_or(0, |b| b.len())
        }),
        ("render: body at once", &|i| {
            body::render(black_box(&events[i % 2]), at).len()
        }),
        ("render_reference: serde_json", &|i| {
            body::render_reference(black_box(&events[i % 2]), at).len()
        }),
    ];
    let mut samples = vec![Vec::new(); ops.len()];
    for _ in 0..rounds {
        for (n, (_, op)) in ops.iter().enumerate() {
            samples[n].push(time(iterations, op));
        }
    }
    if run.timed {
        let names: Vec<&str> = ops.iter().map(|(name, _)| *name).collect();
        run.print("ns per event", &names, samples);
    }
}
