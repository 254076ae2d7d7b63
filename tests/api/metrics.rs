//! `GET /metrics` and the session events in the log: a scripted scenario moves
//! every metric by exactly what it should, no id or token leaks into the metrics
//! or the log, and the events carry their fields.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{self, ADMIN_KEY, Api, customer_token, expect_error, forged_token, spawn_app, spawn_app_with};
use crate::players::connect_ok;
use crate::support_process::{ProcessOptions, ServerProcess};

const PUBLISHER: &str = "pub-metrics";
const OFFER: &str = "offer-metrics";
/// Ids distinctive enough to be searched for in the output.
const CUSTOMER: &str = "cust-7f3a9c-secret";
const FLOODER: &str = "cust-flood-5e1b";

/// One series: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// The samples of a scrape, parsed from the text format.
#[derive(Debug, Default)]
struct Scrape(HashMap<Series, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("a sample is 'series value'");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let labels = body
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label is k=\"v\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.insert((name, labels), value);
        }
        Self(samples)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }
}

// What the scenario asks of a server: in-process or the real binary, through its [`Api`].

async fn metrics_response(t: &Api, key: Option<&str>) -> reqwest::Response {
    let mut request = t.http.get(t.url("/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn metrics_text(t: &Api) -> String {
    let response = metrics_response(t, Some(&t.admin_key)).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

async fn scrape(t: &Api) -> Scrape {
    Scrape::parse(&metrics_text(t).await)
}

/// The scenario's create body: a session on OFFER.
fn on_offer() -> Value {
    json!({"offerId": OFFER, "sessionName": "tv"})
}

fn token(customer: &str) -> String {
    customer_token(PUBLISHER, customer)
}

/// What the scenario handed out, to be searched for in the output afterwards.
struct Secrets {
    tokens: Vec<String>,
    session_ids: Vec<String>,
}

/// A granted session, whose id and token are remembered.
async fn grant(secrets: &mut Secrets, response: reqwest::Response) -> helpers::Granted {
    let g = helpers::granted(response).await;
    secrets.session_ids.push(g.session_id.clone());
    secrets.tokens.push(g.body["token"].as_str().unwrap().to_owned());
    g
}

/// create → connect → REQUESTED → PONG → takeover → FINISHED → refused at the
/// limit → kick → bad message → rate limited (and one bad token).
async fn scenario(t: &Api) -> Secrets {
    let put = t
        .admin(
            reqwest::Method::PUT,
            &format!("/publishers/{PUBLISHER}/offers/{OFFER}"),
            Some(json!({"sessionLimit": 1})),
        )
        .await;
    assert_eq!(put.status(), 200);
    let customer = token(CUSTOMER);
    let mut secrets = Secrets {
        tokens: vec![customer.clone(), t.admin_key.clone()],
        session_ids: Vec::new(),
    };

    // A session goes live and answers a PING.
    let a = grant(&mut secrets, t.create(&customer, on_offer()).await).await;
    let mut player_a = connect_ok(&a.endpoint).await;
    let heartbeats = |s: &Scrape| s.get("drisc_store_operation_duration_seconds_count", &[("op", "heartbeat")]);
    let before = heartbeats(&scrape(t).await);
    player_a.send("PONG").await;
    // PONG has no answer: the store's count says when it was handled, so the
    // takeover below does not race it.
    helpers::eventually("the PONG is handled", || async {
        heartbeats(&scrape(t).await) == before + 1.0
    })
    .await;

    // Another device takes it over.
    let body = json!({"offerId": OFFER, "sessionName": "phone", "sessionId": a.session_id});
    let b = grant(&mut secrets, t.post("/takeover", &customer, body).await).await;
    player_a.expect("TAKE_OVER").await;
    player_a.expect_close(4001).await;

    // ... and finishes.
    let mut player_b = connect_ok(&b.endpoint).await;
    player_b.send("FINISHED").await;
    player_b.expect_close(1000).await;

    // A pending session fills the pool; the next is refused; the first is kicked.
    let c = grant(&mut secrets, t.create(&customer, on_offer()).await).await;
    expect_error(t.create(&customer, on_offer()).await, 409, "LimitExceeded").await;
    let kicked = t
        .admin(reqwest::Method::DELETE, &format!("/sessions/{}", c.session_id), None)
        .await;
    assert_eq!(kicked.status(), 204);

    // A player that sends nonsense once, then finishes.
    let d = grant(&mut secrets, t.create(&customer, on_offer()).await).await;
    let mut player_d = connect_ok(&d.endpoint).await;
    player_d.send_text("{\"action\":\"NONSENSE\"}").await;
    player_d.send("FINISHED").await;
    player_d.expect_close(1000).await;

    // A customer past its burst (6 in these tests): six malformed requests
    // spend it, the seventh is refused.
    let flooder = token(FLOODER);
    secrets.tokens.push(flooder.clone());
    for _ in 0..6 {
        expect_error(t.post("/sessions", &flooder, json!({})).await, 400, "InvalidRequest").await;
    }
    expect_error(t.post("/sessions", &flooder, json!({})).await, 429, "RateLimited").await;

    // A token signed with another key.
    let forged = forged_token(PUBLISHER, CUSTOMER);
    secrets.tokens.push(forged.clone());
    expect_error(t.create(&forged, on_offer()).await, 401, "Unauthorized").await;
    secrets
}

/// A change the scenario must make: series name, labels it must carry, by how much.
type Expected = (&'static str, Vec<(&'static str, &'static str)>, f64);

/// Every change the scenario must make.
fn expected() -> Vec<Expected> {
    vec![
        ("drisc_admissions_total", vec![("outcome", "granted")], 3.0),
        ("drisc_admissions_total", vec![("outcome", "limit_exceeded")], 1.0),
        ("drisc_admissions_total", vec![("outcome", "invalid")], 6.0),
        ("drisc_admissions_total", vec![("outcome", "rate_limited")], 1.0),
        ("drisc_admissions_total", vec![("outcome", "unauthorized")], 1.0),
        ("drisc_admissions_total", vec![("outcome", "disabled")], 0.0),
        ("drisc_admissions_total", vec![("outcome", "rejected")], 0.0),
        ("drisc_admissions_total", vec![("outcome", "unavailable")], 0.0),
        ("drisc_admissions_total", vec![], 12.0),
        ("drisc_takeovers_total", vec![], 1.0),
        ("drisc_sessions_ended_total", vec![("cause", "taken_over")], 1.0),
        ("drisc_sessions_ended_total", vec![("cause", "finished")], 2.0),
        ("drisc_sessions_ended_total", vec![("cause", "kicked")], 1.0),
        ("drisc_sessions_ended_total", vec![], 4.0),
        ("drisc_ws_close_total", vec![("code", "4001")], 1.0),
        ("drisc_ws_close_total", vec![("code", "1000")], 2.0),
        ("drisc_ws_close_total", vec![], 3.0),
        ("drisc_bad_messages_total", vec![], 1.0),
        ("drisc_rate_limited_total", vec![("limit", "customer")], 1.0),
        ("drisc_rate_limited_total", vec![("limit", "failed_auth")], 0.0),
        ("drisc_rate_limited_total", vec![("limit", "websocket")], 0.0),
        ("drisc_shed_total", vec![], 0.0),
        ("drisc_log_lines_dropped_total", vec![], 0.0),
        ("drisc_sessions", vec![], 0.0),
        ("drisc_websocket_connections", vec![], 0.0),
        (
            "drisc_http_request_duration_seconds_count",
            vec![("method", "POST"), ("route", "/sessions"), ("status", "200")],
            3.0,
        ),
        (
            "drisc_http_request_duration_seconds_count",
            vec![("method", "POST"), ("route", "/sessions"), ("status", "409")],
            1.0,
        ),
        (
            "drisc_http_request_duration_seconds_count",
            vec![("method", "POST"), ("route", "/sessions"), ("status", "429")],
            1.0,
        ),
        (
            "drisc_http_request_duration_seconds_count",
            vec![("method", "POST"), ("route", "/takeover"), ("status", "200")],
            1.0,
        ),
        (
            "drisc_http_request_duration_seconds_count",
            vec![
                ("method", "DELETE"),
                ("route", "/admin/v1/sessions/{session_id}"),
                ("status", "204"),
            ],
            1.0,
        ),
        (
            "drisc_http_request_duration_seconds_count",
            vec![("method", "GET"), ("route", "/ws")],
            3.0,
        ),
        // admit ×3 + refused admit, take_over.
        (
            "drisc_store_operation_duration_seconds_count",
            vec![("store", "memory"), ("op", "admit")],
            4.0,
        ),
        (
            "drisc_store_operation_duration_seconds_count",
            vec![("store", "memory"), ("op", "take_over")],
            1.0,
        ),
        (
            "drisc_store_operation_duration_seconds_count",
            vec![("store", "memory"), ("op", "attach")],
            3.0,
        ),
        (
            "drisc_store_operation_duration_seconds_count",
            vec![("store", "memory"), ("op", "heartbeat")],
            1.0,
        ),
        ("drisc_store_errors_total", vec![], 0.0),
    ]
}

async fn assert_scenario_moves_every_metric_by_exactly(t: &Api) -> Secrets {
    let before = scrape(t).await;
    let secrets = scenario(t).await;
    // The last socket's task ends just after its close: wait for it to be gone.
    let deadline = tokio::time::Instant::now() + helpers::PATIENCE;
    let after = loop {
        let after = scrape(t).await;
        if after.get("drisc_websocket_connections", &[]) == 0.0 || tokio::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut wrong = Vec::new();
    for (name, labels, by) in expected() {
        let moved = after.get(name, &labels) - before.get(name, &labels);
        if moved != by {
            wrong.push(format!("{name}{labels:?}: moved by {moved}, expected {by}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    secrets
}

/// A server for the scenario, whose flooder spends a burst of 6.
async fn scenario_app() -> helpers::TestApp {
    spawn_app_with(|s| {
        s.limits.customer_burst = 6;
        s.limits.customer_per_second = 1;
    })
    .await
}

#[tokio::test]
async fn a_scripted_scenario_moves_every_metric_by_exactly_the_expected_amount() {
    let app = scenario_app().await;
    let t = app.api.clone();
    let first = scrape(&t).await;
    for name in [
        "drisc_sessions",
        "drisc_websocket_connections",
        "drisc_takeovers_total",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(first.has(name), "{name} is reported from the start");
    }
    assert!(first.get("process_open_fds", &[]) > 0.0);
    assert!(first.get("process_resident_memory_bytes", &[]) > 0.0);
    assert_scenario_moves_every_metric_by_exactly(&t).await;

    // The gauges follow the sessions' states.
    let customer = token(CUSTOMER);
    let pending = helpers::granted(t.create(&customer, on_offer()).await).await;
    let sessions = |s: &Scrape, state| s.get("drisc_sessions", &[("state", state)]);
    let now = scrape(&t).await;
    assert_eq!((sessions(&now, "pending"), sessions(&now, "live")), (1.0, 0.0));
    let player = connect_ok(&pending.endpoint).await;
    let now = scrape(&t).await;
    assert_eq!((sessions(&now, "pending"), sessions(&now, "live")), (0.0, 1.0));
    assert_eq!(now.get("drisc_websocket_connections", &[]), 1.0);
    player.close().await;
    helpers::eventually("the closed socket's session is detached", || async {
        let now = scrape(&t).await;
        sessions(&now, "detached") == 1.0 && sessions(&now, "live") == 0.0
    })
    .await;
    app.stop().await;
}

/// The metric names the shipped alerts and dashboard query (every `drisc_` or
/// `process_` word in them, a histogram's base name included).
fn names_queried_by_the_deploy_files() -> Vec<(String, &'static str)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = Vec::new();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/dashboards/drisc.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        for token in text.split(|c: char| !word(c)) {
            if (token.starts_with("drisc_") || token.starts_with("process_")) && !names.iter().any(|(n, _)| n == token)
            {
                names.push((token.to_owned(), file));
            }
        }
    }
    names
}

/// An alert or a panel on a metric the server does not serve (a typo, a metric
/// renamed) would stay silent forever: every name they query is in a scrape of a
/// server that has run the scenario.
#[tokio::test]
async fn every_metric_the_shipped_alerts_and_dashboard_query_is_served() {
    let app = scenario_app().await;
    let t = app.api.clone();
    scenario(&t).await;
    let served = scrape(&t).await;
    let names = names_queried_by_the_deploy_files();
    assert!(names.len() >= 15, "{names:?}");
    for (name, file) in names {
        let histogram = ["_bucket", "_count", "_sum"]
            .iter()
            .any(|s| served.has(&format!("{name}{s}")));
        assert!(
            served.has(&name) || histogram,
            "{file} queries {name}, which the server does not serve"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn two_servers_in_one_process_keep_their_own_numbers() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let (t1, t2) = (one.api.clone(), two.api.clone());
    helpers::granted(t1.create(&token(CUSTOMER), on_offer()).await).await;
    let granted = |s: &Scrape| s.get("drisc_admissions_total", &[("outcome", "granted")]);
    assert_eq!(granted(&scrape(&t1).await), 1.0);
    assert_eq!(granted(&scrape(&t2).await), 0.0);
    assert_eq!(scrape(&t2).await.get("drisc_sessions", &[]), 0.0);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn metrics_ask_for_the_admin_key_unless_public() {
    let app = spawn_app().await;
    let t = app.api.clone();
    expect_error(metrics_response(&t, None).await, 401, "Unauthorized").await;
    expect_error(
        metrics_response(&t, Some("not-the-admin-key")).await,
        401,
        "Unauthorized",
    )
    .await;
    let ok = metrics_response(&t, Some(ADMIN_KEY)).await;
    assert_eq!(ok.status(), 200);
    let content_type = ok.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("# TYPE drisc_admissions_total counter")
    );
    app.stop().await;

    let closed = spawn_app_with(|s| s.auth.admin_key = String::new().into()).await;
    let t = closed.api.clone();
    expect_error(metrics_response(&t, Some(ADMIN_KEY)).await, 403, "Forbidden").await;
    closed.stop().await;

    let public = spawn_app_with(|s| s.metrics.public = true).await;
    let t = public.api.clone();
    assert_eq!(metrics_response(&t, None).await.status(), 200);
    public.stop().await;
}

#[tokio::test]
async fn routes_are_labelled_by_their_template_and_unknown_paths_as_unmatched() {
    let app = spawn_app().await;
    let t = app.api.clone();
    let id = "0b4d4f6e-5c1e-4d8e-9d0f-3a2b1c0d9e8f";
    let missing = t.admin(reqwest::Method::GET, &format!("/sessions/{id}"), None).await;
    assert_eq!(missing.status(), 404);
    let nowhere = t.http.get(format!("{}/no/such/{id}", t.base)).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    let text = metrics_text(&t).await;
    assert!(!text.contains(id), "a raw path leaked into a label:\n{text}");
    let s = Scrape::parse(&text);
    let count = |route| {
        s.get(
            "drisc_http_request_duration_seconds_count",
            &[("route", route), ("status", "404")],
        )
    };
    assert_eq!(count("/admin/v1/sessions/{session_id}"), 1.0);
    assert_eq!(count("unmatched"), 1.0);
    app.stop().await;
}

/// The event lines of a JSON log whose `fields.event` is `event`.
fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["fields"]["event"] == event).collect()
}

#[tokio::test]
async fn the_real_binary_logs_each_event_with_its_ids_and_leaks_no_id_or_token() {
    let dir = tempfile::tempdir().unwrap();
    // Not the development key, which the server names in a warning on purpose.
    let admin_key = "metrics-test-admin-key-9d27e1b04c";
    let options = ProcessOptions::default()
        .env("DRISC__AUTH__ADMIN_KEY", admin_key)
        .env("DRISC__LOG__FORMAT", "json")
        .env("DRISC__LIMITS__CUSTOMER_BURST", "6")
        .env("DRISC__LIMITS__CUSTOMER_PER_SECOND", "1");
    let server = ServerProcess::start(dir.path(), options);
    let t = server.api().with_admin_key(admin_key);
    let secrets = assert_scenario_moves_every_metric_by_exactly(&t).await;

    let metrics = metrics_text(&t).await;
    for secret in [CUSTOMER, FLOODER]
        .iter()
        .map(|s| s.to_string())
        .chain(secrets.session_ids.iter().cloned())
        .chain(secrets.tokens.iter().cloned())
    {
        assert!(!metrics.contains(&secret), "/metrics shows {secret}");
    }

    // The last event line of the scenario is the fourth session's end.
    let output = server
        .output_once(|log| log.iter().filter(|l| l.contains("\"session_ended\"")).count() >= 4)
        .await;
    let text = output.join("\n");
    for token in &secrets.tokens {
        assert!(!text.contains(token.as_str()), "the log shows a token: {token}");
        // A JWT's signature alone identifies it too.
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() > 16) {
            assert!(!text.contains(signature), "the log shows a token's signature");
        }
    }
    let lines: Vec<Value> = output.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "the log is JSON");
    let with_ids = |line: &Value| {
        let f = &line["fields"];
        f["publisher"] == PUBLISHER && f["customer"] == CUSTOMER && f["offer"] == OFFER
    };
    let granted = events(&lines, "session_granted");
    assert_eq!(granted.len(), 3, "{text}");
    assert!(granted.iter().all(|l| with_ids(l) && l["level"] == "INFO"));
    let granted_ids: Vec<_> = granted.iter().map(|l| l["fields"]["session"].clone()).collect();
    assert_eq!(granted_ids[0], secrets.session_ids[0]);

    let refused = events(&lines, "session_refused");
    assert_eq!(refused.len(), 1);
    assert!(with_ids(refused[0]) && refused[0]["fields"]["reason"] == "limit_exceeded");

    let taken = events(&lines, "session_taken_over");
    assert_eq!(taken.len(), 1);
    assert!(with_ids(taken[0]));
    assert_eq!(taken[0]["fields"]["victim"], secrets.session_ids[0]);
    assert_eq!(taken[0]["fields"]["session"], secrets.session_ids[1]);

    let ended = events(&lines, "session_ended");
    let causes: Vec<_> = ended
        .iter()
        .map(|l| {
            (
                l["fields"]["cause"].as_str().unwrap(),
                l["fields"]["session"].as_str().unwrap(),
            )
        })
        .collect();
    let ids = &secrets.session_ids;
    assert_eq!(
        causes,
        vec![
            ("taken_over", ids[0].as_str()),
            ("finished", ids[1].as_str()),
            ("kicked", ids[2].as_str()),
            ("finished", ids[3].as_str()),
        ]
    );
    assert!(ended.iter().all(|l| with_ids(l)));

    let changed = events(&lines, "settings_changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["fields"]["change"], "offer_put");
    assert_eq!(changed[0]["fields"]["offer"], OFFER);
    assert_eq!(changed[0]["fields"]["session_limit"], 1);
}

#[tokio::test]
async fn a_redis_node_reports_its_bound_sessions_as_live_and_counts_store_errors() {
    let redis = crate::support_redis::RedisServer::start();
    let url = redis.url.clone();
    let mut redis = redis;
    let app = spawn_app_with(move |s| {
        s.storage.sessions = drisc::config::SessionBackend::Redis;
        s.storage.redis_url = url;
    })
    .await;
    let t = app.api.clone();
    let customer = token(CUSTOMER);
    let g = helpers::granted(t.create(&customer, on_offer()).await).await;
    let player = connect_ok(&g.endpoint).await;
    let now = scrape(&t).await;
    assert_eq!(now.get("drisc_sessions", &[("state", "live")]), 1.0);
    assert!(
        !now.0.keys().any(|(n, l)| n == "drisc_sessions" && l["state"] != "live"),
        "pending and detached sessions are in Redis, not counted per node"
    );
    let admits = |s: &Scrape| {
        s.get(
            "drisc_store_operation_duration_seconds_count",
            &[("store", "redis"), ("op", "admit")],
        )
    };
    assert_eq!(admits(&now), 1.0);

    redis.kill();
    let errors = |s: &Scrape| s.get("drisc_store_errors_total", &[("store", "redis"), ("op", "admit")]);
    let unavailable = |s: &Scrape| s.get("drisc_admissions_total", &[("outcome", "unavailable")]);
    let before = scrape(&t).await;
    expect_error(t.create(&customer, on_offer()).await, 503, "ServiceUnavailable").await;
    let after = scrape(&t).await;
    assert_eq!(errors(&after) - errors(&before), 1.0);
    assert_eq!(unavailable(&after) - unavailable(&before), 1.0);
    assert_eq!(admits(&after) - admits(&before), 1.0);
    drop(player);
    app.stop().await;
}

#[tokio::test]
async fn failed_authentications_past_their_budget_are_counted_as_rate_limited() {
    // Public: the scrapes come from the address that gets blocked.
    let app = spawn_app_with(|s| {
        s.limits.failed_auth_burst = 2;
        s.limits.failed_auth_per_minute = 1;
        s.metrics.public = true;
    })
    .await;
    let t = app.api.clone();
    let before = scrape(&t).await;
    for status in [401, 401, 429] {
        let response = t.create("not-a-token", on_offer()).await;
        assert_eq!(response.status(), status);
    }
    // The address is now blocked, even with a good token.
    assert_eq!(t.create(&token(CUSTOMER), on_offer()).await.status(), 429);
    let after = scrape(&t).await;
    let moved = |name, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(moved("drisc_rate_limited_total", &[("limit", "failed_auth")]), 2.0);
    assert_eq!(moved("drisc_admissions_total", &[("outcome", "unauthorized")]), 2.0);
    assert_eq!(moved("drisc_admissions_total", &[("outcome", "rate_limited")]), 2.0);
    app.stop().await;
}

#[tokio::test]
async fn requests_shed_past_the_in_flight_bound_are_counted() {
    let app = spawn_app_with(|s| s.server.max_requests_in_flight = 1).await;
    let t = app.api.clone();
    let before = scrape(&t).await;
    // A request whose body never comes stays in flight.
    let stuck = helpers::half_sent_create(app.port, &token(CUSTOMER)).await;
    let mut refused = 0.0;
    helpers::eventually("a request is shed", || {
        let t = &t;
        async move { t.http.get(format!("{}/health", t.base)).send().await.unwrap().status() == 503 }
    })
    .await;
    refused += 1.0;
    drop(stuck);
    // Scrapes may be shed too until the stuck request is gone: each counts.
    let deadline = tokio::time::Instant::now() + helpers::PATIENCE;
    let after = loop {
        let response = metrics_response(&t, Some(ADMIN_KEY)).await;
        if response.status() == 200 {
            break Scrape::parse(&response.text().await.unwrap());
        }
        refused += 1.0;
        assert!(tokio::time::Instant::now() < deadline, "the stuck request never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let shed = |s: &Scrape| s.get("drisc_shed_total", &[("what", "request")]);
    assert_eq!(shed(&after) - shed(&before), refused, "every 503 is counted, once");
    app.stop().await;
}

#[tokio::test]
async fn made_up_methods_share_one_label_value() {
    let app = spawn_app().await;
    let t = app.api.clone();
    for method in ["BREW", "WHEN", "FOO42"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = t
            .http
            .request(method, format!("{}/sessions", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let text = metrics_text(&t).await;
    assert!(!text.contains("BREW") && !text.contains("FOO42"), "{text}");
    let s = Scrape::parse(&text);
    assert_eq!(
        s.get(
            "drisc_http_request_duration_seconds_count",
            &[("method", "other"), ("route", "/sessions")]
        ),
        3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn ending_a_customers_sessions_counts_each_as_kicked_and_times_the_store_calls() {
    let app = spawn_app().await;
    let t = app.api.clone();
    for offer in [OFFER, "offer-metrics-2"] {
        let put = t
            .admin(
                reqwest::Method::PUT,
                &format!("/publishers/{PUBLISHER}/offers/{offer}"),
                Some(json!({"sessionLimit": 2})),
            )
            .await;
        assert_eq!(put.status(), 200);
    }
    let customer = token(CUSTOMER);
    helpers::granted(t.create(&customer, on_offer()).await).await;
    helpers::granted(t.create(&customer, on_offer()).await).await;
    let other = t
        .post(
            "/sessions",
            &customer,
            json!({"offerId": "offer-metrics-2", "sessionName": "tv"}),
        )
        .await;
    let other = helpers::granted(other).await;
    let mut player = connect_ok(&other.endpoint).await;
    let before = scrape(&t).await;

    let listed = t
        .admin(
            reqwest::Method::GET,
            &format!("/sessions?publisherId={PUBLISHER}&customerId={CUSTOMER}"),
            None,
        )
        .await;
    assert_eq!(listed.status(), 200);
    let kicked = t
        .admin(
            reqwest::Method::DELETE,
            &format!("/publishers/{PUBLISHER}/customers/{CUSTOMER}/sessions"),
            None,
        )
        .await;
    assert_eq!(kicked.status(), 200);
    assert_eq!(kicked.json::<Value>().await.unwrap(), json!({"ended": 3}));
    player.expect("EXPIRED").await;
    player.expect_close(4003).await;

    let after = scrape(&t).await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(moved("drisc_sessions_ended_total", &[("cause", "kicked")]), 3.0);
    assert_eq!(moved("drisc_sessions_ended_total", &[]), 3.0);
    let op = |op| {
        moved(
            "drisc_store_operation_duration_seconds_count",
            &[("store", "memory"), ("op", op)],
        )
    };
    assert_eq!(op("customer_sessions"), 1.0);
    assert_eq!(op("end_customer"), 1.0);
    assert_eq!(after.get("drisc_sessions", &[]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn the_allocators_figures_are_reported_so_a_cache_filling_can_be_told_from_a_leak() {
    let app = spawn_app().await;
    let now = scrape(&app.api).await;
    let figure = |name: &str| {
        assert!(now.has(name), "{name} is reported");
        now.get(name, &[])
    };
    let (allocated, active, resident) = (
        figure("drisc_allocator_allocated_bytes"),
        figure("drisc_allocator_active_bytes"),
        figure("drisc_allocator_resident_bytes"),
    );
    figure("drisc_allocator_retained_bytes");
    // jemalloc's own order (the test binary does not allocate through it, so the
    // figures are its own small ones; the server's are read by bench/soak).
    assert!(resident > 0.0, "jemalloc's metadata at least is resident");
    assert!(
        allocated <= active && active <= resident,
        "{allocated} ≤ {active} ≤ {resident}"
    );
}
