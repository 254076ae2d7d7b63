//! The "moved" flag on a node's liveness key (Redis's clock, as every node runs):
//! a script that ends or moves a session held by another node flags that
//! node's key in the shard, and the holder's next vouch reads the flag and
//! checks its sessions there at once. So an order lost on its way (here: never
//! sent, since these stores have no inbox between them) still reaches the
//! socket within one vouch period, while a quiet shard costs no check per
//! session and minute.

use std::sync::Arc;
use std::time::Duration;

use drisc::domain::ports::{Control, SessionStore};
use drisc::domain::{Clock, Holder, Millis, PoolKey, SessionId, Timings};
use drisc::store::redis::{RedisStore, TimeSource, keys};

use super::conformance::{Recorder, limit, new, pool, pools_in_shard};
use super::support_redis::RedisServer;

/// A PONG timeout short enough that a node vouches again (every third of it)
/// within a test's second.
const PONG: Duration = Duration::from_millis(1_500);
/// Longer than any outage these tests make: their nodes put back what they miss.
const NODE_LOST_AFTER: Duration = Duration::from_secs(60);

fn timings() -> Timings {
    Timings {
        ping_interval: Duration::from_millis(500),
        pong_timeout: PONG,
        reconnect_grace: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(30),
    }
}

/// Node `node`'s store on `server`, with Redis's clock, and the orders it sends its sockets.
async fn node(server: &RedisServer, node: u64) -> (Arc<RedisStore>, Arc<Recorder>) {
    let orders: Arc<Recorder> = Arc::default();
    let store = RedisStore::connect(
        &server.url,
        timings(),
        Duration::from_secs(60),
        NODE_LOST_AFTER,
        TimeSource::Redis,
        orders.clone(),
    )
    .await
    .unwrap()
    .for_node(node);
    (Arc::new(store), orders)
}

fn socket(node: u64, n: u64) -> Holder {
    Holder(node << Holder::NODE_SHIFT | n)
}

/// Admits a session in `p` on `store` and attaches it to `holder`.
async fn held(store: &RedisStore, p: &PoolKey, holder: Holder) -> SessionId {
    let id = store
        .admit(p, new(p, "tv"), limit(1), 0)
        .await
        .unwrap()
        .unwrap()
        .session
        .id;
    store.attach(p, id, holder, 0).await.unwrap().unwrap();
    id
}

/// Calls of `command` Redis counted (`INFO commandstats`; those run inside scripts included).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?.parse::<u64>().ok()?;
            (name == command).then_some(calls)
        })
        .sum()
}

/// Long enough for the node's next vouch in each shard to be due (a third of the PONG timeout).
async fn vouch_period() {
    tokio::time::sleep(PONG / 3 + Duration::from_millis(150)).await;
}

/// Each way another node ends or moves a session held here, with no order
/// sent: the holder's socket is told within one vouch period, long before the
/// ten minutes after which the session would be checked in full anyway (and
/// before the minute of the old per-session check).
#[tokio::test]
async fn redis_a_session_ended_or_moved_by_another_node_is_told_to_its_socket_at_the_next_vouch() {
    let server = RedisServer::start();
    let (a, orders) = node(&server, 7).await;
    let (b, _) = node(&server, 8).await;
    let now = Clock::new().now();
    let cases = ["take over", "operator end", "end all", "re-attach"];
    for (i, case) in cases.iter().enumerate() {
        let p = pool(&format!("moved{i}"));
        let holder = socket(7, i as u64 + 1);
        let id = held(&a, &p, holder).await;
        a.heartbeat(&p, id, holder, now).await.unwrap();
        let round = a.refresh().await.unwrap();
        assert_eq!(round.gone, 0, "{case}: held");

        // Node b acts; nobody tells node a.
        match *case {
            "take over" => {
                b.take_over(&p, id, new(&p, "phone"), 0).await.unwrap().unwrap();
            }
            "operator end" => {
                b.end(&p, id, None, 0).await.unwrap().unwrap();
            }
            "end all" => {
                assert_eq!(b.end_customer(&p.owner(), None, 0).await.unwrap().len(), 1);
            }
            _ => {
                b.attach(&p, id, socket(8, 1), 0).await.unwrap().unwrap();
            }
        }
        let flag: String = server.cmd(&["GET", &keys::alive(p.shard(), 7)]);
        assert_eq!(flag, keys::MOVED, "{case}: node a's key in the shard is flagged");
        let ttl: i64 = server.cmd(&["PTTL", &keys::alive(p.shard(), 7)]);
        assert!(ttl > 0, "{case}: the flag keeps the key's TTL ({ttl})");

        vouch_period().await;
        // A PONG five seconds after the first check: no full check is due.
        a.heartbeat(&p, id, holder, now + 5_000).await.unwrap();
        let round = a.refresh().await.unwrap();
        assert_eq!(
            round.gone, 1,
            "{case}: the vouch read the flag and the check found it gone"
        );
        let expected = match *case {
            "take over" => Control::TakeOver {
                session_name: "phone".into(),
            },
            "re-attach" => Control::Terminate,
            _ => Control::Expire,
        };
        let told = orders.0.lock().unwrap().clone();
        assert_eq!(told.last(), Some(&(holder, expected)), "{case}: {told:?}");
        let flag: String = server.cmd(&["GET", &keys::alive(p.shard(), 7)]);
        assert_eq!(flag, "r", "{case}: the vouch reset the flag");
    }
    assert_eq!(orders.0.lock().unwrap().len(), cases.len());
}

/// A node ending or taking over a session its own socket holds does not flag
/// itself: it tells its socket directly.
#[tokio::test]
async fn redis_a_node_does_not_flag_itself() {
    let server = RedisServer::start();
    let (a, _) = node(&server, 7).await;
    let now = Clock::new().now();
    let p = pool("own");
    let holder = socket(7, 1);
    let id = held(&a, &p, holder).await;
    a.heartbeat(&p, id, holder, now).await.unwrap();
    a.refresh().await.unwrap();
    a.take_over(&p, id, new(&p, "phone"), 0).await.unwrap().unwrap();
    let flag: String = server.cmd(&["GET", &keys::alive(p.shard(), 7)]);
    assert_eq!(flag, "r");
}

/// Once every session was checked at its first PONG, a shard where nothing
/// happened costs no `HGET` (and no check script) per session and minute:
/// only the vouches, until the ten minutes of the full check are up.
#[tokio::test]
async fn redis_a_quiet_shard_costs_no_check_per_session_and_minute() {
    let server = RedisServer::start();
    let (a, orders) = node(&server, 7).await;
    let now = Clock::new().now();
    let mut sessions = Vec::new();
    for i in 0..20 {
        let p = pool(&format!("quiet{i}"));
        let holder = socket(7, i + 1);
        let id = held(&a, &p, holder).await;
        sessions.push((p, id, holder));
    }
    let beat = |at: Millis| {
        let (a, sessions) = (a.clone(), sessions.clone());
        async move {
            for (p, id, holder) in &sessions {
                a.heartbeat(p, *id, *holder, at).await.unwrap();
            }
            a.refresh().await.unwrap()
        }
    };
    assert_eq!(beat(now).await.refreshed, 20, "the first PONG checks each");
    let (hgets, checks, sets) = (calls(&server, "hget"), calls(&server, "time"), calls(&server, "set"));
    for minute in 1..10 {
        // A vouch every few simulated minutes (each costs real time).
        if minute % 3 == 0 {
            vouch_period().await;
        }
        let round = beat(now + minute * 60_000).await;
        assert_eq!((round.refreshed, round.gone), (0, 0), "minute {minute}");
    }
    assert_eq!(calls(&server, "hget") - hgets, 0, "no HGET for nine minutes");
    // Every script on a pool reads Redis's clock first; the vouch (a script
    // too, one a shard and vouch period) does not.
    assert_eq!(calls(&server, "time") - checks, 0, "no check call either");
    assert!(calls(&server, "set") > sets, "the node vouched meanwhile");
    // Ten minutes after the first check, each is checked in full once.
    let round = beat(now + 10 * 60_000).await;
    assert_eq!(round.refreshed, 20);
    assert_eq!(calls(&server, "hget") - hgets, 20);
    assert!(calls(&server, "time") > checks, "a check call reads the clock");
    assert!(orders.0.lock().unwrap().is_empty());
}

/// A flagged key still vouches for the other sessions its node holds in the
/// shard: they keep their slots for as long as it lives, past their records'
/// own deadlines (here the flag is left in place, with a long TTL, as if the
/// node's next vouch were still to come).
#[tokio::test]
async fn redis_a_flagged_key_still_vouches_for_its_nodes_sessions() {
    let server = RedisServer::start();
    let (a, _) = node(&server, 7).await;
    let (b, _) = node(&server, 8).await;
    let p = pool("flagged");
    let mut ids = Vec::new();
    for n in 1..=2 {
        let id = a
            .admit(&p, new(&p, "tv"), limit(2), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        a.attach(&p, id, socket(7, n), 0).await.unwrap().unwrap();
        ids.push(id);
    }
    a.refresh().await.unwrap();
    b.end(&p, ids[0], None, 0).await.unwrap().unwrap();
    let key = keys::alive(p.shard(), 7);
    let flag: String = server.cmd(&["GET", &key]);
    assert_eq!(flag, keys::MOVED);
    let _: i64 = server.cmd(&["PEXPIRE", &key, "60000"]);
    // Past the second session's own deadline (a PONG timeout after its attach).
    tokio::time::sleep(PONG + Duration::from_millis(300)).await;
    assert!(b.admit(&p, new(&p, "phone"), limit(2), 0).await.unwrap().is_ok());
    let full = b.admit(&p, new(&p, "laptop"), limit(2), 0).await.unwrap();
    assert!(full.is_err(), "the flagged node's session still counts: {full:?}");
}

/// The check a flag brings costs one `HGET` per session moved, not one per
/// session the node holds in the shard: the flagging script names the session
/// in the node's set of moved sessions there, which the node pops.
#[tokio::test]
async fn redis_a_flag_checks_only_the_sessions_moved() {
    let server = RedisServer::start();
    let (a, orders) = node(&server, 7).await;
    let (b, _) = node(&server, 8).await;
    let now = Clock::new().now();
    let shard = pool("same0").shard();
    let pools = pools_in_shard("same", shard, 10);
    let mut sessions = Vec::new();
    for (i, p) in pools.iter().enumerate() {
        let holder = socket(7, i as u64 + 1);
        let id = held(&a, p, holder).await;
        a.heartbeat(p, id, holder, now).await.unwrap();
        sessions.push((p.clone(), id, holder));
    }
    assert_eq!(a.refresh().await.unwrap().refreshed, 10);
    let (p, id, holder) = sessions[3].clone();
    b.end(&p, id, None, 0).await.unwrap().unwrap();
    let moved: Vec<String> = server.cmd(&["SMEMBERS", &keys::moved(shard, 7)]);
    assert_eq!(moved, vec![keys::compact(id)]);

    vouch_period().await;
    let hgets = calls(&server, "hget");
    let round = a.refresh().await.unwrap();
    assert_eq!((round.gone, round.refreshed), (1, 0));
    assert_eq!(calls(&server, "hget") - hgets, 1, "the moved session alone");
    assert_eq!(orders.0.lock().unwrap().clone(), vec![(holder, Control::Expire)]);
    let left: i64 = server.cmd(&["EXISTS", &keys::moved(shard, 7)]);
    assert_eq!(left, 0, "popped");
}

/// A socket whose session is gone is told so once, however many of the node's
/// re-assertions find it gone at once: here two admissions in a shard the node
/// counts lost, each putting the node's sessions there back before it admits,
/// side by side. The held session's record vanished, and a session admitted by
/// another node since took its slot, so each re-assertion finds that it may
/// not come back (EXPIRED); only one may say so to its socket.
#[tokio::test]
async fn redis_a_socket_is_told_expired_once_when_two_reassertions_find_its_session_gone() {
    let server = RedisServer::start();
    let (a, orders) = node(&server, 7).await;
    let (b, _) = node(&server, 8).await;
    let p = pool("told-once");
    let holder = socket(7, 1);
    let id = held(&a, &p, holder).await;
    a.refresh().await.unwrap();
    // The record vanishes (as in a failover that lost it), and node b admits
    // into the freed slot.
    let _: i64 = server.cmd(&["HDEL", &keys::customer(&p), &keys::compact(id)]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(b.admit(&p, new(&p, "phone"), limit(1), 0).await.unwrap().is_ok());
    // Node a's next vouch in the shard fails (its key holds the wrong type):
    // the shard counts as lost until its sessions there are re-asserted.
    let alive = keys::alive(p.shard(), 7);
    let _: i64 = server.cmd(&["DEL", &alive]);
    let _: i64 = server.cmd(&["HSET", &alive, "wrong", "type"]);
    vouch_period().await;
    assert!(a.refresh().await.is_err(), "the vouch failed");
    let _: i64 = server.cmd(&["DEL", &alive]);
    assert!(orders.0.lock().unwrap().is_empty(), "nothing told yet");

    // Two admissions in the shard, side by side: each re-asserts it first.
    let others = pools_in_shard("told-beside", p.shard(), 2);
    let (first, second) = tokio::join!(
        a.admit(&others[0], new(&others[0], "tv"), limit(5), 0),
        a.admit(&others[1], new(&others[1], "tv"), limit(5), 0),
    );
    assert!(first.unwrap().is_ok() && second.unwrap().is_ok());
    a.refresh().await.unwrap();
    let told = orders.0.lock().unwrap().clone();
    assert_eq!(told, vec![(holder, Control::Expire)], "told once, and why");
}

/// One Redis restarted from a snapshot older than its last writes (a crash, and
/// the RDB file of a while ago): the epoch and the node's liveness key came
/// back with the snapshot, so nothing in the data says a held session is
/// missing; the node notices that another server process answers (`run_id`)
/// at its next vouch that asks, and puts the session back without telling
/// its socket anything.
#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_gets_the_held_sessions_back() {
    let mut server = RedisServer::start();
    let (a, orders) = node(&server, 7).await;
    let p = pool("snapshot");
    let before = held(&a, &p, socket(7, 1)).await;
    a.refresh().await.unwrap();
    let _: String = server.cmd(&["SAVE"]);
    // Written after the snapshot: lost with the restart.
    let others = pools_in_shard("snapshot-after", p.shard(), 1);
    let after = held(&a, &others[0], socket(7, 2)).await;
    server.restart_from_snapshot();
    let record = |p: &PoolKey, id: SessionId| -> bool {
        let found: Option<String> = server.cmd(&["HGET", &keys::customer(p), &keys::compact(id)]);
        found.is_some()
    };
    assert!(record(&p, before) && !record(&others[0], after), "the snapshot's state");
    // The node's connection meets the restart on an operation that marks nothing lost.
    for _ in 0..20 {
        if a.locate(before).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rounds every 300 ms for a PONG timeout and two vouch periods (bounded).
    let mut reasserted = 0;
    for _ in 0..((PONG * 2).as_millis() / 300) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        reasserted += a
            .refresh()
            .await
            .expect("no round fails: nothing is lost by an outage")
            .reasserted;
        if record(&others[0], after) {
            break;
        }
    }
    assert!(
        record(&others[0], after),
        "the session written after the snapshot is back"
    );
    assert!(record(&p, before), "the other one is still there");
    assert_eq!(reasserted, 1, "put back by a re-assertion");
    assert!(orders.0.lock().unwrap().is_empty(), "no socket was told anything");
}

/// The ends a store reports.
#[derive(Default)]
struct Reported(std::sync::Mutex<Vec<(SessionId, drisc::domain::ports::EndCause)>>);

impl drisc::domain::ports::SessionEvents for Reported {
    fn ended(&self, _: &PoolKey, _: SessionId, _: drisc::domain::ports::EndCause) {}

    fn report(&self, event: drisc::domain::events::SessionEvent) {
        if let (drisc::domain::events::EventKind::Ended { cause }, Some(id)) = (&event.kind, event.session_id) {
            self.0.lock().unwrap().push((id, *cause));
        }
    }
}

/// A socket ends its session (FINISHED) while its node has not vouched for
/// half a PONG timeout and Redis does not answer (the network to it stalls):
/// another node may have found the session dead meanwhile, so the node cannot
/// answer from what it knows. The end waits for Redis, and is reported (once)
/// when a round has written it and Redis said it ended the session, which
/// was still the socket's.
#[tokio::test]
async fn redis_an_end_that_waited_for_redis_is_reported_once_redis_says_it_ended_the_session() {
    use drisc::domain::ports::{EndCause, Ended};
    // Long enough that the node's liveness key outlives the wait for Redis.
    const LONG_PONG: Duration = Duration::from_secs(14);
    let server = RedisServer::start();
    let relay = crate::support_proxy::Relay::start(([127, 0, 0, 1], server.port).into());
    let reported = Arc::new(Reported::default());
    let a = RedisStore::connect(
        format!("redis://{}", relay.addr).as_str(),
        Timings {
            pong_timeout: LONG_PONG,
            ..timings()
        },
        Duration::from_secs(60),
        NODE_LOST_AFTER,
        TimeSource::Redis,
        Arc::new(Recorder::default()),
    )
    .await
    .unwrap()
    .for_node(7)
    .with_events(reported.clone());
    let p = pool("end-waits");
    let holder = socket(7, 1);
    let id = held(&a, &p, holder).await;
    a.refresh().await.unwrap();
    tokio::time::sleep(LONG_PONG / 2 + Duration::from_millis(200)).await;
    relay.hold();
    let started = std::time::Instant::now();
    let ended = a.end_by_socket(&p, id, holder, EndCause::Finished, 0).await.unwrap();
    assert_eq!(
        ended,
        Ended::Later,
        "answered without Redis, after {:?}",
        started.elapsed()
    );
    assert!(
        reported.0.lock().unwrap().is_empty(),
        "not reported before Redis says so"
    );
    relay.release();
    a.refresh().await.unwrap();
    assert!(
        started.elapsed() < LONG_PONG / 2,
        "the node's key may have run out: {:?}",
        started.elapsed()
    );
    assert_eq!(*reported.0.lock().unwrap(), vec![(id, EndCause::Finished)]);
    let left: Vec<String> = server.cmd(&["HVALS", &keys::customer(&p)]);
    assert!(left.is_empty(), "{left:?}");
    a.refresh().await.unwrap();
    assert_eq!(reported.0.lock().unwrap().len(), 1, "once");
}
