//! The web console in a real browser: headless Chromium driven through
//! WebDriver (chromedriver) loads `/_console/` from `emulator up`, shows a
//! posted order's journey across the functions, shows a poison record under
//! dead letters (and its order among the shop's stuck orders), and its redrive
//! from the page brings the order to `CONFIRMED`; an outbox row set aside as failed is shown with its error and
//! put back in line from the page; the page raises no script error or policy
//! violation, and its actions refuse another origin.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use sqlx::Connection as _;

mod common;

use common::{fresh_database, spare_port, start_up, BIN, TEMPLATE};

/// chromedriver on a spare port, stopped when dropped.
struct Driver(Child, u16);

impl Driver {
    fn start() -> anyhow::Result<Self> {
        let port = spare_port()?;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("chromedriver: {e} (install Debian's chromium and chromium-driver)")
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self(child, port))
    }

    async fn browser(&self) -> anyhow::Result<Client> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1400,1800"]}),
        );
        // Plain HTTP to the local chromedriver: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        Ok(ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.1))
            .await?)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `css` finds an element whose text contains `text`.
async fn wait_text(page: &Client, css: &str, text: &str, what: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = String::new();
        for element in page.find_all(Locator::Css(css)).await? {
            let t = element.text().await.unwrap_or_default();
            if t.contains(text) {
                return Ok(t);
            }
            seen.push_str(&t);
            seen.push('\n');
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: no {css} with {text:?}; saw:\n{seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn errors(page: &Client) -> anyhow::Result<Value> {
    Ok(page
        .execute("return window.consoleErrors;", Vec::new())
        .await?)
}

fn screenshot(name: &str, png: &[u8]) -> anyhow::Result<()> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), png)?;
    Ok(())
}

#[tokio::test]
async fn the_console_shows_a_journey_and_redrives_a_poison_record_in_a_browser(
) -> anyhow::Result<()> {
    let database_url = fresh_database().await?;
    let namespace = format!("con{}", uuid::Uuid::now_v7().simple());
    let vars = std::env::temp_dir().join(format!("{namespace}.json"));
    std::fs::write(
        &vars,
        json!({
            "Parameters": {"STREAM_NAMESPACE": namespace},
            // A record that fails goes to the dead letters at once.
            "InventoryConsumerFunction": {"MAXIMUM_RETRY_ATTEMPTS": "0"},
        })
        .to_string(),
    )?;
    let _vars = common::tempfile_path::TempPath(vars.clone());
    let port = spare_port()?;
    let state = std::env::temp_dir().join(&namespace);
    let (_up, lines) = start_up(
        &[
            "--port",
            &port.to_string(),
            "--template",
            TEMPLATE,
            "--parameter-overrides",
            "DefaultCreditLimitCents=1000000",
            "--env-vars",
            &vars.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ],
        &database_url,
        &[],
    )?;
    let banner = common::banner(&lines)?;
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        banner.contains(&format!("Console on {base}/_console/")),
        "{banner}"
    );
    let token = common::token("c-1", &state)?;
    let http = common::client(&token)?;
    common::stock_lamp(&http, &base, 5).await?;
    let post_order = || async {
        let order: Value = http
            .post(format!("{base}/orders"))
            .json(&json!({"items":[{"sku":"LAMP-9","quantity":1,"unit_price_cents":100}]}))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(order["id"].as_str().unwrap_or_default().to_owned())
    };
    let wait_idle = || {
        let waited = Command::new(BIN)
            .args(["wait-idle", "--url", &base, "--timeout", "30"])
            .output()
            .expect("wait-idle runs");
        assert!(waited.status.success(), "{waited:?}");
    };

    let driver = Driver::start()?;
    let page = driver.browser().await?;
    let result = async {
        page.goto(&format!("{base}/_console/")).await?;
        wait_text(&page, "#state", "idle", "the first snapshot").await?;
        wait_text(
            &page,
            "#functions tbody tr",
            "CreateOrderFunction",
            "the functions",
        )
        .await?;

        // A posted order: its journey in the trace view, function by function.
        let first = post_order().await?;
        wait_idle();
        page.find(Locator::Css("#trace-id"))
            .await?
            .send_keys(&first)
            .await?;
        page.find(Locator::Css("#trace-go")).await?.click().await?;
        let summary = wait_text(&page, "#trace-summary", "OrderSagaFunction", "the trace").await?;
        for function in [
            "CreateOrderFunction",
            "OutboxRelayFunction",
            "InventoryConsumerFunction",
            "CustomersConsumerFunction",
            "OrderSagaFunction",
        ] {
            assert!(summary.contains(function), "{function} missing: {summary}");
        }
        wait_text(&page, "#functions tbody tr", "create-order", "the figures").await?;
        screenshot("console-trace.png", &page.screenshot().await?)?;

        // A poison record: the inventory's writes fail until the trigger goes.
        let mut db = sqlx::PgConnection::connect(&database_url).await?;
        sqlx::raw_sql(
            "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'disk trouble' USING ERRCODE = '55P03'; END $$;
             CREATE TRIGGER fail BEFORE INSERT ON inventory.processed_events
               FOR EACH ROW EXECUTE FUNCTION fail();",
        )
        .execute(&mut db)
        .await?;
        let second = post_order().await?;
        let letter_row = "[data-dlq-group=\"inventory\"] tr[data-letter]";
        wait_text(&page, letter_row, "OrderCreated", "the dead letter").await?;
        wait_text(
            &page,
            "[data-dlq-group=\"inventory\"] .kinds tr",
            "disk trouble",
            "its kind",
        )
        .await?;
        // Its order waits for the inventory's answer: after 5 s the shop's own
        // view lists it as stuck in PENDING.
        wait_text(&page, "#views .view", &second, "the stuck order").await?;
        screenshot("console-dead-letters.png", &page.screenshot().await?)?;

        // Another origin cannot drive the console's actions.
        let foreign = reqwest::Client::new()
            .post(format!("{base}/_console/api/dlq/inventory/redrive"))
            .header("origin", "https://evil.example")
            .json(&json!({"all": true}))
            .send()
            .await?;
        assert_eq!(foreign.status(), 403);
        wait_text(&page, letter_row, "OrderCreated", "still dead-lettered").await?;

        // The cause fixed, the page redrives it; the saga confirms the order.
        sqlx::raw_sql("DROP TRIGGER fail ON inventory.processed_events")
            .execute(&mut db)
            .await?;
        let row = page.find(Locator::Css(letter_row)).await?;
        let redrive = row
            .find(Locator::XPath(".//button[text()='Redrive']"))
            .await?;
        redrive.click().await?;
        wait_text(
            &page,
            "#dlq-result",
            "1 dead letters of",
            "the redrive's report",
        )
        .await?;
        wait_idle();
        let now: Value = http
            .get(format!("{base}/orders/{second}"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(now["status"], "CONFIRMED", "{now}");
        wait_text(
            &page,
            "[data-dlq-group=\"inventory\"] h3",
            ": 0 dead letters",
            "emptied",
        )
        .await?;

        // A row the relay can never publish is set aside with its error; the
        // page puts it back in line (here unfixed, so it fails a second time).
        sqlx::query(
            "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, payload)
             VALUES (gen_random_uuid(), 'Not A Type', 1, 'Order', 'poison-1', now(), '{}'::json)",
        )
        .execute(&mut db)
        .await?;
        let failed_row = "#outbox-failed tr[data-failed-row]";
        let shown = wait_text(&page, failed_row, "poison-1", "the failed outbox row").await?;
        assert!(shown.contains("event_type"), "its error: {shown}");
        let first_failed: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM failed_at)::float8 FROM orders.outbox WHERE aggregate_id = 'poison-1'",
        )
        .fetch_one(&mut db)
        .await?;
        page.find(Locator::Css(failed_row))
            .await?
            .find(Locator::XPath(".//button[text()='Redrive']"))
            .await?
            .click()
            .await?;
        wait_text(&page, "#outbox-result", "1 failed rows of orders.outbox back in line", "redriven")
            .await?;
        // Set aside again by the relay, later than the first time.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let again: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM failed_at)::float8 FROM orders.outbox WHERE aggregate_id = 'poison-1'",
            )
            .fetch_one(&mut db)
            .await?;
            if again.is_some_and(|t| t > first_failed) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the row was not tried again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(errors(&page).await?, json!([]), "the page's script errors");
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        if let Ok(png) = page.screenshot().await {
            let _ = screenshot("console-failure.png", &png);
        }
    }
    page.close().await?;
    result
}
