//! A master frozen (SIGSTOP: a process starved of CPU, or a VM paused) longer
//! than the cluster's node timeout is failed over by its peers while every
//! drisc node keeps its connection to it open, then comes back (SIGCONT) and
//! rejoins as a replica. In a 100k bench run (issue 12, bench/analysis.md
//! round four) every node's cluster client then answered "timed out" for
//! minutes with the cluster `ok`; this reproduces the failover at test scale
//! and holds the nodes to recovering from it by themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drisc::domain::PoolKey;
use drisc::store::redis::keys;
use serde_json::{Value, json};

use crate::helpers::{TestApp, active_sessions};
use crate::players::connect_ok;
use crate::readiness::until_readyz_within;
use crate::redis_slots::keep_playing;
use crate::support_redis::RedisCluster;

const LIMIT: u32 = 2;

fn customer_key(c: &str) -> String {
    keys::customer(&PoolKey {
        publisher_id: "p".into(),
        customer_id: c.into(),
        offer_id: "S1".into(),
    })
}

/// `count` customers named `prefix<i>` whose sessions the master on `port`
/// holds (`on`) or does not (`!on`).
fn customers(cluster: &RedisCluster, prefix: &str, port: u16, on: bool, count: usize) -> Vec<String> {
    let found: Vec<String> = (0..2_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|c| (cluster.master_of(&customer_key(c)) == port) == on)
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "enough customers for {prefix}");
    found
}

/// Fills `customer`'s pool through `node` (503s waited out, bounded) and
/// returns the 409's body: the pool holds exactly its limit, never more.
async fn fill(node: &TestApp, token: &str) -> Value {
    let mut granted = 0;
    for _ in 0..100 {
        let status = node
            .create_status_once_available(token, json!({"offerId": "S1"}), Duration::from_secs(30))
            .await;
        match status {
            200 => granted += 1,
            409 => {
                let refused = node.create(token, json!({"offerId": "S1"})).await;
                assert_eq!(refused.status(), 409, "still full");
                return refused.json().await.unwrap();
            }
            other => panic!("a create answered {other} after the failover"),
        }
        assert!(granted <= LIMIT, "granted past the limit");
    }
    panic!("the pool never filled");
}

#[tokio::test]
async fn a_frozen_master_is_failed_over_and_every_node_admits_on_its_slots_again() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (
        crate::redis_cluster::node(&cluster, LIMIT).await,
        crate::redis_cluster::node(&cluster, LIMIT).await,
    );
    let frozen = cluster.master_of(&customer_key("fz0"));
    let replica = cluster.replica_of(frozen);
    let on_frozen = customers(&cluster, "fz", frozen, true, 8);
    let elsewhere = customers(&cluster, "fe", frozen, false, 4);

    // Sessions held on the other masters, through both nodes, played all along.
    let stop = Arc::new(AtomicBool::new(false));
    let mut players = Vec::new();
    for (i, c) in elsewhere.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        let g = node.create_ok(&node.token("p", c.as_str()), "S1", "TV").await;
        players.push(keep_playing(connect_ok(&g.endpoint).await, stop.clone()));
    }
    // And one on the frozen master's slots.
    let held_token = a.token("p", on_frozen[0].as_str());
    let held = a.create_ok(&held_token, "S1", "TV").await;
    let mut held_player = connect_ok(&held.endpoint).await;
    held_player.keep_alive_for(Duration::from_secs(1)).await;
    cluster.on_masters(&["WAIT", "1", "1000"]);
    // Played on its own task: a create during the freeze may take seconds.
    let held_stop = Arc::new(AtomicBool::new(false));
    let held_playing = keep_playing(held_player, held_stop.clone());

    cluster.signal(frozen, "STOP");
    let frozen_at = tokio::time::Instant::now();
    // Creates on the frozen master's slots through both nodes until its replica
    // serves them (bounded: 60 s, one round of two every 200 ms).
    let mut during = std::collections::BTreeMap::<u16, usize>::new();
    let promoted = loop {
        for (i, node) in [&a, &b].into_iter().enumerate() {
            let token = node.token("p", on_frozen[1 + i].as_str());
            let status = node.create(&token, json!({"offerId": "S1"})).await.status().as_u16();
            *during.entry(status).or_default() += 1;
            assert!([200, 409, 503].contains(&status), "during the freeze: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if cluster.master_of(&customer_key(&on_frozen[0])) == replica {
            break frozen_at.elapsed();
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(60),
            "the replica was never promoted"
        );
    };
    // The old master comes back and rejoins as its replica's replica.
    cluster.signal(frozen, "CONT");
    let promoted_at = tokio::time::Instant::now();

    // Admissions on its slots resume on both nodes, within a bounded time after
    // the promotion, and the limit holds.
    let mut resumed = Vec::new();
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let token = node.token("p", on_frozen[3 + i].as_str());
        let status = node
            .create_status_once_available(&token, json!({"offerId": "S1"}), Duration::from_secs(30))
            .await;
        assert_eq!(status, 200, "admissions on the promoted replica's slots resumed");
        resumed.push(promoted_at.elapsed());
    }
    for (i, node) in [&a, &b].into_iter().enumerate() {
        for c in [&on_frozen[1 + i], &on_frozen[5 + i]] {
            let refused = fill(node, &node.token("p", c.as_str())).await;
            assert_eq!(active_sessions(&refused).len(), LIMIT as usize, "{c}: {refused}");
        }
    }
    for node in [&a, &b] {
        let body = until_readyz_within(node, 200, Duration::from_secs(30)).await;
        assert_eq!(body["checks"]["redis"], "up", "{body}");
    }
    // The session held on the frozen master's slots still counts (re-asserted
    // if it had to be): one more fits, then the pool is full.
    let refused = fill(&b, &held_token).await;
    let still_held = active_sessions(&refused).iter().any(|(id, _)| *id == held.session_id);
    assert!(
        still_held,
        "the session held on the frozen master still counts: {refused}"
    );
    // And its player was never told otherwise.
    held_stop.store(true, Ordering::Relaxed);
    let (pings, _) = tokio::time::timeout(Duration::from_secs(10), held_playing)
        .await
        .expect("the player stops when told")
        .expect("the player on the frozen master's slots played through the failover");
    assert!(pings >= 10, "pinged all along: {pings}");

    // The sessions on the other masters never noticed.
    stop.store(true, Ordering::Relaxed);
    for playing in players {
        let (pings, mut player) = tokio::time::timeout(Duration::from_secs(10), playing)
            .await
            .expect("the players stop when told")
            .expect("no player elsewhere was disturbed by the failover");
        assert!(pings >= 10, "pinged all along: {pings}");
        assert!(player.keep_alive_for(Duration::from_secs(1)).await >= 1, "still pinged");
    }
    println!(
        "frozen master failed over after {promoted:?}; creates during the freeze by status: {during:?}; \
         admissions resumed {resumed:?} after the promotion on nodes a and b"
    );
}
