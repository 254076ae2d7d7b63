//! The limit policies, customer overrides, household cap and remote stop (issue
//! 13) as `SessionControl` applies them, on every session store: the same cases
//! on the memory store and on a real Redis (`conformance::Subject`), with the
//! settings in SQLite behind the settings cache, as the server has them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drisc::domain::control::{
    ControlError, ControlParts, CreateOutcome, CreateRequest, PublisherPolicy, SessionControl, UnavailablePolicy,
};
use drisc::domain::policy::{CustomerOverride, LimitPolicy, MONITOR_HEADROOM, OverrideKey};
use drisc::domain::ports::{Control, EndCause, SessionEvents};
use drisc::domain::settings::{Offer, OfferChoice, Publisher, UnknownOffers};
use drisc::domain::{Clock, Customer, Holder, PoolKey, Session, SessionId};
use drisc::store::SqliteSettings;
use drisc::store::cached_settings::CachedSettings;

use super::conformance::{Subject, timings};

/// What the control told its events.
#[derive(Default)]
struct Told {
    ended: Mutex<Vec<(SessionId, EndCause)>>,
    over_limit: Mutex<Vec<(PoolKey, u32)>>,
}

impl SessionEvents for Told {
    fn ended(&self, _: &PoolKey, id: SessionId, cause: EndCause) {
        self.ended.lock().unwrap().push((id, cause));
    }

    fn over_limit(&self, pool: &PoolKey, limit: u32, policy: LimitPolicy) {
        assert_eq!(policy, LimitPolicy::Monitor);
        self.over_limit.lock().unwrap().push((pool.clone(), limit));
    }
}

struct Rig {
    s: Subject,
    control: Arc<SessionControl>,
    told: Arc<Told>,
    _dir: tempfile::TempDir,
}

const PUBLISHER: &str = "limits";

async fn rig(s: Subject) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteSettings::open(&dir.path().join("settings.db")).await.unwrap();
    let told = Arc::new(Told::default());
    let control = SessionControl::new(ControlParts {
        store: s.store.clone(),
        local: s.local.clone(),
        settings: Arc::new(CachedSettings::new(Arc::new(db), Duration::from_secs(3600))),
        notifier: s.orders.clone(),
        events: told.clone(),
        clock: Clock::new(),
        timings: timings(),
        policy: PublisherPolicy {
            auto_create: true,
            enabled: true,
            takeover_enabled: true,
            default_session_limit: 1,
            unknown_offers: UnknownOffers::Shared,
            max_pools_per_customer: 16,
        },
        on_unavailable: UnavailablePolicy::Refuse,
    });
    let publisher = control.default_publisher(PUBLISHER);
    control.put_publisher(&publisher).await.unwrap();
    Rig {
        s,
        control: Arc::new(control),
        told,
        _dir: dir,
    }
}

impl Rig {
    async fn publisher(&self, on_limit: LimitPolicy, household: Option<u32>) {
        let mut publisher: Publisher = self.control.default_publisher(PUBLISHER);
        publisher.on_limit = on_limit;
        publisher.customer_session_limit = household;
        self.control.put_publisher(&publisher).await.unwrap();
    }

    async fn offer(&self, id: &str, limit: u32, on_limit: Option<LimitPolicy>) {
        let offer = Offer {
            id: id.into(),
            session_limit: limit,
            tags: Vec::new(),
            takeover_enabled: None,
            on_limit,
        };
        self.control.put_offer(PUBLISHER, &offer).await.unwrap();
    }

    async fn create(&self, who: &Customer, offer: &str, name: &str) -> CreateOutcome {
        let request = CreateRequest {
            name,
            offer: OfferChoice::Id(offer),
        };
        self.control.create(who, request).await.unwrap()
    }

    /// `n` creates at once for `who` on `offer` (named `d0`, `d1`...).
    async fn parallel_creates(&self, who: &Customer, offer: &str, n: usize) -> Vec<CreateOutcome> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let control = self.control.clone();
            let (who, offer) = (who.clone(), offer.to_owned());
            tasks.spawn(async move {
                let name = format!("d{i}");
                let request = CreateRequest {
                    name: &name,
                    offer: OfferChoice::Id(&offer),
                };
                control.create(&who, request).await.unwrap()
            });
        }
        tasks.join_all().await
    }

    /// Creates a session and binds it to socket `holder`.
    async fn live(&self, who: &Customer, offer: &str, name: &str, holder: u64) -> (PoolKey, Session) {
        let CreateOutcome::Granted { pool, session, .. } = self.create(who, offer, name).await else {
            panic!("{name} is granted");
        };
        assert!(
            self.control
                .attach(&pool, session.id, Holder(holder))
                .await
                .unwrap()
                .is_some()
        );
        // Redis orders a pool by creation millisecond (then id): the next session
        // is made a millisecond later, so "oldest" means the same on every store.
        tokio::time::sleep(Duration::from_millis(2)).await;
        (pool, session)
    }

    async fn held(&self, pool: &PoolKey) -> Vec<String> {
        let sessions = self.control.sessions(pool).await.unwrap();
        sessions.into_iter().map(|s| s.name).collect()
    }

    fn orders(&self) -> Vec<(Holder, Control)> {
        self.s.orders.0.lock().unwrap().clone()
    }
}

fn customer(id: &str) -> Customer {
    Customer {
        publisher_id: PUBLISHER.into(),
        customer_id: id.into(),
    }
}

fn take_over(name: &str) -> Control {
    Control::TakeOver {
        session_name: name.into(),
    }
}

macro_rules! limit_conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::rig(super::Subject::memory()).await).await; })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::rig(super::Subject::redis().await).await).await; })*
        }
    };
}

limit_conformance!(
    reject_is_the_default_and_refuses_with_the_takeover_list,
    evict_oldest_grants_and_the_oldest_player_is_taken_over_by_the_new_name,
    an_offer_policy_overrides_the_publisher_default,
    parallel_creates_under_evict_oldest_never_exceed_the_limit,
    monitor_grants_past_the_limit_and_reports_each_would_be_refusal,
    monitor_stops_at_its_ceiling_under_parallel_creates,
    an_override_applies_until_it_expires_and_held_sessions_stay,
    the_household_cap_refuses_across_offers_without_offering_takeover,
    a_customer_stops_its_own_session_remotely_and_no_one_elses,
);

async fn reject_is_the_default_and_refuses_with_the_takeover_list(r: Rig) {
    r.offer("S1", 2, None).await;
    let who = customer("reject");
    r.live(&who, "S1", "tv", 1).await;
    r.live(&who, "S1", "phone", 2).await;
    let CreateOutcome::LimitExceeded {
        takeover_enabled,
        active,
    } = r.create(&who, "S1", "laptop").await
    else {
        panic!("refused");
    };
    assert!(takeover_enabled);
    let names: Vec<_> = active.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["tv", "phone"]);
    assert!(
        r.orders().iter().all(|(_, c)| *c == Control::Ping),
        "nobody was taken over"
    );
}

async fn evict_oldest_grants_and_the_oldest_player_is_taken_over_by_the_new_name(r: Rig) {
    r.publisher(LimitPolicy::EvictOldest, None).await;
    r.offer("S1", 2, None).await;
    let who = customer("evict");
    let (pool, oldest) = r.live(&who, "S1", "tv", 11).await;
    r.live(&who, "S1", "phone", 12).await;
    assert!(matches!(
        r.create(&who, "S1", "laptop").await,
        CreateOutcome::Granted { .. }
    ));
    // Created in the same millisecond, Redis lists them by id: compared as a set.
    let mut held = r.held(&pool).await;
    held.sort_unstable();
    assert_eq!(held, ["laptop", "phone"], "the oldest made room");
    assert!(r.orders().contains(&(Holder(11), take_over("laptop"))));
    assert!(!r.orders().iter().any(|(h, c)| *h == Holder(12) && *c != Control::Ping));
    assert!(r.told.ended.lock().unwrap().contains(&(oldest.id, EndCause::TakenOver)));
    assert_eq!(r.control.locate(oldest.id).await.unwrap(), None);
}

async fn an_offer_policy_overrides_the_publisher_default(r: Rig) {
    r.publisher(LimitPolicy::EvictOldest, None).await;
    r.offer("strict", 1, Some(LimitPolicy::Reject)).await;
    let who = customer("mixed");
    r.live(&who, "strict", "tv", 21).await;
    assert!(matches!(
        r.create(&who, "strict", "phone").await,
        CreateOutcome::LimitExceeded { .. }
    ));
}

async fn parallel_creates_under_evict_oldest_never_exceed_the_limit(r: Rig) {
    r.offer("S1", 2, Some(LimitPolicy::EvictOldest)).await;
    let who = customer("evict-hot");
    let outcomes = r.parallel_creates(&who, "S1", 40).await;
    let granted = outcomes
        .iter()
        .filter(|o| matches!(o, CreateOutcome::Granted { .. }))
        .count();
    assert!(granted >= 2, "{granted} granted");
    let pool = PoolKey::new(&who, "S1");
    assert_eq!(r.held(&pool).await.len(), 2, "never more than the limit");
    let evicted = r.told.ended.lock().unwrap().len();
    assert_eq!(evicted, granted - 2, "each grant past the first two evicted one");
}

async fn monitor_grants_past_the_limit_and_reports_each_would_be_refusal(r: Rig) {
    r.offer("S1", 1, Some(LimitPolicy::Monitor)).await;
    let who = customer("monitor");
    for name in ["tv", "phone", "laptop"] {
        assert!(matches!(
            r.create(&who, "S1", name).await,
            CreateOutcome::Granted { .. }
        ));
    }
    let pool = PoolKey::new(&who, "S1");
    let mut held = r.held(&pool).await;
    held.sort_unstable();
    assert_eq!(held, ["laptop", "phone", "tv"]);
    let told = r.told.over_limit.lock().unwrap().clone();
    assert_eq!(told, vec![(pool.clone(), 1), (pool, 1)], "two would-be refusals");
    assert!(r.told.ended.lock().unwrap().is_empty(), "nobody was evicted");
}

/// A customer (or a script with their token) cannot grow a pool under `monitor`
/// without end: past the limit plus `MONITOR_HEADROOM`, creates are refused with
/// the takeover list, however many race for the last places.
async fn monitor_stops_at_its_ceiling_under_parallel_creates(r: Rig) {
    r.offer("S1", 1, Some(LimitPolicy::Monitor)).await;
    let who = customer("monitor-flood");
    let ceiling = 1 + MONITOR_HEADROOM as usize;
    let mut granted = 0;
    for outcome in r.parallel_creates(&who, "S1", ceiling + 20).await {
        match outcome {
            CreateOutcome::Granted { .. } => granted += 1,
            CreateOutcome::LimitExceeded { active, .. } => {
                assert_eq!(active.len(), ceiling, "refused only at the ceiling");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(granted, ceiling);
    let pool = PoolKey::new(&who, "S1");
    assert_eq!(r.held(&pool).await.len(), ceiling, "never past the ceiling");
    let over = r.told.over_limit.lock().unwrap().len();
    assert_eq!(
        over,
        ceiling - 1,
        "every grant past the limit was counted, no refusal was"
    );
    assert!(matches!(
        r.create(&who, "S1", "one-more").await,
        CreateOutcome::LimitExceeded { active, .. } if active.len() == ceiling
    ));
}

async fn an_override_applies_until_it_expires_and_held_sessions_stay(r: Rig) {
    r.offer("S1", 1, None).await;
    let who = customer("boosted");
    let key = OverrideKey {
        publisher_id: PUBLISHER.into(),
        customer_id: "boosted".into(),
        offer_id: "S1".into(),
    };
    let now = r.control.clock().now();
    let boost = |expires_at| CustomerOverride {
        session_limit: 3,
        expires_at,
    };
    // Written through the cache: read back at once.
    r.control
        .put_override(&key, &boost(Some(now + 3_600_000)))
        .await
        .unwrap();
    for name in ["tv", "phone", "laptop"] {
        assert!(matches!(
            r.create(&who, "S1", name).await,
            CreateOutcome::Granted { .. }
        ));
    }
    assert!(
        matches!(r.create(&who, "S1", "car").await, CreateOutcome::LimitExceeded { active, .. } if active.len() == 3)
    );
    // Another customer of the offer keeps the offer's limit.
    let other = customer("plain");
    r.create(&other, "S1", "tv").await;
    assert!(matches!(
        r.create(&other, "S1", "phone").await,
        CreateOutcome::LimitExceeded { .. }
    ));

    // Expired: the offer's limit is back for new sessions; held ones are not kicked.
    r.control.put_override(&key, &boost(Some(now - 1))).await.unwrap();
    let pool = PoolKey::new(&who, "S1");
    assert_eq!(r.held(&pool).await.len(), 3);
    let sessions = r.control.sessions(&pool).await.unwrap();
    r.control.kick(&pool, sessions[0].id).await.unwrap();
    r.control.kick(&pool, sessions[1].id).await.unwrap();
    assert!(
        matches!(r.create(&who, "S1", "car").await, CreateOutcome::LimitExceeded { .. }),
        "limit 1 again"
    );

    // Removed: the same.
    assert!(r.control.delete_override(&key).await.unwrap());
    assert!(!r.control.delete_override(&key).await.unwrap());
    assert_eq!(r.control.customer_override(&key).await.unwrap(), None);
    assert!(matches!(
        r.create(&who, "S1", "car").await,
        CreateOutcome::LimitExceeded { .. }
    ));
    r.control.kick(&pool, sessions[2].id).await.unwrap();
    assert!(matches!(
        r.create(&who, "S1", "car").await,
        CreateOutcome::Granted { .. }
    ));
}

async fn the_household_cap_refuses_across_offers_without_offering_takeover(r: Rig) {
    r.publisher(LimitPolicy::Reject, Some(2)).await;
    r.offer("S1", 3, None).await;
    r.offer("S2", 3, None).await;
    let who = customer("household");
    r.live(&who, "S1", "tv", 31).await;
    r.live(&who, "S2", "phone", 32).await;
    let CreateOutcome::LimitExceeded {
        takeover_enabled,
        active,
    } = r.create(&who, "S1", "laptop").await
    else {
        panic!("refused by the household cap");
    };
    assert!(!takeover_enabled, "the sessions listed may be in other offers' pools");
    // Oldest first, ties (the same millisecond) by id: compared as a set here.
    let mut names: Vec<_> = active.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["phone", "tv"]);
    // A neighbour has a household of its own.
    assert!(matches!(
        r.create(&customer("next-door"), "S1", "tv").await,
        CreateOutcome::Granted { .. }
    ));
}

async fn a_customer_stops_its_own_session_remotely_and_no_one_elses(r: Rig) {
    r.offer("S1", 2, None).await;
    let (owner, intruder) = (customer("owner"), customer("intruder"));
    let (pool, session) = r.live(&owner, "S1", "tv", 41).await;
    let err = r.control.stop_remotely(&intruder, session.id, "x").await.unwrap_err();
    assert!(matches!(err, ControlError::SessionNotFound(_)), "{err}");
    let unknown = r.control.stop_remotely(&owner, SessionId::random(), "x").await;
    assert!(matches!(unknown, Err(ControlError::SessionNotFound(_))));
    assert_eq!(r.held(&pool).await, ["tv"], "the intruder ended nothing");

    r.control.stop_remotely(&owner, session.id, "Kitchen").await.unwrap();
    assert!(r.orders().contains(&(Holder(41), take_over("Kitchen"))));
    assert!(r.held(&pool).await.is_empty(), "its slot is free at once");
    assert!(r.told.ended.lock().unwrap().contains(&(session.id, EndCause::Kicked)));
    let again = r.control.stop_remotely(&owner, session.id, "Kitchen").await;
    assert!(matches!(again, Err(ControlError::SessionNotFound(_))));
}

/// The sweep runs at nice 19: on a node admissions keep saturated it gets almost
/// no CPU, and the players granted a session who never connect would wait in
/// memory until the load dropped. Admissions then reap them, a bite each, but
/// only once they are `control::OVERDUE`: where the sweep keeps up, it alone
/// does. Memory store only: Redis expires its sessions itself.
#[tokio::test(flavor = "current_thread")]
async fn admissions_reap_what_the_sweep_left_overdue() {
    use drisc::domain::control::{ADMISSION_BITE, OVERDUE};
    let r = rig(Subject::memory()).await;
    r.offer("basic", 1, None).await;
    let grant = |id: String| {
        let r = &r;
        async move {
            let outcome = r.create(&customer(&id), "basic", "tv").await;
            assert!(matches!(outcome, CreateOutcome::Granted { .. }), "{id} is granted");
        }
    };
    // Warms the settings cache before time stands still: nothing below reads SQLite.
    grant("first".into()).await;
    tokio::time::pause();
    const NEVER_CONNECTED: usize = 40;
    for i in 0..NEVER_CONNECTED {
        grant(format!("gone-{i}")).await;
    }
    let held = |r: &Rig| r.control.held_count();
    assert_eq!(held(&r), NEVER_CONNECTED + 1);

    // Dead (past the connect timeout), not yet overdue: left to the sweep.
    tokio::time::advance(timings().connect_timeout + Duration::from_millis(OVERDUE / 2)).await;
    grant("early".into()).await;
    assert_eq!(
        held(&r),
        NEVER_CONNECTED + 2,
        "an admission leaves what is not overdue to the sweep"
    );
    assert!(r.told.ended.lock().unwrap().is_empty());

    // Overdue: each admission reaps a bite, oldest first.
    tokio::time::advance(Duration::from_millis(OVERDUE)).await;
    const LATE: usize = 10;
    for i in 0..LATE {
        grant(format!("late-{i}")).await;
    }
    let reaped = LATE * ADMISSION_BITE;
    assert_eq!(held(&r), NEVER_CONNECTED + 2 + LATE - reaped);
    let ended = r.told.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), reaped);
    assert!(ended.iter().all(|(_, cause)| *cause == EndCause::ConnectTimeout));

    // The backlog shrinks while admissions go on, then only the sweep's own is left.
    for i in 0..NEVER_CONNECTED {
        grant(format!("later-{i}")).await;
    }
    assert_eq!(
        r.told.ended.lock().unwrap().len(),
        NEVER_CONNECTED + 1,
        "every overdue session reaped"
    );
    assert_eq!(held(&r), 1 + LATE + NEVER_CONNECTED, "the fresh ones held");
}

/// The sweep gives back on its own the room a flood of sessions left in the
/// memory store's tables: once it has reaped them all and asked for a trim,
/// nothing is left for a trim to give back (reaped and not trimmed, the store
/// gives back four tables' room: `store::memory`'s unit test). Time stands still
/// but for the sweep's own waits, so its passes come as fast as it runs them.
#[tokio::test(flavor = "current_thread")]
async fn the_sweep_reaps_a_flood_and_gives_back_the_room_it_left() {
    use drisc::threads::Rest;
    let r = rig(Subject::memory()).await;
    let local = r.s.local.clone().expect("the memory store keeps its sessions");
    // Past the store's trim floor (65,536 sessions' room in a table), twice.
    const FLOOD: usize = 1 << 17;
    let now = r.control.clock().now();
    for i in 0..FLOOD {
        let pool = super::conformance::pool(&format!("flood-{i}"));
        let new = super::conformance::new(&pool, "tv");
        let granted =
            r.s.store
                .admit(&pool, new, super::conformance::limit(1), now)
                .await
                .unwrap();
        assert!(granted.is_ok());
    }
    assert_eq!(r.control.held_count(), FLOOD);
    tokio::time::pause();
    tokio::time::advance(timings().connect_timeout + Duration::from_millis(1)).await;

    let cancel = tokio_util::sync::CancellationToken::new();
    let every = Duration::from_millis(100);
    let sweep = tokio::spawn(drisc::tasks::sweep::run_trimming(
        r.control.clone(),
        every,
        every * 5,
        cancel.clone(),
        Rest::Yield,
    ));
    let mut waited = Duration::ZERO;
    while r.control.held_count() > 0 {
        assert!(waited < Duration::from_secs(600), "the sweep reaps the flood");
        tokio::time::sleep(every).await;
        waited += every;
    }
    // Past the next pass that asks for a trim.
    tokio::time::sleep(every * 12).await;
    cancel.cancel();
    sweep.await.unwrap();
    assert_eq!(local.trim(), 0, "the sweep gave the flood's room back itself");
}
