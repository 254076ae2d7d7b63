//! The console and the demo player in a real headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by scripts/test-deps), driven over WebDriver
//! with fantoccini. The demo runs examples/player.js, so these test it too.
//!
//! Each test starts its own chromedriver (in a process group of its own, killed
//! with its Chromium when the test ends, even on a panic) and the tests take turns,
//! so one browser runs at a time. Outside CI a machine without chromedriver skips
//! them, saying so; in CI (`CI=true`) that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};

use helpers::{ADMIN_KEY, TestApp, spawn_app};

/// One browser at a time: the machine's cores are few, and a test's timeouts must
/// not depend on how many browsers the others run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a page has to show what a step should show.
const PATIENCE: Duration = Duration::from_secs(15);

const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn find_program(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|name| (*name).to_owned())
}

/// chromedriver and the Chromium it starts, for one test.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (outside CI) when this machine has no chromedriver.
    async fn start() -> Option<Browser> {
        let Some(driver_program) = find_program(&["chromedriver"]) else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "chromedriver is not installed: run scripts/test-deps (in CI the browser tests never skip)"
            );
            eprintln!("SKIPPED: chromedriver is not installed; run scripts/test-deps to run the browser tests");
            return None;
        };
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).expect("a Chromium to drive");
        let port = free_port();
        let mut command = Command::new(driver_program);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that dropping the test kills Chromium too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            client: None,
            driver,
            _profile: profile,
        };
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", browser._profile.path().display()));
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": which(&chromium), "args": args}),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// Ends the WebDriver session (Chromium quits); the driver goes when dropped.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Opens `url` in a new tab and makes it current.
    async fn new_tab(&self, url: &str) -> fantoccini::wd::WindowHandle {
        let tab = self.client().new_window(true).await.unwrap();
        self.client().switch_to_window(tab.handle.clone()).await.unwrap();
        self.open(url).await;
        tab.handle
    }

    async fn open(&self, url: &str) {
        self.client().goto(url).await.unwrap();
        self.until_script("return document.body.dataset.ready === 'true'", "the page's script ran")
            .await;
    }

    async fn switch(&self, tab: &fantoccini::wd::WindowHandle) {
        self.client().switch_to_window(tab.clone()).await.unwrap();
    }

    async fn script(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns true.
    async fn until_script(&self, script: &str, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.script(script).await == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the element with this id.
    async fn text(&self, id: &str) -> String {
        let value = self
            .client()
            .execute(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
                vec![json!(id)],
            )
            .await
            .unwrap();
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element with this id shows `expected`.
    async fn until_text(&self, id: &str, expected: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(id).await;
            if text == expected {
                return;
            }
            assert!(Instant::now() < deadline, "#{id} shows {text:?}, not {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element `css` selects, once it is shown and enabled: a page shows its parts
    /// after its own awaits, and WebDriver refuses to type into a hidden one.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(element) = self.client().find(Locator::Css(css)).await
                && element.is_displayed().await.unwrap_or(false)
                && element.is_enabled().await.unwrap_or(false)
            {
                return element;
            }
            assert!(Instant::now() < deadline, "{css} is not shown and enabled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.element(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// What the pages wrote to the console at level SEVERE: errors, CSP violations included.
    async fn console_errors(&self) -> Vec<String> {
        let log = self.client().issue_cmd(BrowserLog).await.unwrap();
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails on any console error that is a CSP violation or an uncaught exception.
    async fn assert_no_csp_or_script_errors(&self) {
        let errors = self.console_errors().await;
        let bad: Vec<&String> = errors
            .iter()
            .filter(|m| m.contains("Content Security Policy") || m.contains("Uncaught") || m.contains("SyntaxError"))
            .collect();
        assert!(bad.is_empty(), "console errors: {bad:?}");
    }

    /// Every form control shown has a name a screen reader reads: a `<label for>`, or
    /// `aria-label`.
    async fn assert_every_control_is_labelled(&self) {
        let unlabelled = self
            .script(
                "return [...document.querySelectorAll('input, select, textarea')]
                   .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                   .map(e => e.outerHTML)",
            )
            .await;
        assert_eq!(unlabelled, json!([]), "controls without a label");
    }

    async fn screenshot(&self, path: &std::path::Path) {
        self.script("window.scrollTo(0, 0); document.activeElement?.blur(); return true")
            .await;
        let png = self.client().screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group: chromedriver and every Chromium process it started.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.driver.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

fn which(program: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// chromedriver's log endpoint (not in the W3C protocol): the browser's console.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Chrome's DevTools command through chromedriver: the dark colour scheme for a screenshot.
#[derive(Debug)]
struct PreferDark;

impl WebDriverCompatibleCommand for PreferDark {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        let body = json!({
            "cmd": "Emulation.setEmulatedMedia",
            "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        });
        (Method::POST, Some(body.to_string()))
    }
}

/// An app whose publisher `demo` has the offer `demo-offer` limited to one session.
async fn demo_app() -> TestApp {
    let app = spawn_app().await;
    app.put_offer("demo", "demo-offer", 1, &["live"]).await;
    app
}

async fn sessions_of(app: &TestApp, customer: &str) -> Vec<Value> {
    let page: Value = app
        .admin(
            Method::GET,
            &format!("/sessions?publisherId=demo&customerId={customer}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    page["sessions"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn two_demo_tabs_go_through_refusal_takeover_and_finished() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;
    let demo = app.url("/demo");

    // Tab A plays: REQUESTED → OK.
    browser.open(&demo).await;
    let tab_a = browser.client().window().await.unwrap();
    browser.fill("#session-name", "Tab A").await;
    browser.click("#play").await;
    browser.until_text("state", "playing").await;
    let session_a = browser.text("session-id").await;
    browser
        .until_script(
            "return [...document.querySelectorAll('#steps li')].some(li => li.textContent.includes('{\"action\":\"OK\"}'))",
            "the OK step is shown",
        )
        .await;

    // Tab B, same customer: the limit of 1 refuses it, listing tab A's session.
    let tab_b = browser.new_tab(&demo).await;
    browser.fill("#session-name", "Tab B").await;
    browser.click("#play").await;
    browser.until_text("state", "refused").await;
    let listed = browser
        .script(
            "return [...document.querySelectorAll('#takeover-list button.take-over')].map(b => b.dataset.sessionId)",
        )
        .await;
    assert_eq!(listed, json!([session_a]), "the refusal lists tab A's session");

    // B takes A's session over: B plays, A is told TAKE_OVER with B's name.
    browser.click("#takeover-list button.take-over").await;
    browser.until_text("state", "playing").await;
    let session_b = browser.text("session-id").await;
    assert_ne!(session_a, session_b);
    browser.switch(&tab_a).await;
    browser.until_text("state", "taken-over").await;
    assert!(
        browser.text("message").await.contains("Tab B"),
        "{}",
        browser.text("message").await
    );
    let steps = browser.text("steps").await;
    assert!(steps.contains(r#""action":"TAKE_OVER""#), "{steps}");
    let held: Vec<String> = sessions_of(&app, "42")
        .await
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(held, vec![session_b.clone()]);

    // B stops (FINISHED): the slot is free, and A's Play is granted again.
    browser.switch(&tab_b).await;
    browser.click("#stop").await;
    browser.until_text("state", "finished").await;
    let deadline = Instant::now() + PATIENCE;
    while !sessions_of(&app, "42").await.is_empty() {
        assert!(Instant::now() < deadline, "FINISHED did not free the slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.switch(&tab_a).await;
    browser.click("#play").await;
    browser.until_text("state", "playing").await;
    assert_eq!(sessions_of(&app, "42").await.len(), 1);

    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

async fn sign_in(browser: &Browser, key: &str) {
    browser.fill("#admin-key", key).await;
    browser.click("#sign-in").await;
}

/// Signs in with the right key and waits for the console to show.
async fn sign_in_as_admin(browser: &Browser) {
    sign_in(browser, ADMIN_KEY).await;
    browser
        .until_script("return document.body.dataset.signedIn === 'true'", "signed in")
        .await;
}

#[tokio::test]
async fn a_console_kick_ends_a_demo_tabs_session() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;

    browser.open(&app.url("/demo")).await;
    let demo_tab = browser.client().window().await.unwrap();
    browser.click("#play").await;
    browser.until_text("state", "playing").await;
    let session = browser.text("session-id").await;

    browser.new_tab(&app.url("/console")).await;
    sign_in_as_admin(&browser).await;
    browser.fill("#search-publisher", "demo").await;
    browser.fill("#search-customer", "42").await;
    browser.click("#search-go").await;
    browser
        .click(&format!("button.kick[data-session-id='{session}']"))
        .await;
    browser
        .until_script(
            "return document.getElementById('notice').textContent.includes('ended')",
            "the kick is confirmed",
        )
        .await;

    // The demo's player was told EXPIRED and dropped its session.
    browser.switch(&demo_tab).await;
    browser.until_text("state", "expired").await;
    assert!(sessions_of(&app, "42").await.is_empty());
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_limit_edited_in_the_console_applies_to_the_next_create() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;
    let token = app.token("demo", "7");
    assert_eq!(app.create(&token, json!({"offerId": "demo-offer"})).await.status(), 200);
    assert_eq!(
        app.create(&token, json!({"offerId": "demo-offer"})).await.status(),
        409,
        "the limit is 1 before the edit"
    );

    browser.open(&app.url("/console")).await;
    sign_in_as_admin(&browser).await;
    browser.fill("#open-publisher", "demo").await;
    browser.click("#open-publisher-go").await;
    let row = "tr[data-offer-id='demo-offer']";
    browser.fill(&format!("{row} .offer-limit"), "2").await;
    browser.click(&format!("{row} .offer-save")).await;
    browser
        .until_script(
            "return document.getElementById('notice').textContent.includes('demo-offer saved')",
            "the offer is saved",
        )
        .await;

    assert_eq!(
        app.create(&token, json!({"offerId": "demo-offer"})).await.status(),
        200,
        "the edited limit (2) admits a second session"
    );
    assert_eq!(app.create(&token, json!({"offerId": "demo-offer"})).await.status(), 409);
    // The other fields came back as they were.
    let offer: Value = app
        .admin(Method::GET, "/publishers/demo", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(offer["offers"][0]["tags"], json!(["live"]));
    assert_eq!(offer["offers"][0]["sessionLimit"], 2);

    // A new publisher, created from the console with its settings and an offer.
    browser.fill("#open-publisher", "fresh").await;
    browser.click("#open-publisher-go").await;
    browser
        .until_script(
            "return document.getElementById('publisher-h').textContent === 'Publisher fresh'",
            "the form",
        )
        .await;
    browser.fill("#pub-defaultSessionLimit", "3").await;
    let takeover = browser.client().find(Locator::Id("pub-takeoverEnabled")).await.unwrap();
    takeover.select_by_value("false").await.unwrap();
    browser.click("#publisher-save").await;
    browser
        .until_script(
            "return document.getElementById('notice').textContent === 'Publisher fresh saved.'",
            "saved",
        )
        .await;
    browser.fill("#new-offer-id", "fresh-offer").await;
    browser.fill("#new-offer-limit", "4").await;
    browser.fill("#new-offer-tags", "vod, live").await;
    browser.click("#new-offer-save").await;
    browser
        .until_script(
            "return !!document.querySelector(\"tr[data-offer-id='fresh-offer']\")",
            "the new offer's row",
        )
        .await;
    let fresh: Value = app
        .admin(Method::GET, "/publishers/fresh", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["defaultSessionLimit"], 3, "{fresh}");
    assert_eq!(fresh["takeoverEnabled"], false, "{fresh}");
    assert_eq!(fresh["enabled"], true, "what was not edited keeps its default: {fresh}");
    assert_eq!(
        fresh["offers"],
        json!([{"offerId": "fresh-offer", "sessionLimit": 4, "tags": ["vod", "live"], "takeoverEnabled": null}])
    );
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_console_refuses_a_wrong_admin_key_and_keeps_the_right_one_out_of_urls_and_local_storage() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = spawn_app().await;
    browser.open(&app.url("/console")).await;

    sign_in(&browser, "not-the-admin-key").await;
    browser.until_text("signin-error", "This admin key is not valid.").await;
    assert_eq!(
        browser.script("return document.getElementById('app').hidden").await,
        json!(true)
    );
    assert_eq!(
        browser.script("return sessionStorage.getItem('drisc.adminKey')").await,
        Value::Null
    );

    sign_in_as_admin(&browser).await;
    assert_eq!(
        browser.script("return sessionStorage.getItem('drisc.adminKey')").await,
        json!(ADMIN_KEY)
    );
    assert_eq!(browser.script("return localStorage.length").await, json!(0));
    assert!(
        !browser
            .client()
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(ADMIN_KEY)
    );
    // The event stream was tried (this server may or may not have one).
    browser
        .until_script(
            "return document.getElementById('events-status').textContent !== 'Not connected.'",
            "the event stream tried",
        )
        .await;
    // The live figures come from /metrics with the key: they fill in by themselves.
    browser
        .until_script(
            "return /^\\d+$/.test(document.getElementById('fig-sockets').textContent)",
            "figures",
        )
        .await;
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

/// Writes docs/console.png, docs/demo.png and docs/console-dark.png when
/// DRISC_SCREENSHOTS is set (scripts/screenshots); otherwise only checks that
/// both pages render under their CSP with no error.
#[tokio::test]
async fn both_pages_render_under_their_csp_and_can_be_photographed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;
    let docs =
        std::env::var_os("DRISC_SCREENSHOTS").map(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    // Some sessions to show.
    for customer in ["42"] {
        let token = app.token("demo", customer);
        app.create(
            &token,
            json!({"offerId": "demo-offer", "sessionName": "Living room TV"}),
        )
        .await;
    }

    browser.open(&app.url("/demo")).await;
    browser.fill("#session-name", "Laptop").await;
    browser.click("#play").await;
    browser.until_text("state", "refused").await;
    browser.click("#takeover-list button.take-over").await;
    browser.until_text("state", "playing").await;
    browser.assert_no_csp_or_script_errors().await;
    browser.assert_every_control_is_labelled().await;
    if let Some(dir) = &docs {
        browser.screenshot(&dir.join("demo.png")).await;
    }

    browser.new_tab(&app.url("/console")).await;
    sign_in_as_admin(&browser).await;
    browser.fill("#open-publisher", "demo").await;
    browser.click("#open-publisher-go").await;
    browser.fill("#search-publisher", "demo").await;
    browser.fill("#search-customer", "42").await;
    browser.click("#search-go").await;
    browser
        .until_script(
            "return document.querySelectorAll('#session-rows tr').length > 0",
            "sessions listed",
        )
        .await;
    // A few samples for the chart.
    browser
        .until_script(
            "return document.querySelectorAll('#chart polyline').length > 0",
            "the chart is drawn",
        )
        .await;
    browser.assert_no_csp_or_script_errors().await;
    browser.assert_every_control_is_labelled().await;
    if let Some(dir) = &docs {
        // A few more samples while players come and go, for a chart worth showing.
        for i in 0..16 {
            let token = app.token("demo", format!("viewer-{}", i % 5));
            app.create(&token, json!({"offerId": "demo-offer", "sessionName": "TV"}))
                .await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        browser
            .until_script(
                "return document.querySelector('#chart polyline')?.getAttribute('points').split(' ').length >= 8",
                "eight samples",
            )
            .await;
        // Tall enough for the whole page.
        browser.client().set_window_size(1280, 1500).await.unwrap();
        browser.screenshot(&dir.join("console.png")).await;
        browser.client().issue_cmd(PreferDark).await.unwrap();
        let dark = browser
            .script("return matchMedia('(prefers-color-scheme: dark)').matches")
            .await;
        assert_eq!(dark, json!(true));
        browser.screenshot(&dir.join("console-dark.png")).await;
    }
    browser.close().await;
    app.stop().await;
}

/// A customer holding 10,000 sessions: the console draws one page of 100 (the
/// server pages with its cursor), and Next and Previous walk the pages.
#[tokio::test]
async fn the_console_shows_a_customer_with_ten_thousand_sessions_a_page_at_a_time() {
    use futures_util::StreamExt;
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    // 100 offers of 100 sessions each: the customer's sessions across its pools are
    // what the listing pages through (one pool of 10,000 would make each create
    // check 10,000 sessions, and the test slow).
    const OFFERS: usize = 100;
    let app = helpers::spawn_app_with(|s| {
        s.limits.enabled = false;
        s.publishers.max_pools_per_customer = OFFERS as u32;
    })
    .await;
    const SESSIONS: usize = 10_000;
    for offer in 0..OFFERS {
        app.put_offer("big", &format!("offer-{offer:03}"), (SESSIONS / OFFERS) as u32, &[])
            .await;
    }
    let token = app.token("big", "household");
    let granted = futures_util::stream::iter(0..SESSIONS)
        .map(|i| {
            let (app, token) = (&app, &token);
            async move {
                let body = json!({"offerId": format!("offer-{:03}", i % OFFERS), "sessionName": format!("device {i}")});
                app.create(token, body).await.status().as_u16()
            }
        })
        .buffer_unordered(16)
        .filter(|status| std::future::ready(*status == 200))
        .count()
        .await;
    assert_eq!(granted, SESSIONS);

    browser.open(&app.url("/console")).await;
    sign_in_as_admin(&browser).await;
    browser.fill("#search-publisher", "big").await;
    browser.fill("#search-customer", "household").await;
    browser.click("#search-go").await;
    let rows = "return document.querySelectorAll('#session-rows tr').length";
    browser
        .until_script(&format!("{rows} === 100"), "the first page of 100")
        .await;
    let first_page = browser
        .script("return document.querySelector('#session-rows tr').dataset.sessionId")
        .await;
    assert!(browser.text("sessions-caption").await.contains("Page 1"));
    browser.click("#sessions-next").await;
    browser
        .until_script(
            "return document.getElementById('sessions-caption').textContent.includes('Page 2')",
            "page 2",
        )
        .await;
    let second_page = browser
        .script("return document.querySelector('#session-rows tr').dataset.sessionId")
        .await;
    assert_ne!(first_page, second_page);
    assert_eq!(browser.script(rows).await, json!(100));
    browser.click("#sessions-prev").await;
    browser
        .until_script(
            "return document.getElementById('sessions-caption').textContent.includes('Page 1')",
            "page 1 again",
        )
        .await;
    assert_eq!(
        browser
            .script("return document.querySelector('#session-rows tr').dataset.sessionId")
            .await,
        first_page
    );
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

/// The console reads the real `GET /admin/v1/events` (Server-Sent Events) with fetch,
/// the key in a header: a session created and ended through the API shows as
/// `session.granted` and `session.ended`, with its name, publisher, customer, offer
/// and cause (the body of docs/PROTOCOL.md §3.1).
#[tokio::test]
async fn the_console_shows_server_sent_events_read_with_the_key_in_a_header() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;
    browser.open(&app.url("/console")).await;
    // Not a stub: the page's own fetch goes to the server; this only notes what it sent.
    browser
        .script(
            r#"
            const real = window.fetch;
            window.eventsRequests = [];
            window.fetch = (url, init) => {
              if (String(url).startsWith('/admin/v1/events')) {
                window.eventsRequests.push({ url: String(url), auth: init?.headers?.Authorization ?? null });
              }
              return real(url, init);
            };
            return true;
            "#,
        )
        .await;
    sign_in_as_admin(&browser).await;
    browser.until_text("events-status", "Following the event stream.").await;

    let token = app.token("demo", "42");
    let granted = app.create_ok(&token, "demo-offer", "Kitchen tablet").await;
    assert_eq!(app.end_session(&token, &granted.session_id).await.status(), 204);

    let ended = format!(
        "return !!document.querySelector(\"#events li[data-type='session.ended'][data-session-id='{}']\")",
        granted.session_id
    );
    browser.until_script(&ended, "session.ended shown").await;
    let shown = browser
        .script(
            "return [...document.querySelectorAll('#events li')].map(li => ({
               type: li.dataset.type, session: li.dataset.sessionId ?? null, text: li.textContent,
               time: li.querySelector('time')?.getAttribute('datetime') ?? null }))",
        )
        .await;
    let events = shown.as_array().unwrap();
    let of_session = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == t && e["session"] == granted.session_id.as_str())
            .unwrap_or_else(|| panic!("no {t} of the session in {shown}"))
    };
    let grant = of_session("session.granted");
    let end = of_session("session.ended");
    for event in [grant, end] {
        let text = event["text"].as_str().unwrap();
        assert!(text.contains("\u{201c}Kitchen tablet\u{201d}"), "{text}");
        assert!(text.contains("demo / 42 / demo-offer"), "{text}");
        assert!(!text.contains("{\""), "the body is rendered, not shown raw: {text}");
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    }
    assert!(end["text"].as_str().unwrap().contains("cause kicked"), "{end}");
    // The newest first: the end above the grant.
    let position = |e: &Value| events.iter().position(|x| x == e).unwrap();
    assert!(position(end) < position(grant), "{shown}");

    // The key went in a header, never in the URL.
    let requests = browser.script("return window.eventsRequests").await;
    let requests = requests.as_array().unwrap();
    assert!(!requests.is_empty());
    for request in requests {
        assert_eq!(request["auth"], json!(format!("Bearer {ADMIN_KEY}")), "{request}");
        assert!(!request["url"].as_str().unwrap().contains(ADMIN_KEY), "{request}");
    }
    let urls = browser
        .script("return performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    assert!(!urls.to_string().contains(ADMIN_KEY), "{urls}");
    assert_eq!(browser.text("events-status").await, "Following the event stream.");
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

/// The demo's "sessions of the pool" come from the real `GET /me/sessions`: two tabs
/// of one customer both show both sessions (by `name`), and not the session the
/// customer holds in another offer's pool.
#[tokio::test]
async fn two_demo_tabs_list_the_pool_from_me_sessions() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = spawn_app().await;
    app.put_offer("demo", "demo-offer", 2, &["live"]).await;
    app.put_offer("demo", "other-offer", 1, &[]).await;
    let elsewhere = app
        .create_ok(&app.token("demo", "42"), "other-offer", "Elsewhere")
        .await;
    let demo = app.url("/demo");

    browser.open(&demo).await;
    let tab_a = browser.client().window().await.unwrap();
    browser.fill("#session-name", "Tab A").await;
    browser.click("#play").await;
    browser.until_text("state", "playing").await;
    let session_a = browser.text("session-id").await;

    browser.new_tab(&demo).await;
    browser.fill("#session-name", "Tab B").await;
    browser.click("#play").await;
    browser.until_text("state", "playing").await;
    let session_b = browser.text("session-id").await;

    let pool = "return [...document.querySelectorAll('#pool li[data-session-id]')].map(li => li.dataset.sessionId).sort().join(' ')";
    let mut both = [session_a.clone(), session_b.clone()];
    both.sort();
    let both = both.join(" ");
    for tab in [None, Some(&tab_a)] {
        if let Some(tab) = tab {
            browser.switch(tab).await;
        }
        browser.click("#refresh-pool").await;
        browser
            .until_script(&format!("{pool} === '{both}'"), "both sessions in the pool list")
            .await;
        let text = browser.text("pool").await;
        assert!(text.contains("Tab A") && text.contains("Tab B"), "{text}");
        assert!(!text.contains(&elsewhere.session_id), "another offer's session: {text}");
        assert!(text.contains("(this tab)"), "{text}");
        assert!(browser.text("pool-note").await.contains("/me/sessions"));
    }
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}

/// `onLimit` and `customerSessionLimit` are edited in the console: an offer's
/// `onLimit` set to evict_oldest, the publisher's household cap set and its policy
/// left as it was.
#[tokio::test]
async fn the_console_edits_on_limit_and_the_household_cap() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let app = demo_app().await;
    browser.open(&app.url("/console")).await;
    sign_in_as_admin(&browser).await;
    browser.fill("#open-publisher", "demo").await;
    browser.click("#open-publisher-go").await;
    let row = "tr[data-offer-id='demo-offer']";
    // The publisher is fetched and drawn after the click: read it once it is there.
    browser
        .until_script(
            &format!("return document.querySelector(\"{row} .offer-onlimit\") !== null"),
            "the publisher's offers drawn",
        )
        .await;
    assert_eq!(
        browser
            .script(&format!(
                "return document.querySelector(\"{row} .offer-onlimit\").value"
            ))
            .await,
        json!(""),
        "an offer without onLimit inherits"
    );
    assert_eq!(
        browser
            .script("return document.getElementById('pub-onLimit').value")
            .await,
        json!("reject"),
        "a publisher without onLimit shows the default"
    );
    let policy = browser
        .client()
        .find(Locator::Css(&format!("{row} .offer-onlimit")))
        .await
        .unwrap();
    policy.select_by_value("evict_oldest").await.unwrap();
    browser.click(&format!("{row} .offer-save")).await;
    browser
        .until_script(
            "return document.getElementById('notice').textContent.includes('demo-offer saved')",
            "the offer is saved",
        )
        .await;
    let publisher: Value = app
        .admin(Method::GET, "/publishers/demo", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(publisher["offers"][0]["onLimit"], "evict_oldest", "{publisher}");
    assert_eq!(publisher["offers"][0]["sessionLimit"], 1, "{publisher}");
    assert_eq!(publisher["offers"][0]["tags"], json!(["live"]), "{publisher}");
    // The page shows what was saved.
    browser
        .until_script(
            &format!("return document.querySelector(\"{row} .offer-onlimit\")?.value === 'evict_oldest'"),
            "the saved policy shown",
        )
        .await;

    browser.fill("#pub-customerSessionLimit", "3").await;
    browser.click("#publisher-save").await;
    browser
        .until_script(
            "return document.getElementById('notice').textContent === 'Publisher demo saved.'",
            "saved",
        )
        .await;
    let publisher: Value = app
        .admin(Method::GET, "/publishers/demo", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(publisher["customerSessionLimit"], 3, "{publisher}");
    assert_eq!(publisher.get("onLimit"), None, "not edited, not sent: {publisher}");

    // The publisher's policy to monitor, the cap removed (an empty field).
    let policy = browser.client().find(Locator::Id("pub-onLimit")).await.unwrap();
    policy.select_by_value("monitor").await.unwrap();
    browser.fill("#pub-customerSessionLimit", "").await;
    browser.click("#publisher-save").await;
    let deadline = Instant::now() + PATIENCE;
    let publisher = loop {
        let publisher: Value = app
            .admin(Method::GET, "/publishers/demo", None)
            .await
            .json()
            .await
            .unwrap();
        if publisher["onLimit"] == "monitor" {
            break publisher;
        }
        assert!(Instant::now() < deadline, "onLimit was not saved: {publisher}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(publisher.get("customerSessionLimit"), None, "{publisher}");
    browser.assert_every_control_is_labelled().await;
    browser.assert_no_csp_or_script_errors().await;
    browser.close().await;
    app.stop().await;
}
