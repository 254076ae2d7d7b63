//! Several drisc nodes sharing a real Redis Cluster (three masters, three
//! replicas on loopback): limits under races across nodes and shards, orders
//! across nodes, and a master killed during play.

use std::time::Duration;

use drisc::Settings;
use drisc::config::SessionBackend;
use drisc::domain::PoolKey;
use drisc::store::redis::keys;
use serde_json::json;

use crate::helpers::{TestApp, all_at_once, granted, spawn_app_with};
use crate::players::{Seen, connect_ok};
use crate::support_process::{ProcessOptions, ServerProcess};
use crate::support_redis::RedisCluster;

const SECRET: &str = "redis-cluster-test-session-secret";

/// A node on the cluster: nodes share the session secret, PING often and look
/// at Redis every 200 ms. The PONG timeout is longer than a failover takes
/// here (a node is counted failed after a second), so a held session outlives
/// one; what a longer stall does is not under test here.
pub(crate) async fn node(cluster: &RedisCluster, limit: u32) -> TestApp {
    let seeds = cluster.seeds();
    spawn_app_with(move |s: &mut Settings| {
        s.storage.sessions = SessionBackend::Redis;
        s.storage.redis_url = "redis://127.0.0.1:1/".into(); // not used: the seeds are
        s.storage.redis_cluster_nodes = seeds;
        s.auth.session_secret = SECRET.into();
        s.publishers.default_session_limit = limit;
        s.limits.customer_burst = 1000;
        s.liveness.ping_interval = Duration::from_millis(500);
        s.liveness.pong_timeout = Duration::from_secs(8);
        s.liveness.reconnect_grace = Duration::from_secs(2);
        s.cluster.refresh_interval = Duration::from_millis(200);
    })
    .await
}

/// The port of the master holding customer `c`'s sessions (publisher "p").
fn master_of(cluster: &RedisCluster, c: &str) -> u16 {
    let pool = PoolKey::from_ids("p", c, "S1");
    cluster.master_of(&keys::customer(&pool))
}

#[tokio::test]
async fn creates_racing_over_nodes_and_shards_never_exceed_any_customers_limit() {
    let cluster = RedisCluster::start();
    let nodes = [
        node(&cluster, 2).await,
        node(&cluster, 2).await,
        node(&cluster, 2).await,
    ];
    let customers: Vec<String> = (0..12).map(|i| format!("race{i}")).collect();
    let masters: std::collections::BTreeSet<u16> = customers.iter().map(|c| master_of(&cluster, c)).collect();
    assert!(masters.len() >= 2, "the customers span several masters: {masters:?}");
    // Ten creates per customer, spread over the three nodes, all at once.
    let mut requests = Vec::new();
    for c in &customers {
        let token = nodes[0].token("p", c.as_str());
        for i in 0..10 {
            requests.push(nodes[i % 3].post_request(
                "/sessions",
                &token,
                &json!({"offerId": "S1", "sessionName": format!("{c}-{i}")}),
            ));
        }
    }
    let answers = all_at_once(requests).await;
    for (c, answers) in customers.iter().zip(answers.chunks(10)) {
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{c}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 8, "{c}: {statuses:?}");
    }
}

#[tokio::test]
async fn a_takeover_on_one_node_reaches_the_socket_held_on_another() {
    let cluster = RedisCluster::start();
    let (a, b) = (node(&cluster, 1).await, node(&cluster, 1).await);
    let token = a.token("p", "tk1");
    let tv = a.create_ok(&token, "S1", "TV").await;
    let mut player = connect_ok(&tv.endpoint).await;
    granted(b.takeover(&token, "S1", "Phone", &tv.session_id).await).await;
    let message = player.next_within(Duration::from_secs(2)).await;
    assert_eq!(
        message,
        Some(Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "Phone"})))
    );
    player.expect_close(4001).await;
    // The operator's look-up by id finds the new session through its shard's index.
    let phone = a.create(&token, json!({"offerId": "S1"})).await;
    assert_eq!(phone.status(), 409, "the taken-over pool holds the new session");
}

#[tokio::test]
async fn a_master_killed_during_play_is_replaced_and_sessions_elsewhere_never_notice() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (node(&cluster, 1).await, node(&cluster, 1).await);
    // A customer on the master about to die, one on another master, and a
    // second customer on the doomed master to probe admissions with.
    let doomed = master_of(&cluster, "fo0");
    let other = (1..200)
        .map(|i| format!("fo{i}"))
        .find(|c| master_of(&cluster, c) != doomed)
        .unwrap();
    let probe = (1..200)
        .map(|i| format!("probe{i}"))
        .find(|c| master_of(&cluster, c) == doomed)
        .unwrap();
    let (victim_token, other_token) = (a.token("p", "fo0"), a.token("p", other.as_str()));
    let victim_tv = a.create_ok(&victim_token, "S1", "TV").await;
    let other_tv = b.create_ok(&other_token, "S1", "TV").await;
    let mut victim_player = connect_ok(&victim_tv.endpoint).await;
    let other_player = connect_ok(&other_tv.endpoint).await;
    victim_player.keep_alive_for(Duration::from_secs(1)).await;
    // The replicas have what the masters acknowledged.
    cluster.on_masters(&["WAIT", "1", "1000"]);

    cluster.kill(doomed);
    // The player on another shard keeps playing through the failover, and after.
    let playing = other_player.keep_alive_in_background(Duration::from_secs(12));
    let victim_playing = victim_player.keep_alive_in_background(Duration::from_secs(10));
    // Admissions on the dead master's slots fail (bounded: each request is
    // answered) until its replica is promoted, then resume.
    let probe_token = a.token("p", probe.as_str());
    // Generous: on a loaded machine the election itself can take many seconds.
    let resumed = a
        .create_status_once_available(&probe_token, json!({"offerId": "S1"}), Duration::from_secs(60))
        .await;
    assert_eq!(
        resumed, 200,
        "refused only with 503 while the shard had no master, then admitted"
    );
    assert_ne!(master_of(&cluster, "fo0"), doomed, "a replica took over");
    // The limit holds on the promoted replica: the held session still counts,
    // through either node. A node that counted its shards lost during the
    // failover answers 503 until its next round reaches the new master (node b
    // may only get there after a's probe): never 200.
    for (node, token) in [(&a, &victim_token), (&b, &victim_token), (&b, &other_token)] {
        let status = node
            .create_status_once_available(token, json!({"offerId": "S1"}), Duration::from_secs(30))
            .await;
        assert_eq!(status, 409, "the held session still counts after the failover");
    }
    let (pings, _other_player) = playing.await.unwrap();
    assert!(pings >= 10, "pinged all along: {pings}");
    victim_playing.await.unwrap();
}

/// The binary, configured through the environment as an operator would (a
/// comma-separated list of seeds), keeps its sessions on the cluster beside an
/// in-process node; killed with SIGKILL, its session is freed once its
/// liveness key in the session's shard expires (one PONG timeout), not before.
#[tokio::test]
async fn a_node_process_configured_by_environment_shares_the_cluster_and_its_death_frees_its_sessions() {
    let cluster = RedisCluster::start();
    let survivor = node(&cluster, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let options = ProcessOptions::default()
        .env("DRISC__STORAGE__SESSIONS", "redis")
        .env("DRISC__STORAGE__REDIS_CLUSTER_NODES", cluster.seeds().join(","))
        .env("DRISC__AUTH__SESSION_SECRET", SECRET)
        .env("DRISC__LIVENESS__PING_INTERVAL", "500ms")
        .env("DRISC__LIVENESS__PONG_TIMEOUT", "2s")
        .env("DRISC__CLUSTER__REFRESH_INTERVAL", "200ms");
    let mut doomed = ServerProcess::start(dir.path(), options);
    let token = survivor.token("p", "env1");
    let tv = doomed.api().create_ok(&token, "S1", "TV").await;
    let mut player = connect_ok(&tv.endpoint).await;
    player.keep_alive_for(Duration::from_secs(1)).await;
    assert_eq!(survivor.create(&token, json!({"offerId": "S1"})).await.status(), 409);
    // The session is on the master that serves its customer's slot.
    let key = keys::customer(&PoolKey::from_ids("p", "env1", "S1"));
    let held: i64 = cluster.node_cmd(cluster.master_of(&key), &["HLEN", &key]).unwrap();
    assert_eq!(held, 1);

    doomed.kill9();
    let killed_at = tokio::time::Instant::now();
    let mut freed = false;
    while killed_at.elapsed() < Duration::from_secs(10) {
        if survivor.create(&token, json!({"offerId": "S1"})).await.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot is freed once the dead node's vouching expires");
    assert!(
        killed_at.elapsed() >= Duration::from_millis(500),
        "not at once: the node's last vouch still holds"
    );
}
