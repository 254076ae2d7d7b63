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
    keys::customer(&PoolKey::from_ids("p", c, "S1"))
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
/// A session for each of `customers`, granted through `a` and `b` in turn, whose
/// players keep playing until `stop`.
async fn play_through_both(
    a: &TestApp,
    b: &TestApp,
    customers: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, crate::players::Player)>> {
    let mut players = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        let node = if i % 2 == 0 { a } else { b };
        let g = node.create_ok(&node.token("p", c.as_str()), "S1", "TV").await;
        players.push(keep_playing(connect_ok(&g.endpoint).await, stop.clone()));
    }
    players
}

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
    let players = play_through_both(&a, &b, &elsewhere, &stop).await;
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

/// A master fails over to a replica that lagged behind it (issue 12 item 1):
/// the replica was cut off while sessions were admitted on the master, so the
/// promoted replica lacks them, yet the shard's epoch and the holding node's
/// liveness key there (written before) survived, and nothing in the data says
/// what was lost. The node notices that another server answers its vouch in
/// that shard and re-asserts its sessions there: each is back in Redis within
/// a few refresh rounds, its player never hears of it, and the limit holds.
/// Sessions on other masters never notice.
#[tokio::test]
async fn a_failover_to_a_lagging_replica_loses_no_held_session() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (
        crate::redis_cluster::node(&cluster, LIMIT).await,
        crate::redis_cluster::node(&cluster, LIMIT).await,
    );
    // One shard: an anchor session held there before (so node a's liveness key
    // and the shard's epoch are on the replica too), and a pool whose sessions
    // will be admitted on the master alone.
    let shard = crate::redis_slots::shard_of("lw-base");
    let in_shard = crate::redis_slots::customers_in_shard("lw", shard, 2);
    let (anchor, lost) = (&in_shard[0], &in_shard[1]);
    let lost_key = customer_key(lost);
    let master = cluster.master_of(&lost_key);
    let replica = cluster.replica_of(master);
    let slot = cluster.slot_of(&lost_key);
    let elsewhere = customers(&cluster, "le", master, false, 4);

    let stop = Arc::new(AtomicBool::new(false));
    let mut players = play_through_both(&a, &b, &elsewhere, &stop).await;
    let g = a.create_ok(&a.token("p", anchor.as_str()), "S1", "TV").await;
    players.push(keep_playing(connect_ok(&g.endpoint).await, stop.clone()));
    // A few refresh rounds: node a vouched in the shard, learning its master.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.on_masters(&["WAIT", "1", "2000"]);

    // The replica falls behind: stopped, and its link cut.
    cluster.signal(replica, "STOP");
    cluster.cut_replication(master);
    let lost_token = a.token("p", lost.as_str());
    let lost_stop = Arc::new(AtomicBool::new(false));
    let mut admitted = Vec::new();
    let mut lost_players = Vec::new();
    for name in ["TV", "Tablet"] {
        let g = a.create_ok(&lost_token, "S1", name).await;
        lost_players.push(keep_playing(connect_ok(&g.endpoint).await, lost_stop.clone()));
        admitted.push(g.session_id);
    }
    // Attached, their first PONG checked: all on the master alone.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let on_master = cluster.keys_in_slot(master, slot);

    // The master dies; the lagging replica takes over; the old master comes
    // back as its replica and drops what it had.
    cluster.signal(master, "STOP");
    cluster.signal(replica, "CONT");
    let on_replica = cluster.keys_in_slot(replica, slot);
    assert!(
        on_replica < on_master,
        "the replica lacks the master's last writes: {on_replica} keys, {on_master} on the master"
    );
    cluster.take_over(replica, &lost_key);
    let promoted_at = tokio::time::Instant::now();
    cluster.signal(master, "CONT");
    cluster.wait_until_replica(master);

    // Every session admitted in the window is back (bounded: a PONG timeout and
    // a vouch period, when the node next asks which server answers, and then some).
    let back = loop {
        let held: i64 = cluster.node_cmd(replica, &["HLEN", &lost_key]).unwrap_or(0);
        if held == admitted.len() as i64 {
            break promoted_at.elapsed();
        }
        assert!(
            promoted_at.elapsed() < Duration::from_secs(30),
            "the sessions lost in the failover were not re-asserted: {held} of {} in Redis",
            admitted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The limit holds on both nodes: the pool is full with exactly them.
    for node in [&a, &b] {
        let refused = node
            .create(&node.token("p", lost.as_str()), json!({"offerId": "S1"}))
            .await;
        assert_eq!(refused.status(), 409, "the pool is full again");
        let body: Value = refused.json().await.unwrap();
        let mut ids: Vec<String> = active_sessions(&body).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        let mut expected = admitted.clone();
        expected.sort();
        assert_eq!(ids, expected, "{body}");
    }
    // Their players were never told anything but PINGs, and play on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    lost_stop.store(true, Ordering::Relaxed);
    let mut lost_back = Vec::new();
    for playing in lost_players {
        let (pings, player) = tokio::time::timeout(Duration::from_secs(10), playing)
            .await
            .expect("the players stop when told")
            .expect("a player whose session was lost in the failover was never disturbed");
        assert!(pings >= 6, "pinged all along: {pings}");
        lost_back.push(player);
    }
    // A take-over through the other node reaches one of them.
    crate::helpers::granted(b.takeover(&lost_token, "S1", "Phone", &admitted[0]).await).await;
    let taken = &mut lost_back[0];
    let message = loop {
        match taken.next_within(Duration::from_secs(5)).await {
            Some(crate::players::Seen::Message(m)) if m["action"] == "PING" => taken.send("PONG").await,
            other => break other,
        }
    };
    assert_eq!(
        message,
        Some(crate::players::Seen::Message(
            json!({"action": "TAKE_OVER", "sessionName": "Phone"})
        ))
    );
    taken.expect_close(4001).await;
    assert!(
        lost_back[1].keep_alive_for(Duration::from_secs(1)).await >= 1,
        "the other plays on"
    );

    // The sessions on other masters (and the anchor) never noticed.
    stop.store(true, Ordering::Relaxed);
    for playing in players {
        let (pings, mut player) = tokio::time::timeout(Duration::from_secs(10), playing)
            .await
            .expect("the players stop when told")
            .expect("no other player was disturbed by the failover");
        assert!(pings >= 10, "pinged all along: {pings}");
        assert!(player.keep_alive_for(Duration::from_secs(1)).await >= 1, "still pinged");
    }
    println!("the sessions lost in the failover were back {back:?} after the promotion");
}
