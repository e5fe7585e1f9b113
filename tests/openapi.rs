//! `openapi.yaml` against the implementation: its operations are the routes of
//! `template.yaml` (as the emulator reads them) and the methods the functions
//! really answer; and real answers, over HTTP through the in-process emulator,
//! valid requests and invalid ones for every operation, have a documented status,
//! content type, headers and a body its schema accepts.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};
use tests::emulated::RunningEmulator;
use tests::TestDb;

/// The document, parsed with the emulator's YAML parser.
fn document() -> Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    yaml_serde::from_str(&text).with_context(|| format!("parsing {path}"))
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> Result<BTreeSet<(String, String)>> {
    let paths = doc["paths"].as_object().context("no paths")?;
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().context("a path item is not an object")?;
        for key in item.keys() {
            if METHODS.contains(&key.as_str()) {
                ops.insert((key.to_ascii_uppercase(), path.clone()));
            } else {
                ensure!(key == "parameters", "unexpected key {key} under {path}");
            }
        }
    }
    Ok(ops)
}

/// The document's methods on `path`.
fn methods_of(doc: &Value, path: &str) -> Result<BTreeSet<String>> {
    Ok(operations(doc)?
        .into_iter()
        .filter(|(_, p)| p == path)
        .map(|(m, _)| m)
        .collect())
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Result<&'a Value> {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .with_context(|| format!("not a local $ref: {reference}"))?;
            let target = doc
                .pointer(pointer)
                .with_context(|| format!("dangling $ref {reference}"))?;
            resolve(doc, target)
        }
        None => Ok(value),
    }
}

/// The path parameters an operation declares (path item and operation level).
fn declared_path_parameters(doc: &Value, path: &str, method: &str) -> Result<BTreeSet<String>> {
    let item = &doc["paths"][path];
    let mut names = BTreeSet::new();
    for list in [
        &item["parameters"],
        &item[method.to_ascii_lowercase()]["parameters"],
    ] {
        for parameter in list.as_array().into_iter().flatten() {
            let parameter = resolve(doc, parameter)?;
            if parameter["in"] == "path" {
                ensure!(
                    parameter["required"] == true,
                    "{method} {path}: path parameter {} must be required",
                    parameter["name"]
                );
                names.insert(
                    parameter["name"]
                        .as_str()
                        .context("a parameter without a name")?
                        .to_owned(),
                );
            }
        }
    }
    Ok(names)
}

/// The `{name}` segments of a path template.
fn template_parameters(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// The template's HTTP routes, as the emulator's route table reads them.
fn template_routes() -> Result<Vec<(String, String)>> {
    let template = tests::emulated::template()?;
    Ok(emulator::routes::RouteTable::from_template(&template)
        .routes()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect())
}

#[test]
fn the_paths_are_the_templates_routes() -> Result<()> {
    let doc = document()?;
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0.") || v.starts_with("3.1.")),
        "not an OpenAPI 3 document"
    );
    let routes = template_routes()?;
    let route_paths: BTreeSet<String> = routes.iter().map(|(_, p)| p.clone()).collect();
    let doc_paths: BTreeSet<String> = operations(&doc)?.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        doc_paths, route_paths,
        "openapi.yaml's paths vs template.yaml's routes"
    );
    // Per path, the template's methods are the document's operations (ANY: the
    // function decides, checked over HTTP below).
    let mut by_path: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in &routes {
        by_path.entry(path).or_default().insert(method.clone());
    }
    for (path, methods) in &by_path {
        let documented = methods_of(&doc, path)?;
        if methods.contains("ANY") {
            ensure!(!documented.is_empty(), "{path} has no operation");
        } else {
            assert_eq!(&documented, methods, "template.yaml's methods of {path}");
        }
    }
    // Each operation declares the scopes of its route's authorizer.
    let template = tests::emulated::template()?;
    for route in emulator::routes::RouteTable::from_template(&template).routes() {
        let op = &doc["paths"][&route.path][route.method.to_ascii_lowercase()];
        // Alternatives: one requirement per scope the route takes.
        let declared: Vec<&str> = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["scopes"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            declared, route.guard.scopes,
            "{} {}: the scopes of openapi.yaml vs template.yaml",
            route.method, route.path
        );
    }
    for (method, path) in operations(&doc)? {
        assert_eq!(
            declared_path_parameters(&doc, &path, &method)?,
            template_parameters(&path),
            "{method} {path}: declared path parameters"
        );
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        ensure!(
            op["operationId"].is_string(),
            "{method} {path} has no operationId"
        );
        let responses = op["responses"].as_object().context("no responses")?;
        ensure!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
    }
    Ok(())
}

/// The document and compiled schemas, to check answers with.
struct Contract {
    doc: Value,
}

/// A response as received.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Contract {
    fn new() -> Result<Self> {
        Ok(Self { doc: document()? })
    }

    /// A validator for `schema` (which may hold local `$ref`s into the document).
    fn validator(&self, schema: &Value) -> Result<jsonschema::Validator> {
        let root = json!({"allOf": [schema], "components": self.doc["components"]});
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| anyhow!("compiling {schema}: {e}"))
    }

    fn check_value(&self, schema: &Value, value: &Value, what: &str) -> Result<()> {
        let validator = self.validator(schema)?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        ensure!(
            errors.is_empty(),
            "{what}: {value} breaks the schema: {errors:?}"
        );
        Ok(())
    }

    /// Checks `answer` to `method path_template` against the document.
    fn check(&self, method: &str, path_template: &str, answer: &Answer) -> Result<()> {
        let what = format!("{method} {path_template} -> {}", answer.status);
        let op = &self.doc["paths"][path_template][method.to_ascii_lowercase()];
        ensure!(op.is_object(), "{what}: not documented");
        let response = op["responses"]
            .get(answer.status.to_string())
            .with_context(|| format!("{what}: status not documented"))?;
        let response = resolve(&self.doc, response)?;
        let content_type = answer
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let media = response["content"]
            .get(&essence)
            .with_context(|| format!("{what}: content type {content_type:?} not documented"))?;
        let body: Value = serde_json::from_slice(&answer.body).with_context(|| {
            format!(
                "{what}: body is not JSON: {}",
                String::from_utf8_lossy(&answer.body)
            )
        })?;
        self.check_value(&media["schema"], &body, &what)?;
        if essence == "application/problem+json" {
            ensure!(
                body["status"] == answer.status,
                "{what}: the problem's status is {}",
                body["status"]
            );
        }
        for (name, header) in response["headers"].as_object().into_iter().flatten() {
            let header = resolve(&self.doc, header)?;
            match answer.headers.get(name.as_str()) {
                None => ensure!(
                    header["required"] != true,
                    "{what}: required header {name} is missing"
                ),
                Some(value) => {
                    let value = value.to_str().context("a header that is not ASCII")?;
                    self.check_value(&header["schema"], &json!(value), &format!("{what} {name}"))?;
                }
            }
        }
        Ok(())
    }

    /// Checks the document's request body schema accepts (or refuses) `body`, so
    /// that the cases below test what the document says.
    fn check_request(&self, method: &str, path: &str, body: &Value, valid: bool) -> Result<()> {
        let op = &self.doc["paths"][path][method.to_ascii_lowercase()];
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        let accepted = self.validator(schema)?.is_valid(body);
        ensure!(
            accepted == valid,
            "{method} {path}: the document {} {body}",
            if accepted { "accepts" } else { "refuses" }
        );
        Ok(())
    }
}

/// A request case: method, concrete path, the template it matches, headers, body.
struct Case {
    method: Method,
    path: String,
    template: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    expect: u16,
}

impl Case {
    fn new(method: Method, path: impl Into<String>, template: &'static str, expect: u16) -> Self {
        Self {
            method,
            path: path.into(),
            template,
            headers: Vec::new(),
            body: None,
            expect,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn json(self, body: &Value) -> Self {
        self.raw("application/json", body.to_string().into_bytes())
    }

    fn raw(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.header("content-type", content_type)
    }
}

async fn send(http: &reqwest::Client, running: &RunningEmulator, case: &Case) -> Result<Answer> {
    let mut request = http.request(case.method.clone(), running.url(&case.path));
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let response = request.send().await?;
    Ok(Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await?.to_vec(),
    })
}

/// Sends `case`, checks the expected status and the answer against the document.
async fn run(
    contract: &Contract,
    http: &reqwest::Client,
    running: &RunningEmulator,
    case: Case,
) -> Result<Answer> {
    let answer = send(http, running, &case).await?;
    let what = format!("{} {}", case.method, case.path);
    ensure!(
        answer.status == case.expect,
        "{what}: expected {}, got {} {}",
        case.expect,
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    contract
        .check(case.method.as_str(), case.template, &answer)
        .with_context(|| what.clone())?;
    Ok(answer)
}

async fn start(db: &TestDb) -> Result<RunningEmulator> {
    tests::emulated::start(db, emulator::system::Mode::InProcess, &[]).await
}

/// Every method on every path: the ones the functions answer (not `405`, not
/// API Gateway's "no route") are exactly the document's, and a `405`'s `allow`
/// names exactly them.
#[tokio::test]
async fn the_documented_methods_are_the_ones_answered() -> Result<()> {
    let doc = document()?;
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = tests::client_as("c-1");
    let order = uuid::Uuid::now_v7().to_string();
    let probes: BTreeMap<&str, String> = BTreeMap::from([
        ("/orders", "/orders".to_owned()),
        ("/orders/{id}", format!("/orders/{order}")),
        ("/orders/{id}/cancel", format!("/orders/{order}/cancel")),
        ("/inventory/{sku}", "/inventory/NO-SUCH-SKU".to_owned()),
        ("/customers/{id}/credit", "/customers/c-1/credit".to_owned()),
    ]);
    let documented_paths: BTreeSet<String> =
        operations(&doc)?.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        documented_paths,
        probes
            .keys()
            .map(|p| (*p).to_owned())
            .collect::<BTreeSet<_>>(),
        "a path without a probe here"
    );
    for (template, path) in &probes {
        let documented = methods_of(&doc, template)?;
        let mut answered = BTreeSet::new();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            let method = Method::from_bytes(method.as_bytes())?;
            let response = http
                .request(method.clone(), running.url(path))
                .send()
                .await?;
            let status = response.status().as_u16();
            let allow = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.bytes().await?;
            let no_route = status == 404
                && content_type == "application/json"
                && (method == Method::HEAD
                    || serde_json::from_slice::<Value>(&body).ok()
                        == Some(json!({"message": "Not Found"})));
            if status == 405 {
                let allow = allow.with_context(|| format!("{method} {path}: 405 without allow"))?;
                let allowed: BTreeSet<String> =
                    allow.split(',').map(|m| m.trim().to_owned()).collect();
                assert_eq!(allowed, documented, "{method} {path}: allow");
            } else if !no_route {
                answered.insert(method.to_string());
            }
        }
        assert_eq!(answered, documented, "{path}: methods answered");
    }
    running.stop().await
}

/// Valid and invalid requests for every operation: each answer's status, content
/// type, headers and body are as the document says.
#[tokio::test]
async fn answers_match_the_document() -> Result<()> {
    let contract = Contract::new()?;
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = tests::client_as("c-1");
    let c = &contract;
    let r = &running;
    let h = &http;

    // The document's request schemas agree with the cases below.
    // The customer is the caller (the token's subject), never the body.
    let order_body = |sku: &str, quantity: i64| json!({"items": [{"sku": sku, "quantity": quantity, "unit_price_cents": 1999}]});
    c.check_request("POST", "/orders", &order_body("WIDGET-1", 2), true)?;
    for invalid in [
        json!({"customer_id": "c-1", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
        order_body("WIDGET-1", 0),
        order_body("WIDGET-1", 1001),
        order_body(&"S".repeat(65), 1),
        json!({"items": []}),
        json!({}),
        json!({"items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "total_cents": 1}),
        json!({"customer_id": null, "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"items": [{"sku": "A", "quantity": 1, "unit_price_cents": 10_000_000_001_i64}]}),
    ] {
        c.check_request("POST", "/orders", &invalid, false)?;
    }
    c.check_request("PUT", "/inventory/{sku}", &json!({"available": 10}), true)?;
    c.check_request(
        "PUT",
        "/inventory/{sku}",
        &json!({"available": 10, "price_cents": 1999}),
        true,
    )?;
    for invalid in [
        json!({"available": 1, "price_cents": -1}),
        json!({"available": 1, "price_cents": 10_000_000_001_i64}),
        json!({"available": -1}),
        json!({"available": 1_000_000_001}),
        json!({"available": "10"}),
        json!({"available": 1, "reserved": 0}),
        json!({}),
        json!([10]),
    ] {
        c.check_request("PUT", "/inventory/{sku}", &invalid, false)?;
    }

    // PUT /inventory/{sku}
    let inv = "/inventory/{sku}";
    let put = |path: &str, expect| Case::new(Method::PUT, path, inv, expect);
    run(
        c,
        h,
        r,
        put("/inventory/WIDGET-1", 200).json(&json!({"available": 1000, "price_cents": 1999})),
    )
    .await?;
    run(
        c,
        h,
        r,
        put("/inventory/a%3Ab%40c", 200).json(&json!({"available": 0, "price_cents": 0})),
    )
    .await?;
    // A SKU the inventory does not know needs its price.
    run(
        c,
        h,
        r,
        put("/inventory/NEW-1", 422).json(&json!({"available": 1})),
    )
    .await?;
    run(
        c,
        h,
        r,
        put("/inventory/bad%20sku", 400).json(&json!({"available": 1})),
    )
    .await?;
    run(
        c,
        h,
        r,
        put(&format!("/inventory/{}", "S".repeat(65)), 400).json(&json!({"available": 1})),
    )
    .await?;
    run(
        c,
        h,
        r,
        put("/inventory/W-1", 400).raw("application/json", b"{".to_vec()),
    )
    .await?;
    run(
        c,
        h,
        r,
        put("/inventory/W-1", 400).raw("application/json", Vec::new()),
    )
    .await?;
    run(
        c,
        h,
        r,
        put("/inventory/W-1", 415).raw("text/plain", b"{\"available\":1}".to_vec()),
    )
    .await?;
    run(c, h, r, put("/inventory/W-1", 415)).await?;
    for body in [
        json!({"available": -1}),
        json!({"available": 1.5}),
        json!({"available": "10"}),
        json!({"available": 1, "reserved": 0}),
        json!([10]),
    ] {
        run(c, h, r, put("/inventory/W-1", 422).json(&body)).await?;
    }
    let big = format!("{{\"available\":1{}}}", " ".repeat(http_api_limit()));
    run(
        c,
        h,
        r,
        put("/inventory/W-1", 413).raw("application/json", big.into_bytes()),
    )
    .await?;
    // GET /inventory/{sku}
    let get_inv = |path: &str, expect| Case::new(Method::GET, path, inv, expect);
    let stock = run(c, h, r, get_inv("/inventory/WIDGET-1", 200)).await?;
    assert_eq!(
        stock.json(),
        json!({"sku": "WIDGET-1", "available": 1000, "reserved": 0, "price_cents": 1999})
    );
    run(c, h, r, get_inv("/inventory/a:b@c", 200)).await?;
    run(c, h, r, get_inv("/inventory/NO-SUCH-SKU", 404)).await?;
    run(c, h, r, get_inv("/inventory/bad%20sku", 400)).await?;
    run(c, h, r, get_inv("/inventory/%FF", 400)).await?;

    // PUT and GET /customers/{id}/credit (the client is customer c-1)
    let credit = "/customers/{id}/credit";
    let put_credit = |path: &str, expect| Case::new(Method::PUT, path, credit, expect);
    let get_credit = |path: &str, expect| Case::new(Method::GET, path, credit, expect);
    run(c, h, r, get_credit("/customers/c-1/credit", 200)).await?;
    run(
        c,
        h,
        r,
        put_credit("/customers/c-1/credit", 200).json(&json!({"limit_cents": 250_000})),
    )
    .await?;
    let mine = run(c, h, r, get_credit("/customers/c-1/credit", 200)).await?;
    assert_eq!(mine.json()["available_cents"], 250_000);
    run(c, h, r, get_credit("/customers/someone-else/credit", 404)).await?;
    run(c, h, r, get_credit("/customers/bad%20id/credit", 400)).await?;
    for body in [
        json!({"limit_cents": -1}),
        json!({"limit_cents": 1.5}),
        json!({}),
    ] {
        run(
            c,
            h,
            r,
            put_credit("/customers/c-1/credit", 422).json(&body),
        )
        .await?;
    }
    run(
        c,
        h,
        r,
        put_credit("/customers/c-1/credit", 400).raw("application/json", b"{".to_vec()),
    )
    .await?;
    run(c, h, r, put_credit("/customers/c-1/credit", 415)).await?;

    // POST /orders
    let orders = |expect| Case::new(Method::POST, "/orders", "/orders", expect);
    let created = run(c, h, r, orders(201).json(&order_body("WIDGET-1", 2))).await?;
    let id = created.json()["id"].as_str().context("no id")?.to_owned();
    let keyed = run(
        c,
        h,
        r,
        orders(201)
            .header("idempotency-key", "\"key-1\"")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    let replayed = run(
        c,
        h,
        r,
        orders(201)
            .header("idempotency-key", "\"key-1\"")
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.json(), keyed.json());
    run(
        c,
        h,
        r,
        orders(422)
            .header("idempotency-key", "\"key-1\"")
            .json(&order_body("WIDGET-1", 3)),
    )
    .await?;
    run(
        c,
        h,
        r,
        orders(400)
            .header("idempotency-key", "a b")
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    run(
        c,
        h,
        r,
        orders(400)
            .header("idempotency-key", "x".repeat(256))
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    run(
        c,
        h,
        r,
        orders(201)
            .header("traceparent", "garbage")
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    run(
        c,
        h,
        r,
        orders(400).raw("application/json", b"{\"items\":".to_vec()),
    )
    .await?;
    run(c, h, r, orders(400).raw("application/json", Vec::new())).await?;
    run(
        c,
        h,
        r,
        orders(415).raw("text/plain", order_body("A", 1).to_string().into_bytes()),
    )
    .await?;
    run(
        c,
        h,
        r,
        orders(415).raw("application/json; charset=latin1", b"{}".to_vec()),
    )
    .await?;
    run(c, h, r, orders(415)).await?;
    for body in [
        json!({}),
        json!([]),
        json!({"customer_id": "c-1", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
        order_body("WIDGET-1", 0),
        json!({"items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}, {"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"total_cents": 5, "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
    ] {
        run(c, h, r, orders(422).json(&body)).await?;
    }
    let big = format!("{}{}", " ".repeat(http_api_limit() + 1), order_body("A", 1));
    run(
        c,
        h,
        r,
        orders(413).raw("application/json", big.into_bytes()),
    )
    .await?;
    // Over API Gateway's own limit: its answer, not the function's.
    let huge = vec![b' '; 10 * 1024 * 1024 + 1];
    run(c, h, r, orders(413).raw("application/json", huge.clone())).await?;

    // GET /orders/{id}
    let get = |path: String, expect| Case::new(Method::GET, path, "/orders/{id}", expect);
    run(c, h, r, get(format!("/orders/{id}"), 200)).await?;
    // The authorizer's answers, as documented: no token, a token without the scope.
    let anonymous = reqwest::Client::new();
    let no_token = run(c, &anonymous, r, get(format!("/orders/{id}"), 401)).await?;
    assert_eq!(no_token.json(), json!({"message": "Unauthorized"}));
    let reader_only = format!("Bearer {}", tests::token("c-1", "inventory:read"));
    run(
        c,
        &anonymous,
        r,
        orders(403)
            .header("authorization", reader_only)
            .json(&order_body("WIDGET-1", 1)),
    )
    .await?;
    // Another customer's order does not exist for them.
    let stranger = tests::client_as("c-2");
    run(c, &stranger, r, get(format!("/orders/{id}"), 404)).await?;
    run(
        c,
        h,
        r,
        get(format!("/orders/{}", id.to_ascii_uppercase()), 200),
    )
    .await?;
    run(
        c,
        h,
        r,
        get(format!("/orders/{}", id.replace('-', "")), 200),
    )
    .await?;
    run(c, h, r, get(format!("/orders/urn:uuid:{id}"), 200)).await?;
    // Percent-encoded, as a client may send it: decoded like a SKU.
    let encoded: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
    run(c, h, r, get(format!("/orders/{encoded}"), 200)).await?;
    run(
        c,
        h,
        r,
        get(format!("/orders/{}", uuid::Uuid::now_v7()), 404),
    )
    .await?;
    run(c, h, r, get("/orders/not-a-uuid".into(), 400)).await?;
    run(c, h, r, get(format!("/orders/{id}x"), 400)).await?;

    // POST /orders/{id}/cancel
    let cancel =
        |path: String, expect| Case::new(Method::POST, path, "/orders/{id}/cancel", expect);
    let cancelled = run(c, h, r, cancel(format!("/orders/{id}/cancel"), 200)).await?;
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    run(c, h, r, cancel(format!("/orders/{id}/cancel"), 409)).await?;
    run(
        c,
        h,
        r,
        cancel(format!("/orders/{}/cancel", uuid::Uuid::now_v7()), 404),
    )
    .await?;
    run(c, h, r, cancel("/orders/nope/cancel".into(), 400)).await?;
    run(
        c,
        h,
        r,
        cancel(format!("/orders/{id}/cancel"), 413).raw("application/json", huge),
    )
    .await?;

    running.stop().await
}

/// The functions' body limit, from the crate that enforces it.
fn http_api_limit() -> usize {
    create_order::MAX_BODY_BYTES
}

#[test]
fn every_schema_compiles_and_every_ref_resolves() -> Result<()> {
    let contract = Contract::new()?;
    let doc = &contract.doc;
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .context("no schemas")?
    {
        contract
            .validator(schema)
            .with_context(|| format!("schema {name}"))?;
    }
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for reference in all {
        let pointer = reference.strip_prefix('#').unwrap_or(&reference);
        if doc.pointer(pointer).is_none() {
            bail!("dangling $ref {reference}");
        }
    }
    Ok(())
}
