//! A Redis that is slow, not stalled (issue 12's re-assertion storm): a
//! refresh round comes late, so the node counts every shard as possibly lost
//! and stops admitting until a round reaches Redis again; but where its vouch
//! then finds the node's liveness key still there, nothing was lost and no
//! session is re-asserted. Before, every held pool cost a re-assertion script
//! after each late round, which on a Redis already slow made the next rounds
//! later still.

use std::time::Duration;

use serde_json::json;

use crate::players::connect_ok;
use crate::store_stall::{node, play_for, redis_pid, signal};
use crate::support_redis::RedisServer;

/// Customers, each holding its limit.
const CUSTOMERS: usize = 10;
const LIMIT: u32 = 2;
/// The PONG timeout here: a round is late after half of it (6 s), and the node's
/// liveness key, rewritten every third of it (4 s), lives a whole one.
const PONG: Duration = Duration::from_secs(12);
/// Redis stopped longer than half a PONG timeout (a round in flight comes
/// late) but shorter than what the liveness key has left (at least 12 − 4 −
/// a round's 0.2 s): slow, not lost.
const SLOW: Duration = Duration::from_millis(6_800);

/// How many times Redis ran `command` (`INFO commandstats`).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis.cmd(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_late_round_whose_vouches_still_hold_re_asserts_no_session() {
    let redis = RedisServer::start();
    let app = node(&redis, |s| {
        s.publishers.default_session_limit = LIMIT;
        s.liveness.pong_timeout = PONG;
    })
    .await;
    let tokens: Vec<String> = (0..CUSTOMERS)
        .map(|c| app.token("p", format!("slow{c}").as_str()))
        .collect();
    let mut players = Vec::new();
    for token in &tokens {
        for i in 0..LIMIT {
            let g = app.create_ok(token, "live", &format!("TV {i}")).await;
            players.push(connect_ok(&g.endpoint).await);
        }
    }
    // Every session checked once (its first PONG), as in steady play.
    let warmup = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, Duration::from_secs(2)))).await;
    assert!(warmup.iter().all(Result::is_ok), "before: {warmup:?}");

    // A pool's scripts read the customer's hash whole (`HGETALL`): the
    // re-assertion's do, a check does not (`HGET`), and nothing else runs on
    // these pools while their players only answer PINGs.
    let pid = redis_pid(&redis);
    let before = calls(&redis, "hgetall");
    let play = futures_util::future::join_all(players.iter_mut().map(|p| play_for(p, SLOW + Duration::from_secs(4))));
    // No create meanwhile: one sent before the node counts the round late would
    // wait in Redis's socket and run (an admission script) when it resumes. That
    // a late round stops admissions is `store_stall`'s to show.
    let slow = async {
        signal(&pid, "STOP");
        tokio::time::sleep(SLOW).await;
        signal(&pid, "CONT");
    };
    let (outcomes, ()) = tokio::join!(play, slow);
    let ended: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(ended.is_empty(), "no session ended: {ended:?}");
    let after = calls(&redis, "hgetall");
    assert_eq!(
        after - before,
        0,
        "no pool was re-asserted after a late round whose liveness keys held ({} HGETALL)",
        after - before
    );

    // The node admits again, and every pool still holds its limit.
    let fresh = app.token("p", "slow-fresh");
    assert_eq!(app.create(&fresh, json!({"offerId": "live"})).await.status(), 200);
    for token in &tokens {
        assert_eq!(
            app.create(token, json!({"offerId": "live"})).await.status(),
            409,
            "the pool still holds its sessions"
        );
    }
}
