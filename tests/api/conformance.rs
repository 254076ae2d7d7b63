//! One conformance suite for every session store: the in-memory pools and the
//! Redis scripts must apply the same rules, so single-node and cluster behave
//! the same. Every method of `SessionStore` is held to its contract here on both
//! stores, and `LocalSessions` on the store that has it. Time is driven through
//! `now` (the Redis store reads the caller's clock in these tests), so expiry is
//! tested without sleeping.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drisc::domain::listing::{Position, SessionQuery};
use drisc::domain::pool::{Granted, Limits, NewSession, Refusal};
use drisc::domain::ports::{Control, Heartbeat, LocalSessions, Notifier, SessionStore, StoreError};
use drisc::domain::{Clock, Customer, Holder, Millis, PoolKey, Session, SessionId, SessionState, Timings};
use drisc::store::MemoryStore;
use drisc::store::redis::{RedisStore, RedisTarget, TimeSource, keys};

use super::support_redis::{RedisCluster, RedisServer};

const CONNECT: u64 = 30_000;
const PONG: u64 = 25_000;
const GRACE: u64 = 20_000;
/// How long a session whose node stopped stays marked lost before its end is reported (Redis).
const LOST_AFTER: u64 = 120_000;
const NODE_LOST_AFTER: Duration = Duration::from_millis(LOST_AFTER);

pub fn timings() -> Timings {
    Timings {
        ping_interval: Duration::from_secs(10),
        pong_timeout: Duration::from_millis(PONG),
        reconnect_grace: Duration::from_millis(GRACE),
        connect_timeout: Duration::from_millis(CONNECT),
    }
}

/// Orders the store sent to sockets (the Redis store's refresh sends them).
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<(Holder, Control)>>);

impl Notifier for Recorder {
    fn notify(&self, holder: Holder, control: Control) {
        self.0.lock().unwrap().push((holder, control));
    }
}

/// A store under test, with what the suite needs to drive it.
pub struct Subject {
    pub store: Arc<dyn SessionStore>,
    /// The store's `LocalSessions`, if it has them (the memory store).
    pub local: Option<Arc<dyn LocalSessions>>,
    redis: Option<(Arc<RedisStore>, RedisServer)>,
    /// The store on a Redis Cluster, and the cluster.
    cluster: Option<(Arc<RedisStore>, RedisCluster)>,
    pub orders: Arc<Recorder>,
}

impl Subject {
    pub fn memory() -> Subject {
        let store = Arc::new(MemoryStore::new(timings()));
        Subject {
            store: store.clone(),
            local: Some(store),
            redis: None,
            cluster: None,
            orders: Arc::default(),
        }
    }

    pub async fn redis() -> Subject {
        let server = RedisServer::start();
        let orders: Arc<Recorder> = Arc::default();
        let store = Arc::new(
            RedisStore::connect(
                &server.url,
                timings(),
                Duration::from_secs(60),
                NODE_LOST_AFTER,
                TimeSource::Caller,
                orders.clone(),
            )
            .await
            .unwrap(),
        );
        Subject {
            store: store.clone(),
            local: None,
            redis: Some((store, server)),
            cluster: None,
            orders,
        }
    }

    /// The Redis store on a real Redis Cluster of three masters (no replicas: no
    /// test of the suite fails a node over, and a replica costs seconds to sync).
    pub async fn redis_cluster() -> Subject {
        let cluster = RedisCluster::start_masters();
        let orders: Arc<Recorder> = Arc::default();
        let store = Arc::new(
            RedisStore::connect(
                RedisTarget::cluster(cluster.seeds()),
                timings(),
                Duration::from_secs(60),
                NODE_LOST_AFTER,
                TimeSource::Caller,
                orders.clone(),
            )
            .await
            .unwrap(),
        );
        Subject {
            store: store.clone(),
            local: None,
            redis: None,
            cluster: Some((store, cluster)),
            orders,
        }
    }

    /// Makes queued heartbeats take effect (the Redis store batches them).
    pub async fn flush(&self) {
        if let Some((store, _)) = &self.redis {
            store.refresh().await.unwrap();
        }
        if let Some((store, _)) = &self.cluster {
            store.refresh().await.unwrap();
        }
    }

    pub fn redis_server(&self) -> Option<&RedisServer> {
        self.redis.as_ref().map(|(_, s)| s)
    }
}

pub(crate) fn pool(customer: &str) -> PoolKey {
    PoolKey::from_ids("pub", customer, "offer")
}

/// Pools named `prefix<i>` in `shard`: `count` of them.
pub(crate) fn pools_in_shard(prefix: &str, shard: u16, count: usize) -> Vec<PoolKey> {
    let found: Vec<PoolKey> = (0..200_000)
        .map(|i| pool(&format!("{prefix}{i}")))
        .filter(|p| p.shard() == shard)
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "enough pools in shard {shard}");
    found
}

/// A new session of `p`'s customer: its id carries the customer's shard, as
/// the ids `domain::control` makes do.
pub(crate) fn new(p: &PoolKey, name: &str) -> NewSession {
    NewSession {
        id: SessionId::for_customer(&p.owner()),
        name: name.into(),
    }
}

/// A realistic "now": the Redis store also prunes with Redis's clock in places.
fn t0() -> Millis {
    Clock::new().now()
}

/// Pools per customer in the rules that are not about that cap.
const POOLS: u32 = 16;

pub(crate) fn limit(sessions: u32) -> Limits {
    Limits {
        sessions,
        pools_per_customer: POOLS,
        customer_sessions: None,
    }
}

async fn admit(s: &Subject, p: &PoolKey, name: &str, sessions: u32, now: Millis) -> Option<SessionId> {
    s.store
        .admit(p, new(p, name), limit(sessions), now)
        .await
        .unwrap()
        .ok()
        .map(|g| g.session.id)
}

/// Admits under a cap of `pools` per customer: the session, or why it was refused.
async fn admit_capped(s: &Subject, p: &PoolKey, sessions: u32, pools: u32, now: Millis) -> Result<SessionId, Refusal> {
    let limits = Limits {
        sessions,
        pools_per_customer: pools,
        customer_sessions: None,
    };
    s.store
        .admit(p, new(p, "device"), limits, now)
        .await
        .unwrap()
        .map(|g| g.session.id)
}

/// The pool of customer `customer` on offer `offer`.
fn offer_pool(customer: &str, offer: &str) -> PoolKey {
    pool(customer).with_offer(offer)
}

// Several worker threads, so the parallel rules race for real on the memory
// store too (on one thread its operations would simply take turns).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Subject::memory()).await; })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Subject::redis().await).await; })*
        }
        mod redis_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Subject::redis_cluster().await).await; })*
        }
    };
}

conformance!(
    admits_up_to_the_limit_and_lists_the_holders_in_creation_order,
    a_pending_session_stops_counting_at_its_connect_timeout,
    a_live_session_is_kept_by_heartbeats_and_dies_without_them,
    a_second_socket_takes_the_session_and_the_first_loses_it,
    a_detached_session_waits_for_the_grace_only,
    ending_frees_the_slot_and_only_the_holder_can_end_it,
    takeover_swaps_the_victim_for_the_new_session,
    a_new_session_names_the_live_sessions_to_ping,
    a_grant_counts_the_sessions_beside_it_and_not_the_dead,
    parallel_admissions_never_exceed_the_limit,
    pools_of_different_customers_are_separate,
    a_session_is_located_by_its_id_until_it_ends,
    restored_sessions_count_again,
    a_dead_session_cannot_be_ended,
    a_customer_holds_sessions_in_at_most_the_cap_of_pools,
    a_pool_whose_sessions_all_died_or_ended_no_longer_counts_against_the_cap,
    parallel_first_sessions_on_distinct_offers_open_exactly_the_cap_of_pools,
    restored_sessions_open_their_pools_whatever_the_cap,
    a_customers_sessions_are_listed_across_offers_page_by_page_and_no_one_elses,
    ending_a_customers_sessions_frees_their_slots_and_leaves_everyone_elses,
    only_the_socket_that_holds_a_live_session_may_heartbeat_it,
    a_heartbeat_moves_the_deadline_to_one_pong_timeout_after_it,
    a_pool_is_listed_in_creation_order_without_its_dead_sessions,
    a_taken_over_session_is_located_no_more_and_its_successor_is,
    restoring_a_session_the_pool_has_already_changes_nothing,
    sessions_are_counted_by_state_as_far_as_the_store_knows,
    handing_over_keeps_held_sessions_for_their_players_and_no_dead_ones,
    dead_sessions_are_reaped_once_where_kept_locally_and_expire_by_themselves_elsewhere,
    a_snapshot_holds_every_session_and_restores_into_an_equal_store,
    ending_a_customers_sessions_unindexes_them_and_a_second_time_finds_none,
    the_household_cap_counts_the_customers_sessions_across_offers,
    a_full_pool_is_refused_as_full_before_the_household_cap,
    sessions_that_died_or_ended_leave_room_under_the_household_cap,
    parallel_admissions_on_many_offers_never_exceed_the_household_cap,
    a_takeover_under_the_household_cap_swaps_without_counting,
);

/// Admits under a household cap of `household` sessions across offers.
async fn admit_household(
    s: &Subject,
    p: &PoolKey,
    sessions: u32,
    household: u32,
    now: Millis,
) -> Result<SessionId, Refusal> {
    let limits = Limits {
        sessions,
        pools_per_customer: POOLS,
        customer_sessions: Some(household),
    };
    s.store
        .admit(p, new(p, "device"), limits, now)
        .await
        .unwrap()
        .map(|g| g.session.id)
}

async fn the_household_cap_counts_the_customers_sessions_across_offers(s: Subject) {
    let now = t0();
    let a1 = admit_household(&s, &offer_pool("home", "a"), 5, 3, now).await.unwrap();
    let b1 = admit_household(&s, &offer_pool("home", "b"), 5, 3, now + 1)
        .await
        .unwrap();
    let a2 = admit_household(&s, &offer_pool("home", "a"), 5, 3, now + 2)
        .await
        .unwrap();
    let refused = admit_household(&s, &offer_pool("home", "c"), 5, 3, now + 3).await;
    let Err(Refusal::Household(full)) = refused else {
        panic!("the fourth session across offers is refused: {refused:?}");
    };
    let ids: Vec<_> = full.active.iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![a1, b1, a2], "every offer's sessions, oldest first");
    assert!(
        admit_household(&s, &offer_pool("home", "a"), 5, 3, now + 3)
            .await
            .is_err(),
        "a pool with room of its own is refused too"
    );
    assert!(
        s.store
            .list(&offer_pool("home", "c"), now + 3)
            .await
            .unwrap()
            .is_empty()
    );
    // Per customer: a neighbour is not counted, and without a cap nothing is.
    admit_household(&s, &offer_pool("home-2", "c"), 5, 3, now + 4)
        .await
        .unwrap();
    assert!(admit(&s, &offer_pool("home", "c"), "tv", 5, now + 4).await.is_some());
}

async fn a_full_pool_is_refused_as_full_before_the_household_cap(s: Subject) {
    let now = t0();
    admit_household(&s, &offer_pool("full-first", "a"), 1, 1, now)
        .await
        .unwrap();
    // Both limits are reached: the pool's own comes first, so its offer's
    // onLimit policy (evict, monitor) can still apply.
    let refused = admit_household(&s, &offer_pool("full-first", "a"), 1, 1, now + 1).await;
    assert!(
        matches!(&refused, Err(Refusal::Full(f)) if f.active.len() == 1),
        "{refused:?}"
    );
}

async fn sessions_that_died_or_ended_leave_room_under_the_household_cap(s: Subject) {
    let now = t0();
    let a = offer_pool("home-dead", "a");
    let b = offer_pool("home-dead", "b");
    // Never connected: each counts until its connect timeout only.
    admit_household(&s, &a, 5, 2, now).await.unwrap();
    let b_at = now + CONNECT - 1_000;
    admit_household(&s, &b, 5, 2, b_at).await.unwrap();
    assert!(admit_household(&s, &b, 5, 2, b_at + 500).await.is_err());
    let later = now + CONNECT + 1;
    let third = admit_household(&s, &b, 5, 2, later).await.unwrap();
    assert!(admit_household(&s, &a, 5, 2, later).await.is_err(), "two alive again");
    s.store.end(&b, third, None, later + 1).await.unwrap().unwrap();
    admit_household(&s, &a, 5, 2, later + 2).await.unwrap();
}

async fn parallel_admissions_on_many_offers_never_exceed_the_household_cap(s: Subject) {
    let now = t0();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120 {
        let store = s.store.clone();
        let p = offer_pool("home-hot", &format!("o{}", i % 6));
        tasks.spawn(async move {
            let limits = Limits {
                sessions: 3,
                pools_per_customer: POOLS,
                customer_sessions: Some(5),
            };
            store.admit(&p, new(&p, "d"), limits, now).await.unwrap().is_ok()
        });
    }
    let granted = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(granted, 5);
    let query = SessionQuery {
        customer: Customer {
            publisher_id: "pub".into(),
            customer_id: "home-hot".into(),
        },
        offer_id: None,
        after: None,
        limit: 100,
    };
    assert_eq!(s.store.customer_sessions(&query, now).await.unwrap().sessions.len(), 5);
}

async fn a_takeover_under_the_household_cap_swaps_without_counting(s: Subject) {
    let now = t0();
    let a = offer_pool("home-swap", "a");
    let victim = admit_household(&s, &a, 2, 2, now).await.unwrap();
    admit_household(&s, &offer_pool("home-swap", "b"), 2, 2, now)
        .await
        .unwrap();
    assert!(matches!(
        admit_household(&s, &a, 2, 2, now + 1).await,
        Err(Refusal::Household(_))
    ));
    let done = s.store.take_over(&a, victim, new(&a, "phone"), now + 1).await.unwrap();
    assert!(done.is_some(), "a takeover swaps a slot: the cap does not stop it");
    assert!(matches!(
        admit_household(&s, &a, 2, 2, now + 2).await,
        Err(Refusal::Household(f)) if f.active.len() == 2
    ));
}

async fn a_customer_holds_sessions_in_at_most_the_cap_of_pools(s: Subject) {
    let now = t0();
    for offer in ["a", "b", "c"] {
        admit_capped(&s, &offer_pool("cap1", offer), 2, 3, now).await.unwrap();
    }
    let refused = admit_capped(&s, &offer_pool("cap1", "d"), 2, 3, now + 1).await;
    assert!(matches!(refused, Err(Refusal::TooManyPools)), "{refused:?}");
    assert!(
        s.store
            .list(&offer_pool("cap1", "d"), now + 1)
            .await
            .unwrap()
            .is_empty()
    );
    // A pool the customer holds still admits up to its own limit, then is full.
    admit_capped(&s, &offer_pool("cap1", "a"), 2, 3, now + 2).await.unwrap();
    let full = admit_capped(&s, &offer_pool("cap1", "a"), 2, 3, now + 3).await;
    assert!(matches!(full, Err(Refusal::Full(_))), "{full:?}");
    // The cap is per customer: the same publisher's other customers are not counted.
    admit_capped(&s, &offer_pool("cap1-other", "d"), 2, 3, now + 4)
        .await
        .unwrap();
}

async fn a_pool_whose_sessions_all_died_or_ended_no_longer_counts_against_the_cap(s: Subject) {
    let now = t0();
    admit_capped(&s, &offer_pool("cap2", "a"), 1, 2, now).await.unwrap();
    let b = offer_pool("cap2", "b");
    let second = admit_capped(&s, &b, 1, 2, now + 10_000).await.unwrap();
    // Live until now + 10 000 + PONG, after a's connect timeout.
    s.store
        .attach(&b, second, Holder(8), now + 10_000)
        .await
        .unwrap()
        .unwrap();
    assert!(
        admit_capped(&s, &offer_pool("cap2", "c"), 1, 2, now + 10_000)
            .await
            .is_err()
    );
    // Offer a's pending session dies at its connect timeout: no sweep needed.
    admit_capped(&s, &offer_pool("cap2", "c"), 1, 2, now + CONNECT)
        .await
        .unwrap();
    assert!(
        admit_capped(&s, &offer_pool("cap2", "d"), 1, 2, now + CONNECT)
            .await
            .is_err()
    );
    // Ending b's session frees its pool at once.
    s.store
        .end(&b, second, Some(Holder(8)), now + CONNECT)
        .await
        .unwrap()
        .unwrap();
    admit_capped(&s, &offer_pool("cap2", "d"), 1, 2, now + CONNECT)
        .await
        .unwrap();
}

async fn parallel_first_sessions_on_distinct_offers_open_exactly_the_cap_of_pools(s: Subject) {
    let now = t0();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = s.store.clone();
        tasks.spawn(async move {
            let limits = Limits {
                sessions: 1,
                pools_per_customer: 5,
                customer_sessions: None,
            };
            let p = offer_pool("cap3", &format!("made-up-{i}"));
            match store.admit(&p, new(&p, "device"), limits, now).await.unwrap() {
                Ok(_) => Some(p),
                Err(Refusal::TooManyPools) => None,
                Err(other) => panic!("only the cap may refuse a first session: {other:?}"),
            }
        });
    }
    let opened: Vec<PoolKey> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(opened.len(), 5, "exactly the cap's worth of pools");
    for p in &opened {
        assert_eq!(s.store.list(p, now).await.unwrap().len(), 1);
    }
}

async fn restored_sessions_open_their_pools_whatever_the_cap(s: Subject) {
    let now = t0();
    let restored = ["a", "b", "c"].map(|offer| {
        let session = drisc::domain::Session {
            id: SessionId::for_customer(&offer_pool("cap4", offer).owner()),
            name: "tv".into(),
            state: SessionState::Detached,
            expires_at: now + GRACE,
            holder: None,
            created_at: now,
        };
        (offer_pool("cap4", offer), session)
    });
    s.store.restore(restored.to_vec()).await.unwrap();
    for (p, _) in &restored {
        assert_eq!(s.store.list(p, now + 1).await.unwrap().len(), 1);
    }
    // They count: with a cap of 3 the customer may open no fourth pool.
    assert!(matches!(
        admit_capped(&s, &offer_pool("cap4", "d"), 1, 3, now + 1).await,
        Err(Refusal::TooManyPools)
    ));
}

async fn a_dead_session_cannot_be_ended(s: Subject) {
    let (p, now) = (pool("c11"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    assert!(
        s.store.end(&p, a, None, now + CONNECT).await.unwrap().is_none(),
        "it died at its connect timeout"
    );
}

async fn admits_up_to_the_limit_and_lists_the_holders_in_creation_order(s: Subject) {
    let (p, now) = (pool("c1"), t0());
    let a = admit(&s, &p, "tv", 2, now).await.unwrap();
    let b = admit(&s, &p, "phone", 2, now + 1).await.unwrap();
    let Err(Refusal::Full(full)) = s.store.admit(&p, new(&p, "laptop"), limit(2), now + 2).await.unwrap() else {
        panic!("the pool is full");
    };
    let listed: Vec<_> = full.active.iter().map(|x| (x.id, x.name.as_str())).collect();
    assert_eq!(listed, vec![(a, "tv"), (b, "phone")]);
    assert_eq!(s.store.list(&p, now + 3).await.unwrap().len(), 2);
}

async fn a_pending_session_stops_counting_at_its_connect_timeout(s: Subject) {
    let (p, now) = (pool("c2"), t0());
    admit(&s, &p, "tv", 1, now).await.unwrap();
    assert!(admit(&s, &p, "phone", 1, now + CONNECT - 1).await.is_none());
    assert!(admit(&s, &p, "phone", 1, now + CONNECT).await.is_some());
}

async fn a_live_session_is_kept_by_heartbeats_and_dies_without_them(s: Subject) {
    let (p, now) = (pool("c3"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    assert!(s.store.attach(&p, a, Holder(1), now).await.unwrap().is_some());
    assert!(
        s.store
            .heartbeat(&p, a, Holder(1), now + 20_000)
            .await
            .unwrap()
            .accepted()
    );
    s.flush().await;
    // Alive past the first deadline thanks to the heartbeat...
    assert!(admit(&s, &p, "phone", 1, now + PONG + 1_000).await.is_none());
    let listed = s.store.list(&p, now + PONG + 1_000).await.unwrap();
    assert_eq!(
        (listed[0].state, listed[0].holder),
        (SessionState::Live, Some(Holder(1)))
    );
    // ...and dead one pong timeout after it.
    assert!(admit(&s, &p, "phone", 1, now + 20_000 + PONG).await.is_some());
}

async fn a_second_socket_takes_the_session_and_the_first_loses_it(s: Subject) {
    let (p, now) = (pool("c4"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    let first = s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert_eq!(first.previous, None);
    // A store that hands the socket its own copy of the key hands the same pool's.
    assert!(first.key.as_ref().is_none_or(|k| *k == p), "{:?}", first.key);
    let again = s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert_eq!(again.previous, None, "REQUESTED again on the same socket");
    let second = s.store.attach(&p, a, Holder(2), now + 1).await.unwrap().unwrap();
    assert_eq!(second.previous, Some(Holder(1)));
    assert!(!s.store.detach(&p, a, Holder(1), now + 2).await.unwrap());
    assert!(s.store.end(&p, a, Some(Holder(1)), now + 2).await.unwrap().is_none());
    let listed = s.store.list(&p, now + 3).await.unwrap();
    assert_eq!(listed[0].holder, Some(Holder(2)));
}

async fn a_detached_session_waits_for_the_grace_only(s: Subject) {
    let (p, now) = (pool("c5"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert!(s.store.detach(&p, a, Holder(1), now + 1_000).await.unwrap());
    assert_eq!(
        s.store.list(&p, now + 1_000).await.unwrap()[0].state,
        SessionState::Detached
    );
    assert!(
        s.store.attach(&p, a, Holder(2), now + GRACE).await.unwrap().is_some(),
        "back within the grace"
    );
    assert!(s.store.detach(&p, a, Holder(2), now + GRACE).await.unwrap());
    assert!(
        s.store
            .attach(&p, a, Holder(3), now + 2 * GRACE + 1)
            .await
            .unwrap()
            .is_none(),
        "grace over"
    );
    assert!(admit(&s, &p, "phone", 1, now + 2 * GRACE + 1).await.is_some());
}

async fn ending_frees_the_slot_and_only_the_holder_can_end_it(s: Subject) {
    let (p, now) = (pool("c6"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert!(s.store.end(&p, a, Some(Holder(9)), now).await.unwrap().is_none());
    let ended = s.store.end(&p, a, Some(Holder(1)), now).await.unwrap().unwrap();
    assert_eq!((ended.id, ended.name.as_str()), (a, "tv"));
    assert!(s.store.end(&p, a, None, now).await.unwrap().is_none(), "already ended");
    assert!(admit(&s, &p, "phone", 1, now + 1).await.is_some());
}

async fn takeover_swaps_the_victim_for_the_new_session(s: Subject) {
    let (p, now) = (pool("c7"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(7), now).await.unwrap().unwrap();
    let done = s
        .store
        .take_over(&p, a, new(&p, "phone"), now + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.victim.id, done.victim.holder), (a, Some(Holder(7))));
    assert_eq!(done.granted.session.name, "phone");
    let listed = s.store.list(&p, now + 2).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, done.granted.session.id);
    assert!(
        s.store
            .take_over(&p, a, new(&p, "again"), now + 3)
            .await
            .unwrap()
            .is_none(),
        "victim gone"
    );
    assert!(
        s.store
            .take_over(
                &pool("other"),
                done.granted.session.id,
                new(&pool("other"), "x"),
                now + 3
            )
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_new_session_names_the_live_sessions_to_ping(s: Subject) {
    let (p, now) = (pool("c8"), t0());
    let a = admit(&s, &p, "tv", 3, now).await.unwrap();
    admit(&s, &p, "pending", 3, now).await.unwrap();
    s.store.attach(&p, a, Holder(5), now).await.unwrap().unwrap();
    let granted = s
        .store
        .admit(&p, new(&p, "phone"), limit(3), now + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(granted.live_others, vec![(a, Holder(5))]);
}

/// What `monitor` reads a would-be refusal from: a grant counts the sessions
/// its pool held beside it, pending and live, not the dead; a takeover, those
/// left beside the victim's successor.
async fn a_grant_counts_the_sessions_beside_it_and_not_the_dead(s: Subject) {
    let (p, now) = (pool("c8b"), t0());
    let others = |g: Result<Granted, Refusal>| g.unwrap().others;
    let first = s.store.admit(&p, new(&p, "tv"), limit(9), now).await.unwrap();
    assert_eq!(others(first.clone()), 0);
    let tv = first.unwrap().session.id;
    s.store.attach(&p, tv, Holder(5), now).await.unwrap().unwrap();
    let second = s.store.admit(&p, new(&p, "phone"), limit(9), now + 1).await.unwrap();
    assert_eq!(others(second), 1, "the live one");
    let third = s.store.admit(&p, new(&p, "tablet"), limit(9), now + 2).await.unwrap();
    assert_eq!(others(third), 2, "a live one and a pending one");
    let done = s
        .store
        .take_over(&p, tv, new(&p, "laptop"), now + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.granted.others, 2, "the two beside the victim's successor");
    // Past connect_timeout the three pending sessions are dead, and not counted.
    let later = now + 3 + CONNECT + 1;
    let after = s.store.admit(&p, new(&p, "console"), limit(9), later).await.unwrap();
    assert_eq!(others(after), 0);
}

async fn parallel_admissions_never_exceed_the_limit(s: Subject) {
    let (p, now) = (pool("hot"), t0());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = s.store.clone();
        let p = p.clone();
        tasks.spawn(async move {
            store
                .admit(&p, new(&p, &format!("d{i}")), limit(3), now)
                .await
                .unwrap()
                .is_ok()
        });
    }
    let granted = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(granted, 3);
    assert_eq!(s.store.list(&p, now).await.unwrap().len(), 3);
}

async fn pools_of_different_customers_are_separate(s: Subject) {
    let now = t0();
    // Ids that would collide if the pool key were a naive join.
    let p1 = PoolKey::from_ids("a:b", "c", "o");
    let p2 = PoolKey::from_ids("a", "b:c", "o");
    assert!(admit(&s, &p1, "x", 1, now).await.is_some());
    assert!(admit(&s, &p2, "y", 1, now).await.is_some());
    assert_eq!(s.store.list(&p1, now).await.unwrap().len(), 1);
}

async fn a_session_is_located_by_its_id_until_it_ends(s: Subject) {
    let (p, now) = (pool("c9"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    assert_eq!(s.store.locate(a).await.unwrap(), Some(p.clone()));
    s.store.end(&p, a, None, now).await.unwrap().unwrap();
    assert_eq!(s.store.locate(a).await.unwrap(), None);
}

async fn restored_sessions_count_again(s: Subject) {
    let (p, now) = (pool("c10"), t0());
    let id = SessionId::for_customer(&p.owner());
    let session = drisc::domain::Session {
        id,
        name: "tv".into(),
        state: SessionState::Detached,
        expires_at: now + GRACE,
        holder: None,
        created_at: now,
    };
    s.store.restore(vec![(p.clone(), session)]).await.unwrap();
    assert!(admit(&s, &p, "phone", 1, now + 1).await.is_none());
    assert!(s.store.attach(&p, id, Holder(4), now + 2).await.unwrap().is_some());
}

// Redis only: what the cluster adds on top of the shared rules.

#[tokio::test]
async fn redis_refresh_tells_a_replaced_socket_to_terminate_and_a_victim_why() {
    let s = Subject::redis().await;
    let (p, now) = (pool("r1"), t0());
    let a = admit(&s, &p, "tv", 2, now).await.unwrap();
    let b = admit(&s, &p, "phone", 2, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap();
    s.store.attach(&p, b, Holder(2), now).await.unwrap();
    // a is taken by a socket on another node (whose order to socket 1 is lost);
    // b is taken over.
    let other = second_node(&s).await;
    other.attach(&p, a, Holder(3), now + 1).await.unwrap();
    s.store
        .take_over(&p, b, new(&p, "laptop"), now + 1)
        .await
        .unwrap()
        .unwrap();
    s.store.heartbeat(&p, a, Holder(1), now + 2).await.unwrap();
    s.store.heartbeat(&p, b, Holder(2), now + 2).await.unwrap();
    s.flush().await;
    let orders: HashSet<(u64, Control)> = s
        .orders
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(h, c)| (h.0, c.clone()))
        .collect();
    let taken_over = Control::TakeOver {
        session_name: "laptop".into(),
    };
    assert!(orders.contains(&(1, Control::Terminate)), "{orders:?}");
    assert!(orders.contains(&(2, taken_over)), "{orders:?}");
}

#[tokio::test]
async fn redis_refresh_tells_a_socket_stopped_by_its_owner_take_over_even_if_the_order_is_lost() {
    let s = Subject::redis().await;
    let (p, now) = (pool("r-stop"), t0());
    let a = admit(&s, &p, "tv", 2, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap();
    // Ended through another node: no order reaches this one, only the tombstone.
    let other = second_node(&s).await;
    let ended = other.end_taken_over(&p, a, "Kitchen", now + 1).await.unwrap();
    assert_eq!(ended.map(|e| e.id), Some(a));
    s.store.heartbeat(&p, a, Holder(1), now + 2).await.unwrap();
    s.flush().await;
    let orders = s.orders.0.lock().unwrap().clone();
    let stopped = Control::TakeOver {
        session_name: "Kitchen".into(),
    };
    assert!(orders.contains(&(Holder(1), stopped)), "{orders:?}");
}

#[tokio::test]
async fn redis_script_flush_changes_nothing() {
    let s = Subject::redis().await;
    let (p, now) = (pool("r2"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    let _: String = s.redis_server().unwrap().cmd(&["SCRIPT", "FLUSH"]);
    assert!(
        admit(&s, &p, "phone", 1, now + 1).await.is_none(),
        "still full after SCRIPT FLUSH"
    );
    s.store.attach(&p, a, Holder(1), now + 2).await.unwrap().unwrap();
    s.store.heartbeat(&p, a, Holder(1), now + 3).await.unwrap();
    let _: String = s.redis_server().unwrap().cmd(&["SCRIPT", "FLUSH"]);
    s.flush().await;
    assert!(
        s.orders.0.lock().unwrap().is_empty(),
        "the pipelined refresh reloads its script"
    );
}

#[tokio::test]
async fn redis_restarted_empty_gets_the_held_sessions_back_from_the_node() {
    let mut s = Subject::redis().await;
    let (p, now) = (pool("r3"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    s.flush().await; // the node learns the epoch
    s.redis.as_mut().unwrap().1.restart_empty();
    // The connection comes back by itself; the next refresh restores.
    let mut restored = 0;
    for _ in 0..50 {
        if let Ok(round) = s.redis.as_ref().unwrap().0.refresh().await {
            restored = round.restored;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(restored, 1);
    let now = t0();
    assert!(
        admit(&s, &p, "phone", 1, now).await.is_none(),
        "the limit counts the restored session"
    );
    let listed = s.store.list(&p, now).await.unwrap();
    assert_eq!(
        (listed[0].id, listed[0].holder, listed[0].name.as_str()),
        (a, Some(Holder(1)), "tv")
    );
}

#[tokio::test]
async fn redis_restarted_empty_admits_nobody_beside_a_held_session_before_the_next_refresh() {
    let mut s = Subject::redis().await;
    let (p, now) = (pool("r4"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    s.flush().await; // the node learns the epoch
    s.redis.as_mut().unwrap().1.restart_empty();
    // No refresh round runs here: the admission itself finds Redis in a new epoch
    // and has the node put its session back before it is counted.
    let mut refused = None;
    for _ in 0..50 {
        match s.store.admit(&p, new(&p, "phone"), limit(1), t0()).await {
            Ok(outcome) => {
                refused = Some(outcome.is_err());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(refused, Some(true), "the limit counts the held session at once");
    let listed = s.store.list(&p, t0()).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a]);
}

fn customer(publisher: &str, customer: &str) -> Customer {
    Customer {
        publisher_id: publisher.into(),
        customer_id: customer.into(),
    }
}

fn query(who: &Customer, offer: Option<&str>, after: Option<Position>, limit: usize) -> SessionQuery {
    SessionQuery {
        customer: who.clone(),
        offer_id: offer.map(str::to_owned),
        after,
        limit,
    }
}

/// Every page of `who`'s sessions at `now`, walked with the cursor.
async fn walk(
    s: &Subject,
    who: &Customer,
    offer: Option<&str>,
    limit: usize,
    now: Millis,
) -> Vec<(PoolKey, SessionId)> {
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = s
            .store
            .customer_sessions(&query(who, offer, after, limit), now)
            .await
            .unwrap();
        assert!(page.sessions.len() <= limit, "a page holds at most the limit");
        seen.extend(page.sessions.into_iter().map(|(p, session)| (p, session.id)));
        after = page.next;
        if after.is_none() {
            return seen;
        }
    }
    panic!("the walk never ended");
}

async fn a_customers_sessions_are_listed_across_offers_page_by_page_and_no_one_elses(s: Subject) {
    let now = t0();
    // Ids that would collide if a customer's keys were a naive join.
    let who = customer("a", "b:c");
    let pool_of = |offer: &str| PoolKey::new(&who, offer);
    let mut expected = Vec::new();
    for (offer, count) in [("o2", 3), ("o1", 2), ("o3", 1)] {
        for i in 0..count {
            let id = admit(&s, &pool_of(offer), &format!("d{i}"), 5, now).await.unwrap();
            expected.push((pool_of(offer), id));
        }
    }
    let held = expected[0].1;
    s.store
        // Live until after the pending ones' connect timeout.
        .attach(&pool_of("o2"), held, Holder(7), now + 10_000)
        .await
        .unwrap()
        .unwrap();
    for other in [customer("a:b", "c"), customer("a", "b:c2"), customer("b", "b:c")] {
        admit(&s, &PoolKey::new(&other, "o1"), "not theirs", 5, now)
            .await
            .unwrap();
    }
    expected.sort_by(|(a, x), (b, y)| (a.offer_id(), x).cmp(&(b.offer_id(), y)));

    let then = now + 10_001;
    for limit in [1, 2, 4, 100] {
        assert_eq!(walk(&s, &who, None, limit, then).await, expected, "pages of {limit}");
    }
    let only_o2: Vec<_> = expected.iter().filter(|(p, _)| p.offer_id() == "o2").cloned().collect();
    assert_eq!(walk(&s, &who, Some("o2"), 2, then).await, only_o2);
    assert!(walk(&s, &who, Some("o9"), 2, then).await.is_empty());

    let page = s
        .store
        .customer_sessions(&query(&who, Some("o2"), None, 10), then)
        .await
        .unwrap();
    let shown = page.sessions.iter().find(|(_, x)| x.id == held).unwrap();
    assert_eq!((shown.1.state, shown.1.holder), (SessionState::Live, Some(Holder(7))));

    // Once the pending ones miss their connect timeout, only the live one is left.
    let later = now + CONNECT;
    assert_eq!(walk(&s, &who, None, 2, later).await, vec![(pool_of("o2"), held)]);
}

async fn ending_a_customers_sessions_frees_their_slots_and_leaves_everyone_elses(s: Subject) {
    let now = t0();
    let who = customer("pub", "kicked");
    let pool_of = |offer: &str| PoolKey::new(&who, offer);
    let live = admit(&s, &pool_of("o1"), "tv", 1, now).await.unwrap();
    s.store
        .attach(&pool_of("o1"), live, Holder(9), now)
        .await
        .unwrap()
        .unwrap();
    let mut on_o2 = [
        admit(&s, &pool_of("o2"), "a", 2, now).await.unwrap(),
        admit(&s, &pool_of("o2"), "b", 2, now).await.unwrap(),
    ];
    let neighbour = PoolKey::new(&customer("pub", "kicked2"), "o1");
    let spared = admit(&s, &neighbour, "tv", 1, now).await.unwrap();

    // One offer only.
    let ended = s.store.end_customer(&who, Some("o2"), now + 1).await.unwrap();
    let mut ids: Vec<_> = ended.iter().map(|(p, x)| (p.offer_id().to_owned(), x.id)).collect();
    ids.sort();
    on_o2.sort();
    assert_eq!(ids, on_o2.iter().map(|id| ("o2".to_owned(), *id)).collect::<Vec<_>>());
    assert!(s.store.list(&pool_of("o2"), now + 1).await.unwrap().is_empty());
    assert_eq!(s.store.list(&pool_of("o1"), now + 1).await.unwrap().len(), 1);

    // Every offer: the ended session names the socket to tell.
    let ended = s.store.end_customer(&who, None, now + 2).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0].1.id, ended[0].1.holder), (live, Some(Holder(9))));
    assert_eq!(s.store.locate(live).await.unwrap(), None);
    assert!(s.store.end_customer(&who, None, now + 3).await.unwrap().is_empty());

    // The slots are free, and no pool of theirs counts against the cap any more.
    assert!(admit_capped(&s, &pool_of("o3"), 1, 1, now + 4).await.is_ok());
    let capped = admit_capped(&s, &pool_of("o1"), 1, 1, now + 4).await;
    assert!(
        matches!(capped, Err(Refusal::TooManyPools)),
        "o3 is their one pool: {capped:?}"
    );
    assert_eq!(s.store.list(&neighbour, now + 4).await.unwrap().len(), 1);
    assert_eq!(s.store.locate(spared).await.unwrap(), Some(neighbour));
}

async fn only_the_socket_that_holds_a_live_session_may_heartbeat_it(s: Subject) {
    let (p, now) = (pool("hb1"), t0());
    let a = admit(&s, &p, "tv", 2, now).await.unwrap();
    let heard = |holder, at| {
        let store = s.store.clone();
        let p = p.clone();
        async move { store.heartbeat(&p, a, Holder(holder), at).await.unwrap() }
    };
    assert_eq!(
        heard(1, now).await,
        Heartbeat::NotHeld,
        "pending: no socket holds it yet"
    );
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert_eq!(heard(2, now + 1).await, Heartbeat::NotHeld, "not its socket");
    assert!(heard(1, now + 1).await.accepted());
    s.flush().await;
    assert!(s.store.detach(&p, a, Holder(1), now + 2).await.unwrap());
    assert_eq!(heard(1, now + 3).await, Heartbeat::NotHeld, "detached");
    s.store.attach(&p, a, Holder(3), now + 4).await.unwrap().unwrap();
    s.store.end(&p, a, Some(Holder(3)), now + 5).await.unwrap().unwrap();
    assert_eq!(heard(3, now + 6).await, Heartbeat::NotHeld, "ended");
    assert!(
        s.orders.0.lock().unwrap().is_empty(),
        "no order for a socket told at once"
    );
}

async fn a_heartbeat_moves_the_deadline_to_one_pong_timeout_after_it(s: Subject) {
    let (p, now) = (pool("hb2"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    assert_eq!(s.store.list(&p, now).await.unwrap()[0].expires_at, now + PONG);
    let heard = s.store.heartbeat(&p, a, Holder(1), now + 5_000).await.unwrap();
    assert!(heard.accepted(), "{heard:?}");
    // Once the store has written it (at once, or at its next refresh round).
    s.flush().await;
    let listed = s.store.list(&p, now + 5_000).await.unwrap();
    assert_eq!(
        (listed[0].expires_at, listed[0].state, listed[0].holder),
        (now + 5_000 + PONG, SessionState::Live, Some(Holder(1)))
    );
}

async fn a_pool_is_listed_in_creation_order_without_its_dead_sessions(s: Subject) {
    let (p, now) = (pool("ls1"), t0());
    let first = admit(&s, &p, "first", 5, now).await.unwrap();
    let second = admit(&s, &p, "second", 5, now + 10_000).await.unwrap();
    let third = admit(&s, &p, "third", 5, now + 20_000).await.unwrap();
    s.store
        .attach(&p, third, Holder(3), now + 20_000)
        .await
        .unwrap()
        .unwrap();
    let ids = |listed: Vec<Session>| listed.into_iter().map(|x| (x.id, x.name)).collect::<Vec<_>>();
    assert_eq!(
        ids(s.store.list(&p, now + 20_000).await.unwrap()),
        vec![
            (first, "first".to_owned()),
            (second, "second".to_owned()),
            (third, "third".to_owned())
        ]
    );
    // The first misses its connect timeout; the others are still alive.
    assert_eq!(
        ids(s.store.list(&p, now + CONNECT).await.unwrap()),
        vec![(second, "second".to_owned()), (third, "third".to_owned())]
    );
    assert!(s.store.list(&pool("ls1-nobody"), now).await.unwrap().is_empty());
}

async fn a_taken_over_session_is_located_no_more_and_its_successor_is(s: Subject) {
    let (p, now) = (pool("loc2"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    let done = s
        .store
        .take_over(&p, a, new(&p, "phone"), now + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.store.locate(a).await.unwrap(), None);
    assert_eq!(s.store.locate(done.granted.session.id).await.unwrap(), Some(p.clone()));
    assert_eq!(
        s.store.locate(SessionId::random()).await.unwrap(),
        None,
        "never admitted"
    );
}

async fn restoring_a_session_the_pool_has_already_changes_nothing(s: Subject) {
    let (p, now) = (pool("rs2"), t0());
    let saved = Session {
        id: SessionId::for_customer(&p.owner()),
        name: "tv".into(),
        state: SessionState::Detached,
        expires_at: now + GRACE,
        holder: None,
        created_at: now,
    };
    s.store.restore(vec![(p.clone(), saved.clone())]).await.unwrap();
    let again = Session {
        name: "renamed".into(),
        ..saved.clone()
    };
    s.store.restore(vec![(p.clone(), again)]).await.unwrap();
    assert_eq!(s.store.list(&p, now + 1).await.unwrap(), vec![saved.clone()]);
    assert_eq!(s.store.locate(saved.id).await.unwrap(), Some(p));
}

async fn sessions_are_counted_by_state_as_far_as_the_store_knows(s: Subject) {
    let (p, now) = (pool("bs1"), t0());
    let before = s.store.by_state();
    let a = admit(&s, &p, "a", 3, now).await.unwrap();
    let b = admit(&s, &p, "b", 3, now).await.unwrap();
    admit(&s, &p, "c", 3, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    s.store.attach(&p, b, Holder(2), now).await.unwrap().unwrap();
    s.store.detach(&p, b, Holder(2), now + 1).await.unwrap();
    // A count the store gives is exact; one it does not know cheaply is None.
    let counted = s.store.by_state();
    assert_eq!(counted.live, before.live + 1);
    if let Some(pending) = counted.pending {
        assert_eq!(pending, before.pending.unwrap() + 1);
    }
    if let Some(detached) = counted.detached {
        assert_eq!(detached, before.detached.unwrap() + 1);
    }
    assert_eq!(
        counted.known(),
        counted.pending.unwrap_or(0) + counted.live + counted.detached.unwrap_or(0)
    );
    s.store.end(&p, a, Some(Holder(1)), now + 2).await.unwrap().unwrap();
    assert_eq!(s.store.by_state().live, before.live, "ended by its socket");
}

async fn handing_over_keeps_held_sessions_for_their_players_and_no_dead_ones(s: Subject) {
    let (p, now) = (pool("ho1"), t0());
    let held = admit(&s, &p, "tv", 2, now).await.unwrap();
    // Live until 10 000 + PONG, after the other's connect timeout.
    s.store
        .attach(&p, held, Holder(1), now + 10_000)
        .await
        .unwrap()
        .unwrap();
    let dead = admit(&s, &p, "never connected", 2, now).await.unwrap();
    let then = now + CONNECT;
    s.store.hand_over(then).await.unwrap();
    assert_eq!(s.store.by_state().live, 0, "no socket of this node holds it any more");
    // The player comes back (here or to another node) to the same session.
    let listed = s.store.list(&p, then).await.unwrap();
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![held]);
    assert!(s.store.attach(&p, held, Holder(2), then).await.unwrap().is_some());
    if let Some(local) = &s.local {
        let kept: Vec<_> = local.snapshot().await.unwrap().into_iter().map(|(_, x)| x.id).collect();
        assert!(!kept.contains(&dead), "a session dead at the hand-over is not saved");
    }
}

async fn dead_sessions_are_reaped_once_where_kept_locally_and_expire_by_themselves_elsewhere(s: Subject) {
    let (p, now) = (pool("rp1"), t0());
    let pending = admit(&s, &p, "never connected", 3, now).await.unwrap();
    let detached = admit(&s, &p, "gone", 3, now).await.unwrap();
    s.store.attach(&p, detached, Holder(1), now).await.unwrap().unwrap();
    s.store.detach(&p, detached, Holder(1), now).await.unwrap();
    let live = admit(&s, &p, "playing", 3, now).await.unwrap();
    s.store
        .attach(&p, live, Holder(2), now + 10_000)
        .await
        .unwrap()
        .unwrap();
    // The detached one dies at GRACE, the pending one at CONNECT; the live one
    // at 10 000 + PONG.
    let then = now + CONNECT;
    if let Some(local) = &s.local {
        assert!(local.reap(now + GRACE - 1).await.unwrap().is_empty(), "none dead yet");
        let mut reaped: Vec<_> = local
            .reap(then)
            .await
            .unwrap()
            .into_iter()
            .map(|(at, x)| (at, x.id, x.state))
            .collect();
        reaped.sort_by_key(|(_, id, _)| *id);
        let mut expected = vec![
            (p.clone(), pending, SessionState::Pending),
            (p.clone(), detached, SessionState::Detached),
        ];
        expected.sort_by_key(|(_, id, _)| *id);
        assert_eq!(reaped, expected, "each with its pool and the state it died in");
        assert!(local.reap(then).await.unwrap().is_empty(), "reaped once");
    }
    // Reaped or not, the dead are gone from every view, and their slots are free.
    let listed: Vec<_> = s
        .store
        .list(&p, then)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(listed, vec![live]);
    assert_eq!(s.store.locate(live).await.unwrap(), Some(p.clone()));
    assert!(s.store.end(&p, pending, None, then).await.unwrap().is_none());
    assert!(admit(&s, &p, "new", 2, then).await.is_some());
}

async fn a_snapshot_holds_every_session_and_restores_into_an_equal_store(s: Subject) {
    let now = t0();
    let (p1, p2) = (offer_pool("sn1", "a"), offer_pool("sn1", "b"));
    let a = admit(&s, &p1, "tv", 2, now).await.unwrap();
    s.store.attach(&p1, a, Holder(1), now).await.unwrap().unwrap();
    admit(&s, &p1, "phone", 2, now + 1).await.unwrap();
    admit(&s, &p2, "laptop", 2, now + 2).await.unwrap();
    let Some(local) = &s.local else {
        // Redis keeps the sessions itself: a node has nothing to save.
        return;
    };
    let mut saved = local.snapshot().await.unwrap();
    saved.sort_by_key(|(p, x)| (p.offer_id().to_owned(), x.created_at, x.id));
    let mut listed = Vec::new();
    for p in [&p1, &p2] {
        listed.extend(s.store.list(p, now).await.unwrap().into_iter().map(|x| (p.clone(), x)));
    }
    listed.sort_by_key(|(p, x)| (p.offer_id().to_owned(), x.created_at, x.id));
    assert_eq!(saved, listed);

    // Restored in any order, listed in creation order.
    saved.reverse();
    let fresh = Subject::memory();
    fresh.store.restore(saved).await.unwrap();
    for p in [&p1, &p2] {
        assert_eq!(
            fresh.store.list(p, now).await.unwrap(),
            s.store.list(p, now).await.unwrap()
        );
    }
}

async fn ending_a_customers_sessions_unindexes_them_and_a_second_time_finds_none(s: Subject) {
    let now = t0();
    let who = customer("pub", "ec2");
    let ids = [
        admit(&s, &PoolKey::new(&who, "a"), "x", 2, now).await.unwrap(),
        admit(&s, &PoolKey::new(&who, "b"), "y", 2, now).await.unwrap(),
    ];
    let ended = s.store.end_customer(&who, None, now + 1).await.unwrap();
    assert_eq!(ended.len(), 2);
    for id in ids {
        assert_eq!(s.store.locate(id).await.unwrap(), None);
    }
    assert!(s.store.end_customer(&who, Some("a"), now + 2).await.unwrap().is_empty());
    assert!(
        s.store
            .customer_sessions(&query(&who, None, None, 10), now + 2)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

#[tokio::test]
async fn redis_a_record_in_an_unknown_state_is_an_error_not_a_detached_session() {
    let s = Subject::redis().await;
    let (p, now) = (pool("r4"), t0());
    let id = SessionId::for_customer(&p.owner());
    // A packed record (state|expires|holder|created|offer length|offer|name) in a
    // state nobody writes.
    let record = format!("x|{}||{now}|{}|{}|tv", now + GRACE, p.offer_id().len(), p.offer_id());
    let server = s.redis_server().unwrap();
    let _: i64 = server.cmd(&["HSET", &keys::customer(&p), &id.to_string(), &record]);
    let listed = s.store.list(&p, now).await;
    assert!(matches!(listed, Err(StoreError::Unreadable(_))), "{listed:?}");
    let page = s
        .store
        .customer_sessions(&query(&customer("pub", "r4"), None, None, 10), now)
        .await;
    assert!(matches!(page, Err(StoreError::Unreadable(_))), "{page:?}");
}

/// A store for a second node on the same Redis as `s`, with the caller's clock.
async fn second_node(s: &Subject) -> Arc<RedisStore> {
    Arc::new(second_store(s).await)
}

async fn second_store(s: &Subject) -> RedisStore {
    RedisStore::connect(
        &s.redis_server().unwrap().url,
        timings(),
        Duration::from_secs(60),
        NODE_LOST_AFTER,
        TimeSource::Caller,
        Arc::new(Recorder::default()),
    )
    .await
    .unwrap()
}

/// Calls Redis counted for `command` (`INFO commandstats`; those run inside
/// scripts included), or every command's calls summed for `None`.
fn calls(server: &RedisServer, command: Option<&str>) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?.parse::<u64>().ok()?;
            command.is_none_or(|c| c == name).then_some(calls)
        })
        .sum()
}

#[tokio::test]
async fn redis_an_end_by_its_socket_is_queued_seen_at_once_by_its_node_and_by_every_node_after_one_refresh() {
    let s = Subject::redis().await;
    let other = second_node(&s).await;
    let (p, now) = (pool("q1"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    let ended = s.store.end(&p, a, Some(Holder(1)), now + 1).await.unwrap().unwrap();
    assert_eq!((ended.id, ended.name.as_str()), (a, "tv"));
    // Another node may still see it held until this node's next refresh round...
    let refused = other.admit(&p, new(&p, "phone"), limit(1), now + 2).await.unwrap();
    assert!(refused.is_err(), "not written yet: {refused:?}");
    let round = s.redis.as_ref().unwrap().0.refresh().await.unwrap();
    assert_eq!(round.written, 1);
    // ...and sees the slot free once it ran.
    let granted = other.admit(&p, new(&p, "phone"), limit(1), now + 3).await.unwrap();
    assert!(granted.is_ok(), "{granted:?}");
    assert_eq!(s.store.locate(a).await.unwrap(), None, "the end unindexed it");
}

/// A session in each of `pools`, held by sockets `first`, `first + 1`, ...
async fn held_in_each(s: &Subject, pools: &[PoolKey], first: u64, now: Millis) -> Vec<SessionId> {
    let mut ids = Vec::new();
    for (n, p) in pools.iter().enumerate() {
        let id = admit(s, p, "tv", 1, now).await.unwrap();
        s.store
            .attach(p, id, Holder(first + n as u64), now)
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    ids
}

/// A refresh round writes a shard's queued ends and detaches in calls of many
/// writes each (`WRITES`): each does what its own call did. Forty-two customers
/// of one shard (two calls' worth), one end queued for a socket that no longer
/// holds its session (it must leave that session alone), and a detach among
/// the ends, in the same call.
#[tokio::test]
async fn redis_a_shards_queued_ends_written_together_each_end_as_its_own_call_would() {
    let s = Subject::redis().await;
    let other = second_node(&s).await;
    let now = t0();
    let pools = pools_in_shard("e", pool("e0").shard(), 42);
    let ids = held_in_each(&s, &pools, 100, now).await;
    // 40 ends by their sockets at one time, the detach of the 41st in the middle.
    for n in 0..40 {
        if n == 20 {
            assert!(s.store.detach(&pools[40], ids[40], Holder(140), now).await.unwrap());
        }
        s.store
            .end(&pools[n], ids[n], Some(Holder(100 + n as u64)), now)
            .await
            .unwrap()
            .unwrap();
    }
    // The 42nd's end is queued, then a socket on another node takes its session:
    // the queued end names the first socket and must leave the session alone.
    s.store
        .end(&pools[41], ids[41], Some(Holder(141)), now)
        .await
        .unwrap()
        .unwrap();
    other
        .attach(&pools[41], ids[41], Holder(3), now)
        .await
        .unwrap()
        .unwrap();
    let server = s.redis_server().unwrap();
    let script_calls = || calls(server, Some("evalsha"));
    let before = script_calls();
    let round = s.redis.as_ref().unwrap().0.refresh().await.unwrap();
    assert_eq!(round.written, 42, "41 ends and a detach");
    // Two calls for the 42 writes (32 a call at most), and the round's others
    // (its vouch), counted by a round with nothing queued: a detach in a call
    // of its own would make it three, a call per write 42.
    let calls = script_calls() - before;
    let before = script_calls();
    let idle = s.redis.as_ref().unwrap().0.refresh().await.unwrap();
    assert_eq!(idle.written, 0);
    let others = script_calls() - before;
    assert_eq!(
        calls - others,
        2,
        "{calls} script calls for 42 queued writes, {others} for none"
    );
    for (n, p) in pools.iter().enumerate().take(40) {
        let granted = other.admit(p, new(p, "phone"), limit(1), now + 1).await.unwrap();
        assert!(granted.is_ok(), "pool {n}'s slot is free: {granted:?}");
        assert_eq!(
            s.store.locate(ids[n]).await.unwrap(),
            None,
            "pool {n}'s end unindexed it"
        );
    }
    let detached = other.list(&pools[40], now + 1).await.unwrap();
    assert_eq!(detached.len(), 1, "the detached session waits its grace");
    assert_eq!(detached[0].state, SessionState::Detached);
    let kept = other.list(&pools[41], now + 1).await.unwrap();
    assert_eq!(
        kept.len(),
        1,
        "the end of a socket that no longer held it ended nothing"
    );
    assert_eq!((kept[0].state, kept[0].holder), (SessionState::Live, Some(Holder(3))));
}

/// A graceful stop's hand-over detaches every held session of a shard in calls
/// of many writes (`WRITES`), behind the ends its sockets queued: forty held
/// sessions and one queued end take two script calls, where a call per detach
/// took forty-one.
#[tokio::test]
async fn redis_a_hand_over_detaches_a_shards_sessions_many_to_a_call_after_the_queued_ends() {
    let s = Subject::redis().await;
    let other = second_node(&s).await;
    let now = t0();
    let pools = pools_in_shard("h", pool("h0").shard(), 41);
    let ids = held_in_each(&s, &pools, 200, now).await;
    // The last one's socket ended it: queued, not written yet.
    s.store
        .end(&pools[40], ids[40], Some(Holder(240)), now)
        .await
        .unwrap()
        .unwrap();
    let server = s.redis_server().unwrap();
    let before = calls(server, Some("evalsha"));
    // At the end's own time: a call's writes are judged at one `now`.
    s.store.hand_over(now).await.unwrap();
    assert_eq!(calls(server, Some("evalsha")) - before, 2, "41 writes, 32 a call");
    assert_eq!(s.store.by_state().live, 0);
    for (n, p) in pools.iter().enumerate().take(40) {
        let listed = other.list(p, now + 2).await.unwrap();
        assert_eq!(listed.len(), 1, "pool {n}'s session waits for its player");
        assert_eq!(listed[0].state, SessionState::Detached, "pool {n}");
        assert_eq!(listed[0].holder, None, "pool {n}");
    }
    assert!(
        other.list(&pools[40], now + 2).await.unwrap().is_empty(),
        "the queued end was written"
    );
}

#[tokio::test]
async fn redis_an_admission_writes_its_customers_queued_ends_first_and_the_index_in_its_own_script() {
    let s = Subject::redis().await;
    let server = s.redis_server().unwrap();
    let (p, now) = (pool("q2"), t0());
    let a = admit(&s, &p, "tv", 1, now).await.unwrap();
    s.store.attach(&p, a, Holder(1), now).await.unwrap().unwrap();
    s.store.end(&p, a, Some(Holder(1)), now + 1).await.unwrap().unwrap();
    let (scripts, sets) = (calls(server, Some("evalsha")), calls(server, Some("hset")));
    let b = admit(&s, &p, "phone", 1, now + 2)
        .await
        .expect("the queued end was written first");
    // The queued end and the admission are two scripts; the index is set by the
    // admission's script (its record, its index entry), not by a command of its own.
    assert_eq!(calls(server, Some("evalsha")) - scripts, 2);
    assert_eq!(calls(server, Some("hset")) - sets, 2);
    assert_eq!(s.store.locate(b).await.unwrap(), Some(p));
}

/// `n` customers whose sessions share one shard (of Redis Cluster: one slot).
fn customers_of_one_shard(n: usize) -> Vec<String> {
    let shard = pool("steady0").shard();
    (0..)
        .map(|i| format!("steady{i}"))
        .filter(|c| pool(c).shard() == shard)
        .take(n)
        .collect()
}

/// Per session, what a node's sessions cost where they share their shard with
/// others (a shard holds a thousandth of all customers: at 100k sessions, a
/// hundred): the checks, and the node's vouching for the shard shared among
/// them. (What vouching costs per shard is `redis_a_node_vouches_once_per_shard_it_holds_sessions_in`.)
#[tokio::test]
async fn redis_a_held_session_costs_at_most_two_commands_a_minute_with_pings_every_ten_seconds() {
    let s = Subject::redis().await;
    let (store, server) = s.redis.as_ref().map(|(st, sv)| (st.clone(), sv)).unwrap();
    let now = t0();
    let n = 50;
    let mut held = Vec::new();
    for (i, customer) in customers_of_one_shard(n).iter().enumerate() {
        let p = pool(customer);
        let id = admit(&s, &p, "tv", 1, now).await.unwrap();
        let holder = Holder(i as u64 + 1);
        s.store.attach(&p, id, holder, now).await.unwrap().unwrap();
        held.push((p, id, holder));
    }
    // The first PONG checks each session once; steady state is what follows.
    let beat = |at: Millis| {
        let (store, held) = (store.clone(), held.clone());
        async move {
            for (p, id, holder) in &held {
                assert!(store.heartbeat(p, *id, *holder, at).await.unwrap().accepted());
            }
            store.refresh().await.unwrap();
        }
    };
    beat(now + 10_000).await;
    let before = calls(server, None);
    // Ten minutes of PONGs every 10 s and a refresh round after each.
    for k in 2..=61 {
        beat(now + k * 10_000).await;
    }
    let per_session_minute = (calls(server, None) - before) as f64 / n as f64 / 10.0;
    assert!(
        per_session_minute <= 2.0,
        "{per_session_minute:.2} commands per session-minute"
    );
    // Still held, as the memory store would have them.
    let listed = s.store.list(&held[0].0, now + 610_000).await.unwrap();
    assert_eq!(listed[0].holder, Some(held[0].2));
}

#[tokio::test]
async fn redis_a_stopped_nodes_live_sessions_die_one_pong_timeout_after_its_last_round_and_free_their_pools() {
    let s = Subject::redis().await;
    let other = second_node(&s).await;
    let now = t0();
    let (a, b) = (offer_pool("gone-node", "a"), offer_pool("gone-node", "b"));
    let id = admit(&s, &a, "tv", 1, now).await.unwrap();
    s.store.attach(&a, id, Holder(1), now).await.unwrap().unwrap();
    s.store.heartbeat(&a, id, Holder(1), now + 10_000).await.unwrap();
    s.flush().await;
    // The node stops: no more rounds. Its session counts until one PONG timeout
    // after the last round, and its pool against the customer's cap (of 1) too.
    let capped = |at| {
        let other = other.clone();
        let b = b.clone();
        async move {
            let limits = Limits {
                sessions: 1,
                pools_per_customer: 1,
                customer_sessions: None,
            };
            other.admit(&b, new(&b, "phone"), limits, at).await.unwrap()
        }
    };
    assert!(matches!(
        capped(now + 10_000 + PONG - 1).await,
        Err(Refusal::TooManyPools)
    ));
    assert!(
        capped(now + 10_000 + PONG).await.is_ok(),
        "the dead pool no longer counts"
    );
    assert!(other.list(&a, now + 10_000 + PONG).await.unwrap().is_empty());
}

/// Vouching costs one script per shard a node holds live sessions in, per
/// round (the caller's clock: every round; Redis's: once a third of the PONG
/// timeout), however many sessions the shard holds.
#[tokio::test]
async fn redis_a_node_vouches_once_per_shard_it_holds_sessions_in() {
    let s = Subject::redis().await;
    let (store, server) = s.redis.as_ref().map(|(st, sv)| (st.clone(), sv)).unwrap();
    let now = t0();
    let mut held = Vec::new();
    for i in 0..30 {
        let p = pool(&format!("spread{i}"));
        let id = admit(&s, &p, "tv", 1, now).await.unwrap();
        s.store.attach(&p, id, Holder(i + 1), now).await.unwrap().unwrap();
        held.push((p, id, Holder(i + 1)));
    }
    let shards: std::collections::BTreeSet<u16> = held.iter().map(|(p, _, _)| p.shard()).collect();
    let beat = |at: Millis| {
        let (store, held) = (store.clone(), held.clone());
        async move {
            for (p, id, holder) in &held {
                store.heartbeat(p, *id, *holder, at).await.unwrap();
            }
            store.refresh().await.unwrap()
        }
    };
    let round = beat(now + 10_000).await;
    assert_eq!(round.refreshed, 30, "the first PONG checks each");
    let (scripts, sets) = (calls(server, Some("evalsha")), calls(server, Some("set")));
    beat(now + 20_000).await;
    assert_eq!(calls(server, Some("evalsha")) - scripts, 0, "no check before a minute");
    assert_eq!(
        calls(server, Some("set")) - sets,
        shards.len() as u64,
        "per shard, one command: its liveness key rewritten where it still is (SET XX)"
    );
    // A shard whose key is gone (it lost its data, or the key ran out) is
    // vouched for again and has its epoch read: two commands more there.
    let gone = *shards.iter().next().unwrap();
    let _: i64 = server.cmd(&["DEL", &keys::alive(gone, 0)]);
    let sets = calls(server, Some("set"));
    beat(now + 30_000).await;
    assert_eq!(
        calls(server, Some("set")) - sets,
        shards.len() as u64 + 2,
        "the XX that found no key, then the key and the epoch (SET NX GET)"
    );
    let alive: String = server.cmd(&["GET", &keys::alive(gone, 0)]);
    assert_eq!(alive, (now + 30_000 + PONG).to_string(), "vouched for again");

    // With Redis's clock, a shard is vouched for again only once a third of the
    // PONG timeout has passed.
    let node = Arc::new(
        RedisStore::connect(
            &server.url,
            timings(),
            Duration::from_secs(60),
            NODE_LOST_AFTER,
            TimeSource::Redis,
            Arc::new(Recorder::default()),
        )
        .await
        .unwrap()
        .for_node(7),
    );
    let p = pool("redis-clock");
    let id = node
        .admit(&p, new(&p, "tv"), limit(1), 0)
        .await
        .unwrap()
        .unwrap()
        .session
        .id;
    node.attach(&p, id, Holder(7 << Holder::NODE_SHIFT | 1), 0)
        .await
        .unwrap()
        .unwrap();
    node.refresh().await.unwrap();
    let vouched: String = server.cmd(&["GET", &keys::alive(p.shard(), 7)]);
    let ttl: i64 = server.cmd(&["PTTL", &keys::alive(p.shard(), 7)]);
    assert_eq!(vouched, "r", "Redis's clock: the key's TTL says until when");
    assert!(ttl > 0 && ttl <= PONG as i64, "{ttl}");
    let before = calls(server, None);
    node.refresh().await.unwrap();
    assert_eq!(
        calls(server, None) - before,
        1,
        "vouched a moment ago: only INFO itself"
    );
}

/// Redis keeps a customer's hash and an index bucket as listpacks (about half
/// what a hash table costs) under its default limits (64 bytes a value): inside
/// Redis a session id is compact (22 characters) and a record's times are in
/// base 36, so a record with the longest holder and a player's usual name
/// stays under 64 bytes, and the session still reads back whole.
#[tokio::test]
async fn redis_a_held_session_is_kept_in_listpacks_under_redis_default_limits() {
    let s = Subject::redis().await;
    let server = s.redis.as_ref().map(|(_, sv)| sv).unwrap();
    let now = t0();
    let p = PoolKey::from_ids("publisher-01", "customer-0000042", "bench");
    let name = "Living room TV";
    let id = admit(&s, &p, name, 1, now).await.unwrap();
    // The longest holder there is: every node bit and every socket bit set.
    let holder = Holder(u64::MAX);
    s.store.attach(&p, id, holder, now).await.unwrap().unwrap();

    let key = keys::customer(&p);
    let encoding: String = server.cmd(&["OBJECT", "ENCODING", &key]);
    assert_eq!(encoding, "listpack", "the customer's hash");
    let fields: Vec<String> = server.cmd(&["HKEYS", &key]);
    assert_eq!(fields, vec![keys::compact(id)], "the field is the compact id");
    let record: String = server.cmd(&["HGET", &key, &keys::compact(id)]);
    assert!(record.len() <= 64, "{} bytes: {record}", record.len());
    let index: String = server.cmd(&["OBJECT", "ENCODING", &keys::index(id)]);
    assert_eq!(index, "listpack", "the index bucket");
    let tag: String = server.cmd(&["HGET", &keys::index(id), &keys::compact(id)]);
    assert_eq!(tag, keys::customer_tag(&p));

    let listed = s.store.list(&p, now).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].name.as_str()), (id, name));
    assert_eq!(listed[0].created_at, now, "times survive base 36");
    assert_eq!(listed[0].holder, Some(holder));
    assert_eq!(s.store.locate(id).await.unwrap(), Some(p.clone()));
}

/// On a Redis Cluster, a shard that comes back empty (here: its master flushed,
/// as a master that restarted empty, or whose replica followed a flush, would
/// be) is noticed for its own sessions alone, and they
/// are put back; sessions in shards on other masters are not touched. A
/// `SCRIPT FLUSH` on every node changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_a_shard_that_lost_its_data_is_restored_alone() {
    let s = Subject::redis_cluster().await;
    let (store, cluster) = s.cluster.as_ref().map(|(st, c)| (st.clone(), c)).unwrap();
    let now = t0();
    let a = pool("lost-shard");
    let master = cluster.master_of(&keys::customer(&a));
    let b = (0..)
        .map(|i| pool(&format!("kept-shard{i}")))
        .find(|p| cluster.master_of(&keys::customer(p)) != master)
        .unwrap();
    let ida = admit(&s, &a, "tv", 1, now).await.unwrap();
    let idb = admit(&s, &b, "tv", 1, now).await.unwrap();
    s.store.attach(&a, ida, Holder(1), now).await.unwrap().unwrap();
    s.store.attach(&b, idb, Holder(2), now).await.unwrap().unwrap();
    s.flush().await;

    for port in cluster.masters() {
        let _: String = cluster.node_cmd(port, &["SCRIPT", "FLUSH"]).unwrap();
    }
    let _: String = cluster.node_cmd(master, &["FLUSHALL"]).unwrap();
    let round = store.refresh().await.unwrap();
    assert_eq!(round.restored, 1, "only the session of the flushed shard");
    let listed = s.store.list(&a, now).await.unwrap();
    assert_eq!(
        (listed.len(), listed[0].id, listed[0].holder),
        (1, ida, Some(Holder(1)))
    );
    assert_eq!(s.store.locate(ida).await.unwrap(), Some(a.clone()), "indexed again");
    assert!(
        admit(&s, &a, "phone", 1, now + 1).await.is_none(),
        "the limit counts it"
    );
    assert!(admit(&s, &b, "phone", 1, now + 1).await.is_none());
    assert!(s.orders.0.lock().unwrap().is_empty(), "no socket was told anything");
}

/// An end a store reported: the session, why, its pool and its name.
type End = (SessionId, drisc::domain::ports::EndCause, PoolKey, Option<String>);

/// The ends a store reported.
#[derive(Default)]
struct Ends(Mutex<Vec<End>>);

impl drisc::domain::ports::SessionEvents for Ends {
    fn ended(&self, _: &PoolKey, _: SessionId, _: drisc::domain::ports::EndCause) {}

    fn report(&self, event: drisc::domain::events::SessionEvent) {
        if let (drisc::domain::events::EventKind::Ended { cause }, Some(id)) = (&event.kind, event.session_id) {
            self.0
                .lock()
                .unwrap()
                .push((id, *cause, event.pool, event.session_name));
        }
    }
}

/// A store for another node on the same Redis as `s`, reporting its ends to `ends`.
async fn reporting_node(s: &Subject, ends: Arc<Ends>) -> Arc<RedisStore> {
    Arc::new(second_store(s).await.with_events(ends))
}

/// Purges every shard at `now`; returns the ends reported.
async fn purge_all(store: &RedisStore, now: Millis) -> usize {
    let mut ended = 0;
    for shard in 0..drisc::domain::SHARDS {
        ended += store.purge_shard(shard, now).await.unwrap();
    }
    ended
}

/// Sessions that die in Redis with no node to end them (never connected,
/// detached past the grace, their node stopped) are deleted by a purge and
/// reported ended once each, with their cause, pool and name; live ones are
/// left alone; and a listing that meets a dead one first leaves it for the
/// purge rather than delete it unreported.
#[tokio::test]
async fn redis_a_purge_reports_each_session_that_died_with_no_node_once() {
    use drisc::domain::ports::EndCause;
    let s = Subject::redis().await;
    let ends = Arc::new(Ends::default());
    let purger = reporting_node(&s, ends.clone()).await;
    let now = t0();
    let (never, left, lost, live) = (
        offer_pool("purge-1", "a"),
        offer_pool("purge-2", "b"),
        offer_pool("purge-3", "c"),
        pool("purge-4"),
    );
    let never_id = admit(&s, &never, "tv", 1, now).await.unwrap();
    let left_id = admit(&s, &left, "phone", 1, now).await.unwrap();
    s.store.attach(&left, left_id, Holder(2), now).await.unwrap().unwrap();
    assert!(s.store.detach(&left, left_id, Holder(2), now).await.unwrap());
    let lost_id = admit(&s, &lost, "box", 1, now).await.unwrap();
    s.store.attach(&lost, lost_id, Holder(3), now).await.unwrap().unwrap();
    s.store
        .heartbeat(&lost, lost_id, Holder(3), now + 10_000)
        .await
        .unwrap();
    s.flush().await;
    // Past every deadline: the node holding `lost` stopped after that round.
    let later = now + 10_000 + CONNECT.max(GRACE).max(PONG) + 1;
    // A listing meets the never-connected one: not shown, and not swallowed.
    assert!(s.store.list(&never, later).await.unwrap().is_empty());

    // The one whose node stopped is marked lost, not reported: its node may be
    // cut off rather than gone, and put it back.
    assert_eq!(purge_all(&purger, later).await, 2);
    assert_eq!(
        s.store.locate(lost_id).await.unwrap(),
        Some(lost.clone()),
        "still indexed"
    );
    assert!(s.store.list(&lost, later).await.unwrap().is_empty(), "holding no slot");
    assert_eq!(
        purge_all(&purger, later + LOST_AFTER - 1).await,
        0,
        "still waiting for its node"
    );
    let reported = later + LOST_AFTER;
    let live_id = admit(&s, &live, "tablet", 1, reported).await.unwrap();
    assert_eq!(purge_all(&purger, reported).await, 1);
    let mut got: Vec<_> = ends.0.lock().unwrap().drain(..).collect();
    got.sort_by_key(|(id, ..)| *id);
    let mut expected = vec![
        (never_id, EndCause::ConnectTimeout, never.clone(), Some("tv".to_owned())),
        (left_id, EndCause::GraceExpired, left.clone(), Some("phone".to_owned())),
        (lost_id, EndCause::NodeLost, lost.clone(), Some("box".to_owned())),
    ];
    expected.sort_by_key(|(id, ..)| *id);
    assert_eq!(got, expected);
    for id in [never_id, left_id, lost_id] {
        assert_eq!(s.store.locate(id).await.unwrap(), None, "unindexed");
    }
    // Once: the records are gone, so another round (or another node) finds nothing.
    assert_eq!(purge_all(&purger, reported + 1).await, 0);
    assert_eq!(purge_all(&*second_node(&s).await, reported + 2).await, 0);
    assert_eq!(
        s.store.locate(live_id).await.unwrap(),
        Some(live.clone()),
        "the live one stays"
    );
    assert_eq!(s.store.list(&live, reported + 2).await.unwrap().len(), 1);
}

/// An admission that meets a session whose node stopped frees its slot and
/// marks it lost; its end (`node_lost`) is reported only once its node had
/// `cluster.node_lost_after` to come back, by the next script that reports
/// (here another admission), once; a never-connected one is reported at once.
#[tokio::test]
async fn redis_an_admission_marks_a_session_its_node_lost_and_its_end_is_reported_after_the_wait() {
    use drisc::domain::ports::EndCause;
    let s = Subject::redis().await;
    let ends = Arc::new(Ends::default());
    let other = reporting_node(&s, ends.clone()).await;
    let now = t0();
    let p = pool("lost-by-admission");
    let lost = admit(&s, &p, "box", 2, now).await.unwrap();
    s.store.attach(&p, lost, Holder(3), now).await.unwrap().unwrap();
    let never = admit(&s, &p, "tv", 2, now).await.unwrap();
    s.flush().await;
    // The ends of the two sessions under test reported since the last look
    // (the sessions admitted below never connect, and end too).
    let ends_now = || -> Vec<(SessionId, EndCause)> {
        let mut got: Vec<_> = ends
            .0
            .lock()
            .unwrap()
            .drain(..)
            .filter(|(id, ..)| [lost, never].contains(id))
            .map(|(id, cause, ..)| (id, cause))
            .collect();
        got.sort();
        got
    };
    let later = now + CONNECT.max(PONG) + 1;
    // Both slots are free: the pool (limit 2) takes two more.
    assert!(
        other
            .admit(&p, new(&p, "phone"), limit(2), later)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        other
            .admit(&p, new(&p, "tablet"), limit(2), later)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(ends_now(), vec![(never, EndCause::ConnectTimeout)]);
    assert!(
        other
            .admit(&p, new(&p, "laptop"), limit(3), later + LOST_AFTER - 1)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(ends_now(), vec![], "its node may still come back");
    assert!(
        other
            .admit(&p, new(&p, "car"), limit(4), later + LOST_AFTER)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(ends_now(), vec![(lost, EndCause::NodeLost)]);
    assert!(
        other
            .admit(&p, new(&p, "watch"), limit(5), later + LOST_AFTER + 1)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(ends_now(), vec![], "once");
}

/// A customer's data outlives its last session by the linger, so that a session
/// granted and never connected is still there for a purge round to report.
#[tokio::test]
async fn redis_a_customers_data_lingers_past_its_last_sessions_deadline_for_the_purge() {
    let s = Subject::redis().await;
    let p = pool("purge-linger");
    let now = t0();
    admit(&s, &p, "tv", 1, now).await.unwrap();
    let server = s.redis_server().unwrap();
    let ttl: i64 = server.cmd(&["PTTL", &keys::customer(&p)]);
    // Its deadline is CONNECT away; the hash lives fifteen minutes longer (less the test's own time).
    const LINGER: i64 = 900_000;
    assert!(ttl > i64::try_from(CONNECT).unwrap() + LINGER - 10_000, "PTTL {ttl}");
    assert!(ttl <= i64::try_from(CONNECT).unwrap() + LINGER, "PTTL {ttl}");
}

/// One node runs a purge round per interval, however many ask: the others find
/// the round's lease taken.
#[tokio::test]
async fn redis_one_node_at_a_time_takes_a_purge_round() {
    let s = Subject::redis().await;
    let (a, b) = (second_node(&s).await, second_node(&s).await);
    let cancel = tokio_util::sync::CancellationToken::new();
    let every = Duration::from_secs(30);
    let (first, second) = tokio::join!(a.purge_round(1, every, &cancel), async {
        // Asks while the first round runs (paced over half the interval), then
        // stops that round.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = b.purge_round(2, every, &cancel).await;
        cancel.cancel();
        second
    });
    assert_eq!(first.unwrap(), Some(0), "the first node took the round");
    assert_eq!(second.unwrap(), None, "the lease is the first node's");
    let holder: String = s.redis_server().unwrap().cmd(&["GET", keys::PURGE_LEASE]);
    assert_eq!(holder, "1");
}

/// A purge call reads about `ENTRIES_PER_CALL` index entries at most, so that
/// Redis is never held long whatever a shard holds: a shard of 700 live
/// sessions takes two calls, and none of them is touched.
#[tokio::test]
async fn redis_a_purge_walks_a_big_shard_in_bounded_calls_and_leaves_live_sessions() {
    let s = Subject::redis().await;
    let now = t0();
    // 700 customers of one shard, one pending session each.
    let shard = pool("purge-big-0").shard();
    let pools: Vec<PoolKey> = (0..)
        .map(|i| pool(&format!("purge-big-{i}")))
        .filter(|p| p.shard() == shard)
        .take(700)
        .collect();
    for p in &pools {
        admit(&s, p, "tv", 1, now).await.unwrap();
    }
    let server = s.redis_server().unwrap();
    let before = calls(server, Some("evalsha"));
    let ended = second_node(&s).await.purge_shard(shard, now + 1).await.unwrap();
    assert_eq!(ended, 0);
    assert_eq!(
        calls(server, Some("evalsha")) - before,
        2,
        "700 entries, {} a call",
        drisc::store::redis::purge::ENTRIES_PER_CALL
    );
    for p in pools.iter().step_by(50) {
        assert_eq!(s.store.list(p, now + 2).await.unwrap().len(), 1);
    }
}

/// On a Redis Cluster the purge runs each shard's script on the master of its
/// slot: dead sessions on two masters are both deleted, and their index entries.
#[tokio::test]
async fn redis_cluster_a_purge_reaches_every_master() {
    let s = Subject::redis_cluster().await;
    let (store, cluster) = s.cluster.as_ref().map(|(st, c)| (st.clone(), c)).unwrap();
    let now = t0();
    let a = pool("purge-cluster");
    let master = cluster.master_of(&keys::customer(&a));
    let b = (0..)
        .map(|i| pool(&format!("purge-cluster{i}")))
        .find(|p| cluster.master_of(&keys::customer(p)) != master)
        .unwrap();
    let ida = admit(&s, &a, "tv", 1, now).await.unwrap();
    let idb = admit(&s, &b, "tv", 1, now).await.unwrap();
    let dead_at = now + CONNECT + 1;
    assert_eq!(store.purge_shard(a.shard(), dead_at).await.unwrap(), 1);
    assert_eq!(store.purge_shard(b.shard(), dead_at).await.unwrap(), 1);
    for id in [ida, idb] {
        assert_eq!(s.store.locate(id).await.unwrap(), None);
    }
}
