//! A real Redis Cluster changing under held sessions (issue 12): a slot moved
//! from one master to another while players play and admissions race the move
//! (so ASK and TRYAGAIN redirects are met), and what `/readyz` says while a
//! master is down and after its replica is promoted.
//!
//! Slots are computed from the shards' hash tag (`drisc:{<shard>}:`) alone, so
//! these tests do not depend on the keys' names beyond it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drisc::domain::PoolKey;
use serde_json::{Value, json};

use crate::helpers::{TestApp, active_sessions, all_at_once, granted};
use crate::players::{Player, Seen, connect_ok};
use crate::readiness::{readyz, until_readyz_within};
use crate::support_redis::{RedisCluster, SlotMigration, cluster_node_cmd, error_replies};

const LIMIT: u32 = 2;

/// A node on the cluster, as `redis_cluster.rs` starts them.
async fn node(cluster: &RedisCluster) -> TestApp {
    crate::redis_cluster::node(cluster, LIMIT).await
}

pub(crate) fn shard_of(customer: &str) -> u16 {
    PoolKey::from_ids("p", customer, "S1").shard()
}

/// The hash tag every key of a shard carries: its slot is the shard's slot.
fn shard_tag(shard: u16) -> String {
    format!("drisc:{{{shard}}}:")
}

/// `count` customer ids starting with `prefix` whose sessions are kept in `shard`.
pub(crate) fn customers_in_shard(prefix: &str, shard: u16, count: usize) -> Vec<String> {
    let found: Vec<String> = (0..200_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|c| shard_of(c) == shard)
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "enough customers in shard {shard}");
    found
}

/// A create that must be granted, after a moment: a node whose refresh rounds
/// met the move counts the shard as lost until its next round there (503 until
/// then; bounded).
async fn granted_soon(node: &TestApp, token: &str) -> crate::helpers::Granted {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = node.create(token, json!({"offerId": "S1"})).await;
        if response.status() != 503 {
            return granted(response).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still 503 10 s after the slot moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A player answering every PING until `stop` is set (failing on anything
/// else: an EXPIRED, a close); hands the player back with the PINGs it answered.
pub(crate) fn keep_playing(mut player: Player, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Player)> {
    tokio::spawn(async move {
        let mut pings = 0;
        // Bounded: the test sets `stop` well within this.
        for _ in 0..240 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            pings += player.keep_alive_for(Duration::from_millis(250)).await;
        }
        (pings, player)
    })
}

#[tokio::test]
async fn held_sessions_survive_their_slots_moving_to_another_master() {
    let cluster = RedisCluster::start();
    let (a, b) = (node(&cluster).await, node(&cluster).await);
    // A quiet node: it holds one session in the moving shard and does nothing
    // else there, so only its refresh rounds (pipelines) meet the move.
    let quiet = node(&cluster).await;

    // One shard, on master A, moves to master B. Its customers: two holding a
    // session on either node, one whose session is taken over after the move, one
    // admitted after it, and a fresh "hot" customer per round of racing creates.
    let shard = shard_of("mv0");
    let tag = shard_tag(shard);
    let slot = cluster.slot_of(&tag);
    let from = cluster.master_of(&tag);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let to = *masters.iter().find(|p| **p != from).unwrap();
    let named = customers_in_shard("mv", shard, 5);
    let hot = customers_in_shard("hot", shard, 40);

    let held_a_token = a.token("p", named[0].as_str());
    let held_b_token = b.token("p", named[1].as_str());
    let take_token = a.token("p", named[2].as_str());
    let probe_token = a.token("p", named[3].as_str());
    let held_a = a.create_ok(&held_a_token, "S1", "TV").await;
    let held_b = b.create_ok(&held_b_token, "S1", "TV").await;
    let take = a.create_ok(&take_token, "S1", "TV").await;
    let quiet_token = quiet.token("p", named[4].as_str());
    let quiet_held = quiet.create_ok(&quiet_token, "S1", "TV").await;
    let stop = Arc::new(AtomicBool::new(false));
    let quiet_stop = Arc::new(AtomicBool::new(false));
    let quiet_playing = keep_playing(connect_ok(&quiet_held.endpoint).await, quiet_stop.clone());
    let players = [
        keep_playing(connect_ok(&held_a.endpoint).await, stop.clone()),
        keep_playing(connect_ok(&held_b.endpoint).await, stop.clone()),
        keep_playing(connect_ok(&take.endpoint).await, stop.clone()),
    ];
    let connected_at = tokio::time::Instant::now();
    assert!(cluster.keys_in_slot(from, slot) > 0, "the shard's keys are on A first");

    for port in [from, to] {
        let _: () = cluster_node_cmd(port, &["CONFIG", "RESETSTAT"]).unwrap();
    }
    // The move, one key at a time with a pause between, on a thread of its own
    // while the test goes on creating: a script finding some of its keys gone
    // is answered TRYAGAIN, a command on a key already moved ASK.
    let migration = SlotMigration::new(slot, from, to);
    let moving = {
        let migration = migration.clone();
        let masters = masters.clone();
        tokio::task::spawn_blocking(move || {
            migration.begin();
            std::thread::sleep(Duration::from_millis(300));
            let mut moved = 0;
            // Bounded by the slot's keys (a handful here), and by this count.
            while moved < 1000 && migration.move_keys(1) > 0 {
                moved += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            migration.finish(&masters);
            moved
        })
    };

    // Rounds of creates for a fresh hot customer, three through each node at
    // once, until the slot has moved (bounded by the list of customers).
    let mut rounds: Vec<(String, Vec<(u16, Value)>)> = Vec::new();
    for customer in &hot {
        let token = a.token("p", customer.as_str());
        let requests = (0..6)
            .map(|i| {
                let node = if i % 2 == 0 { &a } else { &b };
                let body = json!({"offerId": "S1", "sessionName": format!("{customer}-{i}")});
                node.post_request("/sessions", &token, &body)
            })
            .collect();
        let answers = all_at_once(requests).await;
        rounds.push((
            customer.clone(),
            answers.into_iter().map(|a| (a.status, a.body)).collect(),
        ));
        if moving.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = tokio::time::timeout(Duration::from_secs(30), moving)
        .await
        .expect("the slot moved within 30 s")
        .expect("the move did not fail");
    assert!(moved > 0, "keys were moved one by one");
    let replies = |kind: &str| -> u64 { [from, to].iter().map(|p| error_replies(*p, kind)).sum() };
    let (ask, tryagain, moved_replies) = (replies("ASK"), replies("TRYAGAIN"), replies("MOVED"));
    assert!(
        ask + tryagain > 0,
        "the creates met the move half done (ASK or TRYAGAIN): {rounds:?}"
    );

    // The slot is B's now, keys and all.
    assert_eq!(cluster.master_of(&tag), to, "the slot is served by B");
    assert_eq!(cluster.keys_in_slot(from, slot), 0, "no key was left on A");
    assert!(cluster.keys_in_slot(to, slot) > 0, "the shard's keys are on B");

    // The limit held in every round: never more granted than it; only a full
    // pool refused (409). No create met the move as an error: one whose keys
    // were half moved (TRYAGAIN) waited for the slot to settle.
    let mut during = std::collections::BTreeMap::<u16, usize>::new();
    for (customer, answers) in &rounds {
        for (status, body) in answers {
            *during.entry(*status).or_default() += 1;
            assert!([200, 409].contains(status), "{customer}: {status} {body}");
        }
        let ids: Vec<String> = answers
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, body)| body["sessionId"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            ids.len() <= LIMIT as usize,
            "{customer}: more granted than the limit: {answers:?}"
        );
        // Filled to the limit now (a create refused only while the pool is full):
        // every session granted during the race is among those the pool holds.
        let token = a.token("p", customer.as_str());
        // (A 503 right after the move is waited out, as in `granted_soon`.)
        let mut refused = None;
        let mut granted_now = 0;
        for _ in 0..100 {
            let response = b.create(&token, json!({"offerId": "S1"})).await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            match status {
                200 => granted_now += 1,
                409 => {
                    refused = Some(body);
                    break;
                }
                503 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("{customer}: after the move a create answered {status} {body}"),
            }
            assert!(
                granted_now <= LIMIT,
                "{customer}: granted past the limit after the move"
            );
        }
        let refused = refused.unwrap_or_else(|| panic!("{customer}: the pool never filled"));
        let held = active_sessions(&refused);
        assert_eq!(
            held.len(),
            LIMIT as usize,
            "{customer}: the pool holds its limit: {refused}"
        );
        for id in &ids {
            assert!(
                held.iter().any(|(held, _)| held == id),
                "{customer}: granted {id} during the move, and it still counts: {refused}"
            );
        }
    }
    println!(
        "creates during the move, by status: {during:?}; {} rounds, {moved} keys moved one by one; \
         replies from the two masters: {ask} ASK, {tryagain} TRYAGAIN, {moved_replies} MOVED; {:?} since the players connected",
        rounds.len(),
        connected_at.elapsed()
    );

    // A new admission on the moved slot, through either node.
    granted_soon(&a, &probe_token).await;
    granted_soon(&b, &probe_token).await;

    // The quiet node's session outlives the move by more than half a PONG
    // timeout (past which a node whose rounds fail stops admitting) and more than
    // a whole one (past which its vouch there would have expired): it still
    // counts, its player is still pinged, and the node still admits.
    tokio::time::sleep(Duration::from_secs(9)).await;
    granted(a.create(&quiet_token, json!({"offerId": "S1"})).await).await;
    let refused = a.create(&quiet_token, json!({"offerId": "S1"})).await;
    let status = refused.status();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(status, 409, "{refused}");
    assert!(
        active_sessions(&refused)
            .iter()
            .any(|(id, _)| *id == quiet_held.session_id),
        "the quiet node's session still counts: {refused}"
    );
    let elsewhere = (0..200)
        .map(|i| format!("qe{i}"))
        .find(|c| shard_of(c) != shard)
        .unwrap();
    granted(
        quiet
            .create(&quiet.token("p", elsewhere.as_str()), json!({"offerId": "S1"}))
            .await,
    )
    .await;
    quiet_stop.store(true, Ordering::Relaxed);
    let (pings, _quiet_player) = tokio::time::timeout(Duration::from_secs(10), quiet_playing)
        .await
        .expect("the quiet player stops when told")
        .expect("the quiet node's player was never disturbed");
    assert!(pings >= 12, "the quiet node's player was pinged all along: {pings}");

    // No held session noticed: each kept being pinged, and keeps being.
    stop.store(true, Ordering::Relaxed);
    let mut players_back = Vec::new();
    for playing in players {
        let (pings, mut player) = tokio::time::timeout(Duration::from_secs(10), playing)
            .await
            .expect("the players stop when told")
            .expect("no player was disturbed during the move");
        println!("a player answered {pings} PINGs in {:?}", connected_at.elapsed());
        assert!(pings >= 2, "pinged all along: {pings}");
        assert!(
            player.keep_alive_for(Duration::from_secs(1)).await >= 1,
            "still pinged after the move"
        );
        players_back.push(player);
    }
    for token in [&held_a_token, &held_b_token] {
        let response = b.create(token, json!({"offerId": "S1"})).await;
        assert_eq!(response.status(), 200, "one slot of two is held, one free");
        let response = a.create(token, json!({"offerId": "S1"})).await;
        assert_eq!(response.status(), 409, "and the held session still counts");
    }

    // A takeover through B reaches the socket held on A, for a pool on the moved slot.
    granted(b.takeover(&take_token, "S1", "Phone", &take.session_id).await).await;
    let mut taken = players_back.pop().unwrap();
    let message = loop {
        match taken.next_within(Duration::from_secs(3)).await {
            Some(Seen::Message(m)) if m["action"] == "PING" => taken.send("PONG").await,
            other => break other,
        }
    };
    assert_eq!(
        message,
        Some(Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "Phone"})))
    );
    taken.expect_close(4001).await;
}

/// `/readyz` during a failover: from when the cluster counts a killed master
/// failed until its replica is promoted, the node says it is not ready (503,
/// `redis unreachable`), then ready again by itself. Not ready is the truth:
/// by default (`cluster-require-full-coverage yes`) a cluster with a slot
/// unserved refuses every command on every master, so no shard admits
/// meanwhile. The replica is kept from taking over until the test has seen the
/// 503 (`cluster-replica-no-failover`), so the window is not missed on a fast
/// machine; a player held on another master plays on throughout.
#[tokio::test]
async fn readyz_is_unready_while_a_master_is_down_and_ready_again_once_its_replica_is_promoted() {
    let mut cluster = RedisCluster::start();
    let app = node(&cluster).await;
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["checks"]["redis"].clone()), (200, json!("up")), "{body}");

    let doomed = cluster.master_of(&shard_tag(shard_of("rz0")));
    let replica = cluster.replica_of(doomed);
    let elsewhere = (1..200)
        .map(|i| format!("rz{i}"))
        .find(|c| cluster.master_of(&shard_tag(shard_of(c))) != doomed)
        .unwrap();
    let token = app.token("p", elsewhere.as_str());
    let held = app.create_ok(&token, "S1", "TV").await;
    let mut player = connect_ok(&held.endpoint).await;
    player.keep_alive_for(Duration::from_millis(600)).await;
    cluster.on_masters(&["WAIT", "1", "1000"]);
    let _: () = cluster
        .node_cmd(replica, &["CONFIG", "SET", "cluster-replica-no-failover", "yes"])
        .unwrap();

    cluster.kill(doomed);
    let killed_at = tokio::time::Instant::now();
    let playing = player.keep_alive_in_background(Duration::from_secs(10));
    // Polled every 100 ms (the probe runs at most once a second).
    let body = until_readyz_within(&app, 503, Duration::from_secs(30)).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["reason"], "redis unreachable", "{body}");
    assert_eq!(body["checks"]["redis"], "down", "{body}");
    assert_eq!(body["checks"]["sqlite"], "up", "{body}");
    let (status, body) = get_livez(&app).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})), "alive all the same");
    println!("/readyz said 503 {:?} after the master was killed", killed_at.elapsed());

    let _: () = cluster
        .node_cmd(replica, &["CONFIG", "SET", "cluster-replica-no-failover", "no"])
        .unwrap();
    // Generous: an election is slow on a loaded machine.
    let body = until_readyz_within(&app, 200, Duration::from_secs(60)).await;
    assert_eq!(body["checks"]["redis"], "up", "{body}");
    // The node asked for the slots' owners learns of the promotion by gossip, which
    // may trail what the node under test already reached (seen on a loaded machine).
    let asked = tokio::time::Instant::now();
    while cluster.master_of(&shard_tag(shard_of("rz0"))) != replica && asked.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.master_of(&shard_tag(shard_of("rz0"))),
        replica,
        "ready again once the replica serves the dead master's slots"
    );
    // Admissions on the dead master's slots resume (a node may first wait for
    // its next vouch there: 503 meanwhile, bounded).
    let on_promoted = app.token("p", "rz0");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.create(&on_promoted, json!({"offerId": "S1"})).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only refused while the shard is being re-asserted");
        assert!(
            tokio::time::Instant::now() < deadline,
            "admissions never resumed after /readyz said ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pings, _player) = playing.await.expect("the player elsewhere never noticed");
    assert!(pings >= 10, "pinged all along: {pings}");
    // The session held elsewhere still counts.
    granted(app.create(&token, json!({"offerId": "S1"})).await).await;
    assert_eq!(app.create(&token, json!({"offerId": "S1"})).await.status(), 409);
}

async fn get_livez(app: &TestApp) -> (u16, Value) {
    let response = app.http.get(app.url("/livez")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
