//! `GET /admin/v1/events`: the operators' live stream of session events
//! (Server-Sent Events), with the admin key in a header, a publisher filter, a
//! cap on open streams, and a slow reader told what it skipped.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Api, expect_error, spawn_app_with};

/// An open stream, read as text.
struct Stream {
    response: reqwest::Response,
    text: String,
}

impl Stream {
    async fn open(api: &Api, query: &str) -> Stream {
        let response = api
            .http
            .get(api.url(&format!("/admin/v1/events{query}")))
            .bearer_auth(&api.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Stream {
            response,
            text: String::new(),
        }
    }

    /// Reads until `done` holds of the events so far (type, data).
    async fn until(&mut self, what: &str, done: impl Fn(&[(String, Value)]) -> bool) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = parse(&self.text);
            if done(&events) {
                return events;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("waited in vain for {what}; got {}", self.text))
                .unwrap()
                .expect("the stream stays open");
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// The complete events of an SSE text: (event, data as JSON).
fn parse(text: &str) -> Vec<(String, Value)> {
    let complete = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
    complete
        .split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn the_event_stream_shows_a_grant_and_an_end() {
    let app = spawn_app_with(|_| {}).await;
    app.put_offer("1", "o", 1, &[]).await;
    let mut stream = Stream::open(&app, "").await;
    let token = app.token("1", "42");
    let granted = app.create_ok(&token, "o", "TV").await;
    assert_eq!(app.end_session(&token, &granted.session_id).await.status(), 204);
    let events = stream
        .until("a grant and an end", |e| e.iter().any(|(t, _)| t == "session.ended"))
        .await;
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["session.granted", "session.kicked", "session.ended"]);
    for (t, data) in &events {
        // The same body as a webhook's.
        assert_eq!(data["type"], *t);
        assert_eq!(data["data"]["sessionId"], granted.session_id);
        assert_eq!(data["data"]["sessionName"], "TV");
        assert!(data["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(events[2].1["data"]["cause"], "kicked");
    assert!(
        stream.text.contains("\nid: msg_") || stream.text.starts_with("id: msg_"),
        "{}",
        stream.text
    );
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_can_show_one_publisher_only() {
    let app = spawn_app_with(|_| {}).await;
    app.put_offer("1", "o", 1, &[]).await;
    app.put_offer("2", "o", 1, &[]).await;
    let mut stream = Stream::open(&app, "?publisher=2").await;
    app.create_ok(&app.token("1", "42"), "o", "TV").await;
    app.create_ok(&app.token("2", "42"), "o", "TV").await;
    let events = stream.until("publisher 2's grant", |e| !e.is_empty()).await;
    assert_eq!(events[0].1["data"]["publisherId"], "2");
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_needs_the_admin_key_and_is_capped() {
    let app = spawn_app_with(|s| {
        s.events.max_streams = 1;
        s.events.stream_keep_alive = Duration::from_millis(100);
    })
    .await;
    let response = app.http.get(app.url("/admin/v1/events")).send().await.unwrap();
    expect_error(response, 401, "Unauthorized").await;
    let response = app
        .http
        .get(app.url("/admin/v1/events?token=x"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "InvalidRequest").await;

    let first = Stream::open(&app, "").await;
    let response = app.admin(Method::GET, "/events", None).await;
    let body = expect_error(response, 503, "ServiceUnavailable").await;
    assert!(
        body["message"].as_str().unwrap().contains("events.max_streams"),
        "{body}"
    );
    // Closing the first frees its place (noticed at the next keep-alive).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = app
            .http
            .get(app.url("/admin/v1/events"))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed stream's place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_skips_ahead_and_is_told_how_many_it_missed() {
    let app = spawn_app_with(|s| {
        s.events.stream_buffer = 4;
        s.limits.enabled = false;
    })
    .await;
    app.put_offer("1", "o", 20, &[]).await;
    let token = app.token("1", "42");
    for i in 0..12 {
        app.create_ok(&token, "o", &format!("S{i}")).await;
    }
    let mut stream = Stream::open(&app, "").await;
    // 24 events (kicked, ended per session) reported at once, for a buffer of 4.
    let response = app
        .admin(Method::DELETE, "/publishers/1/customers/42/sessions", None)
        .await;
    assert!(response.status().is_success());
    let events = stream
        .until("the lagged notice", |e| e.iter().any(|(t, _)| t == "lagged"))
        .await;
    let (_, lagged) = events.iter().find(|(t, _)| t == "lagged").unwrap();
    let skipped = lagged["skipped"].as_u64().unwrap();
    assert!(skipped >= 1, "{lagged}");
    // What follows the notice are the newest events, still whole.
    let events = stream
        .until("the newest end", |e| {
            e.iter()
                .skip_while(|(t, _)| t != "lagged")
                .any(|(t, _)| t == "session.ended")
        })
        .await;
    assert!(events.len() as u64 + skipped <= 25, "{events:?}");
    let metrics = crate::webhooks::metrics_text(&app).await;
    assert!(crate::webhooks::counter(&metrics, "drisc_event_streams_lagged_total") >= skipped);
    app.stop().await;
}

/// The limit policies' own events: `monitor` reports the refusal it did not make
/// (`enforced: false`) before the grant; `evict_oldest` reports the session it
/// replaced as taken over and ended, as a takeover does; the household cap's
/// refusal names its reason.
#[tokio::test]
async fn limit_policies_and_the_household_cap_report_their_events() {
    let app = spawn_app_with(|_| {}).await;
    let offer = |policy: &str| Some(serde_json::json!({"sessionLimit": 1, "onLimit": policy}));
    assert!(
        app.admin(Method::PUT, "/publishers/1/offers/m", offer("monitor"))
            .await
            .status()
            .is_success()
    );
    assert!(
        app.admin(Method::PUT, "/publishers/1/offers/e", offer("evict_oldest"))
            .await
            .status()
            .is_success()
    );
    let mut stream = Stream::open(&app, "").await;
    let token = app.token("1", "42");

    app.create_ok(&token, "m", "first").await;
    app.create_ok(&token, "m", "second").await;
    let events = stream
        .until("monitor's second grant", |e| {
            e.iter().filter(|(t, _)| t == "session.granted").count() == 2
        })
        .await;
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["session.granted", "session.refused", "session.granted"]);
    let refused = &events[1].1["data"];
    assert_eq!(
        (refused["reason"].clone(), refused["enforced"].clone()),
        (serde_json::json!("limit_exceeded"), serde_json::json!(false))
    );
    assert_eq!(refused["sessionName"], "second");

    let oldest = app.create_ok(&token, "e", "oldest").await;
    app.create_ok(&token, "e", "newest").await;
    let events = stream
        .until("the eviction", |e| {
            e.iter().filter(|(t, _)| t == "session.granted").count() == 4
        })
        .await;
    let types: Vec<_> = events[3..].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "session.granted",
            "session.taken_over",
            "session.ended",
            "session.granted"
        ]
    );
    assert_eq!(events[4].1["data"]["sessionId"], oldest.session_id);
    assert_eq!(events[5].1["data"]["cause"], "taken_over");

    app.put_offer("1", "h", 5, &[]).await;
    let cap = serde_json::json!({"customerSessionLimit": 3});
    assert!(
        app.admin(Method::PUT, "/publishers/1", Some(cap))
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        app.create(&token, serde_json::json!({"offerId": "h", "sessionName": "over"}))
            .await
            .status(),
        409
    );
    let events = stream
        .until("the household refusal", |e| {
            e.iter().filter(|(t, _)| t == "session.refused").count() == 2
        })
        .await;
    let refused = &events.iter().rfind(|(t, _)| t == "session.refused").unwrap().1["data"];
    assert_eq!(
        (refused["reason"].clone(), refused["enforced"].clone()),
        (serde_json::json!("household_limit"), serde_json::json!(true))
    );
    app.stop().await;
}

/// A stream is a request in flight for as long as it lasts: the idle deadline,
/// which closes connections with nothing in flight, never cuts it between events.
#[tokio::test]
async fn a_quiet_stream_outlives_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.server.idle_timeout = Duration::from_secs(1);
        s.events.stream_keep_alive = Duration::from_secs(60);
    })
    .await;
    app.put_offer("1", "o", 1, &[]).await;
    let mut stream = Stream::open(&app, "").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.create_ok(&app.token("1", "42"), "o", "TV").await;
    let events = stream.until("a grant after the quiet spell", |e| !e.is_empty()).await;
    assert_eq!(events[0].0, "session.granted");
    app.stop().await;
}
