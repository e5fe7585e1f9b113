//! The emulator over real HTTP: requests become API Gateway v2 events, go to the
//! create-order handler in-process, and come back as HTTP responses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tests::TestDb;

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(db: &TestDb) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let emulator = emulator::Emulator {
        create_order: Arc::new(create_order::Deps {
            pool: db.pool.clone(),
            idempotency_ttl: Duration::from_secs(60),
        }),
        routes: emulator::routes::RouteTable::standard(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(emulator, listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        base,
        stop: Some(stop),
        server,
    })
}

#[tokio::test]
async fn post_then_get_over_http() -> Result<()> {
    let db = TestDb::fresh().await?;
    let mut running = start(&db).await?;
    let http = reqwest::Client::new();
    let body = json!({"customer_id": "cust-1", "items": [{"sku": "A-1", "quantity": 3, "unit_price_cents": 250}]});
    let created = http
        .post(format!("{}/orders", running.base))
        .header("content-type", "application/json")
        .header("cookie", "session=abc; theme=dark")
        .body(body.to_string())
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str()?.to_owned();
    let order: Value = created.json().await?;
    assert_eq!(order["total_cents"], 750);
    assert_eq!(
        location,
        format!("/orders/{}", order["id"].as_str().unwrap_or_default())
    );

    let fetched = http
        .get(format!("{}{location}?verbose=1&verbose=2", running.base))
        .send()
        .await?;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await?, order);

    // No route: API Gateway's own 404.
    let missing = http.get(format!("{}/nowhere", running.base)).send().await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await?,
        json!({"message": "Not Found"})
    );

    // A binary body travels base64-encoded and is still refused as not JSON.
    let binary = http
        .post(format!("{}/orders", running.base))
        .header("content-type", "application/octet-stream")
        .body(vec![0_u8, 159, 146, 150])
        .send()
        .await?;
    assert_eq!(binary.status(), 415);

    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    running.server.await??;
    Ok(())
}
