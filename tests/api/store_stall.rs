//! A session store that stalls (a fork for a snapshot, a network blip, a
//! failover) must not end the sessions whose players go on answering PINGs:
//! the node keeps them while Redis is unreachable, refuses new ones (503), and
//! re-asserts them when Redis answers again, within the limit.

use std::time::Duration;

use drisc::Settings;
use drisc::config::SessionBackend;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app_with};
use crate::players::{Player, Seen, connect_ok};
use crate::support_redis::RedisServer;

/// Sessions the test holds (one customer, the limit exactly).
const PLAYERS: usize = 20;
/// How long Redis is stopped: longer than the PONG timeout, so the node's
/// liveness key runs out while Redis is stopped.
const STALL: Duration = Duration::from_secs(5);

pub(crate) async fn node(redis: &RedisServer, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let url = redis.url.clone();
    spawn_app_with(move |s| {
        s.storage.sessions = SessionBackend::Redis;
        s.storage.redis_url = url;
        s.publishers.default_session_limit = PLAYERS as u32;
        s.limits.customer_burst = 1000;
        s.liveness.ping_interval = Duration::from_millis(500);
        s.liveness.pong_timeout = Duration::from_secs(3);
        s.liveness.reconnect_grace = Duration::from_secs(2);
        s.cluster.refresh_interval = Duration::from_millis(200);
        configure(s);
    })
    .await
}

/// The redis-server's process id, from its own INFO.
pub(crate) fn redis_pid(redis: &RedisServer) -> String {
    let info: redis::InfoDict = redis.cmd(&["INFO", "server"]);
    info.get::<u64>("process_id")
        .expect("INFO names the process")
        .to_string()
}

pub(crate) fn signal(pid: &str, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid)
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Answers every PING for `window`; anything else the player is told is what
/// ended its play (`Err`), with the number of PINGs answered until then.
pub(crate) async fn play_for(player: &mut Player, window: Duration) -> Result<usize, (usize, Seen)> {
    let deadline = tokio::time::Instant::now() + window;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(pings);
        }
        match player.next_within(left).await {
            None => return Ok(pings),
            Some(Seen::Message(m)) if m["action"] == "PING" => {
                pings += 1;
                player.send("PONG").await;
            }
            Some(other) => return Err((pings, other)),
        }
    }
}

#[tokio::test]
async fn a_stalled_redis_ends_no_session_whose_player_answers_pings() {
    let redis = RedisServer::start();
    let app = node(&redis, |_| {}).await;
    let token = app.token("p", "stalled");
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let g = app.create_ok(&token, "live", &format!("TV {i}")).await;
        players.push(connect_ok(&g.endpoint).await);
    }
    // Every session checked once in Redis (the first PONG does it), as in steady play.
    let warmup = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, Duration::from_secs(2)))).await;
    assert!(warmup.iter().all(Result::is_ok), "before the stall: {warmup:?}");

    let pid = redis_pid(&redis);
    let play = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, STALL + Duration::from_secs(8))));
    let stall = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&pid, "STOP");
        // Once a refresh round is late (half the PONG timeout: 1.5 s here), the node
        // admits no one, and sends nothing to Redis that could run when it resumes.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let during = app
            .create(&token, json!({"offerId": "live", "sessionName": "during"}))
            .await;
        let during = during.status().as_u16();
        tokio::time::sleep(STALL.saturating_sub(Duration::from_secs(4))).await;
        signal(&pid, "CONT");
        during
    };
    let (outcomes, during) = tokio::join!(play, stall);
    assert_eq!(during, 503, "a create while Redis is stopped is refused as unavailable");
    let ended: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        ended.is_empty(),
        "{} of {PLAYERS} healthy sessions ended by a {STALL:?} Redis stall: {ended:?}",
        ended.len()
    );

    // Re-asserted: the limit still holds, and every player still plays.
    let refused = app
        .create(&token, json!({"offerId": "live", "sessionName": "one too many"}))
        .await;
    assert_eq!(refused.status().as_u16(), 409, "the pool is full after the stall");
    let still = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, Duration::from_secs(2)))).await;
    assert!(still.iter().all(Result::is_ok), "after the stall: {still:?}");
    let held: u64 = redis.cmd(&["HLEN", &pool_key(&redis)]);
    assert_eq!(held, PLAYERS as u64, "Redis holds every session again");
}

/// The hash of the one customer the test fills, whose one offer is the pool
/// (found by pattern, so the test does not depend on how keys are spelled
/// beyond the `:cs:` customer marker; every offer's sessions of a customer are
/// in that hash).
fn pool_key(redis: &RedisServer) -> String {
    let keys: Vec<String> = redis.cmd(&["KEYS", "drisc:*:cs:*"]);
    keys.into_iter().next().expect("the customer is in Redis")
}

#[tokio::test]
async fn after_a_stall_a_session_admitted_meanwhile_keeps_its_slot_and_the_limit_holds() {
    let redis = RedisServer::start();
    let app = node(&redis, |_| {}).await;
    let token = app.token("p", "stalled");
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let g = app.create_ok(&token, "live", &format!("TV {i}")).await;
        players.push(connect_ok(&g.endpoint).await);
    }
    let warmup = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, Duration::from_secs(2)))).await;
    assert!(warmup.iter().all(Result::is_ok), "before the stall: {warmup:?}");

    let pid = redis_pid(&redis);
    let play = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, STALL + Duration::from_secs(8))));
    let stall = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&pid, "STOP");
        // Sent before the node notices the stall: the client gets 503, but the
        // request waits in Redis's socket and is carried out first when Redis
        // resumes, finding this node's sessions dead (its liveness key expired).
        let early = app.create(&token, json!({"offerId": "live", "sessionName": "early"}));
        let resume = async {
            tokio::time::sleep(STALL).await;
            signal(&pid, "CONT");
        };
        let (early, ()) = tokio::join!(early, resume);
        early.status().as_u16()
    };
    let (outcomes, early) = tokio::join!(play, stall);
    assert_eq!(early, 503, "the client of a create during the stall is told it failed");
    let ended: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().err().map(|_| i))
        .collect();
    // The session admitted on resume is newer than the stall: it keeps its slot,
    // and the newest of the node's sessions gives its own up.
    assert_eq!(ended, vec![PLAYERS - 1], "only the newest session ends: {outcomes:?}");
    let (_, seen) = outcomes[PLAYERS - 1].as_ref().unwrap_err();
    assert_eq!(seen, &Seen::Message(json!({"action": "EXPIRED"})), "it is told EXPIRED");

    let refused = app
        .create(&token, json!({"offerId": "live", "sessionName": "one too many"}))
        .await;
    assert_eq!(refused.status().as_u16(), 409, "the limit holds after the re-assertion");
    // The newest, not put back, stays marked lost (`x`) until its end is
    // reported, `cluster.node_lost_after` later; it holds no slot.
    let records: Vec<String> = redis.cmd(&["HVALS", &pool_key(&redis)]);
    let marked = records.iter().filter(|r| r.starts_with("x|")).count();
    assert_eq!(
        (records.len() - marked, marked),
        (PLAYERS, 1),
        "19 re-asserted sessions and the one admitted on resume, and the one marked lost"
    );
    let others = &mut players[..PLAYERS - 1];
    let still = futures_util::future::join_all(others.iter_mut().map(|p| play_for(p, Duration::from_secs(2)))).await;
    assert!(still.iter().all(Result::is_ok), "after the stall: {still:?}");
}
