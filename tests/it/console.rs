//! The web console in a real headless Chromium, driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`; `scripts/browser.sh` installs them). `ERP_SCREENSHOTS=1` writes the
//! pages' screenshots to docs/console-*.png.

use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::{TestGateway, live_projector};
use crate::harness::{TestNats, TestProcessor};

/// A chromedriver process and one browser session, both ended when dropped.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let binary = which("chromedriver").expect(
            "chromedriver is not installed: run scripts/browser.sh (Debian's chromium and chromium-driver)",
        );
        let port = ledger::server::free_port().unwrap();
        let mut command = std::process::Command::new(binary);
        command
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        ledger::server::die_with_parent(&mut command);
        let driver = command.spawn().expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,860",
        ];
        let chromium = which("chromium");
        let mut options = json!({ "args": args });
        if let Some(chromium) = chromium {
            options["binary"] = json!(chromium);
        }
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits until `script` returns something `done` accepts, and returns it.
    async fn wait_for(&self, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..100 {
            last = self.script(script).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed what was expected of `{script}`; last: {last}")
    }

    async fn screenshot(&self, name: &str) {
        if std::env::var_os("ERP_SCREENSHOTS").is_none() {
            return;
        }
        use base64_png::decode;
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(format!("console-{name}.png"));
        std::fs::write(path, decode(png.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// Standard base64, enough to write a screenshot.
mod base64_png {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                b'/' => 63,
                _ => 0,
            }
        };
        let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'\n').collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, c)| acc | value(*c) << (18 - 6 * i as u32));
            let pad = chunk.iter().filter(|c| **c == b'=').count();
            let take = 3 - pad.min(2);
            out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
        }
        out
    }
}

#[tokio::test]
async fn the_console_shows_what_the_views_answer_and_a_command_sent_from_its_form_changes_it() {
    let _heavy = crate::harness::heavy().await;
    // Goal: in a real browser, the console's stock page shows for a SKU exactly the figures
    // the ATS view answers after a demo load; a command sent through its form is accepted and
    // the figures then include it; the status and ledger pages show the system's state.
    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let projectors = [
        live_projector::<projections::ats::Ats>(&nats).await,
        live_projector::<projections::margin::Margin>(&nats).await,
        live_projector::<projections::allocation::Allocation>(&nats).await,
        live_projector::<projections::audit::Audit>(&nats).await,
        live_projector::<projections::finance::Finance>(&nats).await,
        live_projector::<projections::replenish::Replenishment>(&nats).await,
        live_projector::<projections::exceptions::Exceptions>(&nats).await,
        live_projector::<projections::kpis::Kpis>(&nats).await,
        live_projector::<projections::trace::Trace>(&nats).await,
    ];
    let last = crate::projections::submit(&nats, crate::projections::uci_bodies(1)).await;
    let gw = TestGateway::start(nats.url(), None).await;
    let http = reqwest::Client::new();
    // A SKU with stock on hand after the first day.
    let rows: Value = http
        .get(gw.url(&format!(
            "/v1/views/ats/rows?prefix=loc.&limit=1000&min_seq={last}"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sku = rows["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"]["on_hand"].as_i64() > Some(0) && r["value"]["location"] == "UK-DC")
        .map(|r| r["value"]["sku"].as_str().unwrap().to_owned())
        .expect("a SKU in stock");
    let ask = |min_seq: u64| {
        let (http, url) = (
            http.clone(),
            gw.url(&format!("/v1/views/ats/sku?sku={sku}&min_seq={min_seq}")),
        );
        async move {
            let answer: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            answer
        }
    };
    let before = ask(last).await;
    let location = &before["result"]["locations"][0];
    assert_eq!(location["location"], "UK-DC", "{before}");

    let browser = Browser::start().await;
    browser.go(&gw.url("/#status")).await;
    // Every part caught up, and the live rates measured (after a second sample).
    browser
        .wait_for(
            "return document.getElementById('status-ready').textContent",
            |v| *v == json!("Every part is caught up."),
        )
        .await;
    browser
        .wait_for(
            "return document.querySelectorAll('#status-cards .v')[3].textContent",
            |v| v.as_str().is_some_and(|t| t.parse::<f64>().is_ok()),
        )
        .await;
    browser.screenshot("status").await;

    // The stock page shows the view's numbers.
    let cells = "return Array.from(document.querySelectorAll('#sku-locations tr')).map(r => Array.from(r.children).map(c => c.textContent))";
    browser.go(&gw.url(&format!("/#sku/{sku}"))).await;
    let expected = json!([[
        "UK-DC",
        location["on_hand"].to_string(),
        location["available"].to_string(),
        location["allocated"].to_string(),
        location["reserved"].to_string(),
        location["quality_hold"].to_string(),
        location["in_transit"].to_string(),
        location["inbound"].to_string(),
        "explain",
    ]]);
    browser.wait_for(cells, |v| *v == expected).await;
    browser.screenshot("stock").await;

    // A receipt sent through the form.
    browser.go(&gw.url("/#command")).await;
    browser
        .script(
            "const c = JSON.parse(document.getElementById('command-body').value); c.data.sku = document.getElementById('sku-input').value; c.data.qty = 10; document.getElementById('command-body').value = JSON.stringify(c, null, 2); return true",
        )
        .await;
    browser
        .script("document.getElementById('command-send').click(); return true")
        .await;
    let status = browser
        .wait_for(
            "return document.getElementById('command-status').textContent",
            |v| v.as_str().is_some_and(|t| !t.is_empty()),
        )
        .await;
    assert_eq!(status, "200 accepted");
    browser.screenshot("command").await;
    let outcome: Value = serde_json::from_str(
        browser
            .script("return document.getElementById('command-outcome').textContent")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let after = ask(outcome["outcome_seq"].as_u64().unwrap()).await;
    let on_hand = after["result"]["locations"][0]["on_hand"].as_i64().unwrap();
    assert_eq!(on_hand, location["on_hand"].as_i64().unwrap() + 10);
    browser.go(&gw.url(&format!("/#sku/{sku}"))).await;
    browser
        .wait_for(cells, |v| v[0][1] == json!(on_hand.to_string()))
        .await;

    // As of a date: a replay of the ATS view counting only events effective by 2025 shows the
    // figure from before the receipt (the form sends it effective now).
    browser.go(&gw.url("/#asof")).await;
    browser
        .wait_for(
            "return document.getElementById('asof-view').options.length",
            |v| v.as_u64() >= Some(7),
        )
        .await;
    browser
        .script(&format!(
            "document.getElementById('asof-view').value = 'ats'; document.getElementById('asof-effective').value = '2025-01-01'; document.getElementById('asof-prefix').value = 'loc.{sku}.UK-DC'; document.getElementById('asof-go').click(); return true"
        ))
        .await;
    let replayed = "const t = document.querySelector('#asof-table table'); if (!t || t.rows.length < 2) return null; const head = Array.from(t.rows[0].children).map(c => c.textContent); return t.rows[1].children[head.indexOf('on hand')].textContent";
    browser
        .wait_for(replayed, |v| *v == json!(location["on_hand"].to_string()))
        .await;
    browser.screenshot("asof").await;

    // "Explain this number": the events behind the location's figures, as the view lists them.
    let api = |path: String| {
        let (http, url) = (http.clone(), gw.url(&path));
        async move {
            let answer: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            answer["result"].clone()
        }
    };
    let explained = api(format!(
        "/v1/views/ats/explain?sku={sku}&location=UK-DC&limit=100"
    ))
    .await;
    browser
        .script("document.querySelector('#sku-locations button.explain').click(); return true")
        .await;
    let rows = "return document.querySelectorAll('#explain-table tr').length";
    let expected_rows = explained["events"].as_array().unwrap().len() as u64 + 1;
    browser
        .wait_for(rows, |v| v.as_u64() == Some(expected_rows))
        .await;
    browser.screenshot("explain").await;

    // Open orders: the count the allocation view gives.
    let open = api("/v1/views/allocation/open?limit=100".into()).await;
    browser.go(&gw.url("/#orders")).await;
    let count = format!("{} open orders", open["count"]);
    browser
        .wait_for(
            "return document.getElementById('orders-count').textContent",
            |v| *v == json!(count),
        )
        .await;
    browser.screenshot("orders").await;

    // Margin by day: one bar a day the margin view has.
    let days = api("/v1/views/margin/rows?prefix=day.&limit=1000".into()).await;
    let days = days["rows"].as_array().unwrap().len() as u64;
    assert!(days >= 1);
    browser.go(&gw.url("/#margin")).await;
    browser
        .wait_for(
            "return document.querySelectorAll('#margin-chart rect').length",
            |v| v.as_u64() == Some(days),
        )
        .await;
    browser.screenshot("margin").await;

    // Exceptions: the queue's count as the view gives it; KPIs: the latest month's orders.
    let queue = api(format!("/v1/views/exceptions/queue?limit=1&min_seq={last}")).await;
    let prefix = format!("{} open", queue["count"]);
    browser.go(&gw.url("/#exceptions")).await;
    browser
        .wait_for(
            "return document.getElementById('exceptions-count').textContent",
            |v| v.as_str().is_some_and(|t| t.starts_with(&prefix)),
        )
        .await;
    browser.screenshot("exceptions").await;
    let months = api(format!(
        "/v1/views/kpis/periods?granularity=month&min_seq={last}"
    ))
    .await;
    let month = months["periods"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let period = api(format!(
        "/v1/views/kpis/period?period={}&dimension=all",
        month.as_str().unwrap()
    ))
    .await;
    let orders = period["rows"][0]["orders_placed"].to_string();
    browser.go(&gw.url("/#kpis")).await;
    browser
        .wait_for(
            "return Array.from(document.querySelectorAll('#kpis-table tr')).slice(1).map(r => [r.children[0].textContent, r.children[1].textContent])",
            |v| v.as_array().is_some_and(|rows| rows.iter().any(|r| r[0] == "all -" && r[1] == json!(orders))),
        )
        .await;
    // The inventory table shows the books' value at the period's close.
    let close = &period["rows"][0]["inventory_value_close"];
    if let Some((currency, value)) = close.as_object().and_then(|m| m.iter().next()) {
        let expected: f64 = value.as_str().unwrap().parse().unwrap();
        let currency = currency.clone();
        browser
            .wait_for(
                "return Array.from(document.querySelectorAll('#kpis-inventory tr')).slice(1).map(r => [r.children[0].textContent, r.children[1].textContent, r.children[2].textContent])",
                |v| {
                    v.as_array().is_some_and(|rows| {
                        rows.iter().any(|r| {
                            r[0] == "all -"
                                && r[1] == json!(currency)
                                && r[2].as_str().and_then(|x| x.parse::<f64>().ok()).is_some_and(
                                    |shown| (shown - expected).abs() <= 0.01,
                                )
                        })
                    })
                },
            )
            .await;
    }
    browser.screenshot("kpis").await;

    // The SKU's timeline: the audit view's events for it.
    let timeline = api(format!("/v1/views/audit/entity?entity=sku:{sku}&limit=100")).await;
    let expected_rows = timeline["events"].as_array().unwrap().len() as u64 + 1;
    browser.go(&gw.url(&format!("/#timeline/sku:{sku}"))).await;
    browser
        .wait_for(
            "return document.querySelectorAll('#timeline-table tr').length",
            |v| v.as_u64() == Some(expected_rows),
        )
        .await;
    browser.screenshot("timeline").await;

    // The ledger page follows the log: the receipt is the newest event shown.
    browser.go(&gw.url("/#events")).await;
    browser
        .wait_for(
            "return Array.from(document.querySelectorAll('#events-table tr')).map(r => r.children[1].textContent)",
            |v| v.as_array().is_some_and(|a| a.iter().any(|t| t == "stock.received")),
        )
        .await;
    browser.screenshot("ledger").await;
    drop(browser);
    for p in projectors {
        p.abort();
    }
    processor.stop().await;
}
