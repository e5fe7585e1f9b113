//! The shop's template.yaml as the emulator reads it.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::BTreeMap;
use std::time::Duration;

use emulator::schedule::ScheduleExpression;
use emulator::template::{parse, parse_with_parameters, FunctionSpec, Template};

fn function<'a>(template: &'a Template, id: &str) -> &'a FunctionSpec {
    template
        .functions
        .iter()
        .find(|f| f.logical_id == id)
        .unwrap_or_else(|| panic!("no function {id}"))
}

/// The shop's template reads as the emulator expects: its nine functions, the
/// create-order and customers routes, Globals applied, the relay's schedule,
/// the database URL left to the emulator.
#[test]
fn the_shops_template() {
    let template = parse(include_str!("../../template.yaml")).expect("template.yaml parses");
    let ids: Vec<&str> = template
        .functions
        .iter()
        .map(|f| f.logical_id.as_str())
        .collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert_eq!(ids[0], "CreateOrderFunction");
    let migrate = function(&template, "MigrateFunction");
    assert_eq!(migrate.custom_resources, ["DatabaseMigrations"]);
    assert!(function(&template, "OutboxRelayFunction").is_relay());

    let customers = function(&template, "CustomersApiFunction");
    let routes: Vec<(&str, &str, &str)> = customers
        .http_routes
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.auth.scopes[0].as_str(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("GET", "/customers/{id}/credit", "customers:read"),
            ("PUT", "/customers/{id}/credit", "customers:write")
        ]
    );
    assert_eq!(customers.environment["DEFAULT_CREDIT_LIMIT_CENTS"], "0");
    assert_eq!(customers.environment["DATABASE_USER"], "customer_service");
    let consumer = function(&template, "CustomersConsumerFunction");
    assert_eq!(consumer.environment["DEFAULT_CREDIT_LIMIT_CENTS"], "0");
    assert_eq!(consumer.environment["DATABASE_USER"], "customer_service");

    let create_order = function(&template, "CreateOrderFunction");
    assert_eq!(create_order.binary, "create-order");
    let routes: Vec<(&str, &str)> = create_order
        .http_routes
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            ("POST", "/orders"),
            ("GET", "/orders/{id}"),
            ("POST", "/orders/{id}/cancel")
        ]
    );
    // Every route is behind the API's JWT authorizer, with its scopes.
    let api = &template.http_apis["OrdersApi"];
    assert_eq!(api.default_authorizer.as_deref(), Some("OrdersJwt"));
    assert_eq!(
        api.authorizers["OrdersJwt"].issuer, None,
        "the user pool's issuer is known only to AWS"
    );
    assert!(api.throttle.is_some());
    assert_eq!(api.cors, None, "no CORS without AllowedOrigins");
    let scopes: Vec<&str> = create_order
        .http_routes
        .iter()
        .map(|r| r.auth.scopes[0].as_str())
        .collect();
    assert_eq!(scopes, ["orders:write", "orders:read", "orders:write"]);
    assert_eq!(create_order.timeout, Duration::from_secs(10));
    assert_eq!(create_order.memory_mb, 256);
    assert_eq!(create_order.environment["IDEMPOTENCY_TTL_SECS"], "86400");
    assert_eq!(create_order.environment["RUST_LOG"], "info");
    for name in ["DATABASE_URL", "DATABASE_PASSWORD"] {
        assert!(
            create_order
                .unresolved_environment
                .iter()
                .any(|v| v == name),
            "{name} should be unresolved: {:?}",
            create_order.unresolved_environment
        );
        assert!(!create_order.environment.contains_key(name));
    }
    assert!(create_order.schedules.is_empty());
    assert_eq!(
        create_order.environment["METRICS_NAMESPACE"],
        "OrderProcessing"
    );
    assert!(!create_order.environment.contains_key("REDIS_URL"));

    let relay = function(&template, "OutboxRelayFunction");
    assert_eq!(relay.timeout, Duration::from_secs(60));
    assert_eq!(relay.reserved_concurrency, Some(2));
    assert_eq!(relay.schedules.len(), 1);
    assert_eq!(
        relay.schedules[0].expression,
        ScheduleExpression::Rate(Duration::from_secs(60))
    );
    assert_eq!(relay.schedules[0].expression.to_string(), "rate(1 minute)");
    assert!(relay.schedules[0].enabled);
    assert_eq!(
        relay.schedules[0].rule_name,
        "OutboxRelayFunctionEveryMinute"
    );
    assert!(relay
        .unresolved_environment
        .iter()
        .any(|v| v == "REDIS_URL"));
    assert!(relay.stream_source().is_none());

    // Only once the template declares the stream sources.
    for (id, source, group) in [
        ("InventoryConsumerFunction", &["Order"][..], "inventory"),
        ("CustomersConsumerFunction", &["Order"], "customers"),
        (
            "OrderSagaFunction",
            &["Reservation", "Credit"],
            "order-saga",
        ),
    ] {
        let consumer = function(&template, id);
        if consumer.environment.contains_key("STREAM_SOURCE") {
            let stream = consumer.stream_source().expect("a stream source");
            assert_eq!(stream.aggregate_types, source);
            assert_eq!(stream.group, group);
            assert_eq!(stream.namespace, "events");
            assert_eq!(stream.partitions, 1);
            assert_eq!(stream.settings["BATCH_SIZE"], "100");
            assert_eq!(stream.settings["STARTING_POSITION"], "TRIM_HORIZON");
            assert!(!stream.settings.contains_key("SAFETY_MARGIN_MS"));
            // The Redis endpoint is the stack's (or a parameter): only AWS knows it.
            assert!(consumer
                .unresolved_environment
                .contains(&"REDIS_URL".to_owned()));
        }
    }

    // The deploy-time migration step: a function like the others, with no events.
    let migrate = function(&template, "MigrateFunction");
    assert_eq!(template.function("migrate"), Some(migrate));
    assert_eq!(migrate.timeout, Duration::from_secs(300));
    assert!(migrate.http_routes.is_empty() && migrate.schedules.is_empty());
    assert!(migrate.ignored_events.is_empty());
    assert_eq!(
        migrate.environment["DATABASE_STATEMENT_TIMEOUT_MS"],
        "270000"
    );
    assert_eq!(migrate.environment["DATABASE_MAX_CONNECTIONS"], "1");
    assert_eq!(
        migrate.unresolved_environment,
        [
            "CUSTOMER_SERVICE_DATABASE_PASSWORD",
            "DATABASE_PASSWORD",
            "DATABASE_URL",
            "INVENTORY_SERVICE_DATABASE_PASSWORD",
            "ORDER_SERVICE_DATABASE_PASSWORD",
            "OUTBOX_RELAY_DATABASE_PASSWORD"
        ]
    );
    // Migrations run as the master user (the URL's); every other function
    // logs in as its service's role, locally too.
    assert!(!migrate.environment.contains_key("DATABASE_USER"));
    for (id, role) in [
        ("CreateOrderFunction", "order_service"),
        ("OrderSagaFunction", "order_service"),
        ("OrderReconcilerFunction", "order_service"),
        ("InventoryApiFunction", "inventory_service"),
        ("InventoryConsumerFunction", "inventory_service"),
        ("InventoryRetentionFunction", "inventory_service"),
        ("OutboxRelayFunction", "outbox_relay"),
    ] {
        assert_eq!(
            function(&template, id).environment["DATABASE_USER"],
            role,
            "{id}"
        );
    }
    assert!(migrate.stream_source().is_none());

    // What the deployment chooses: empty means "create it" and resolves to
    // nothing the functions see.
    for (name, value) in [
        ("VpcId", ""),
        ("SubnetIds", ""),
        ("DatabaseHost", ""),
        ("RedisUrl", ""),
        ("DatabaseSecretArn", ""),
        ("MetricsNamespace", "OrderProcessing"),
        ("OutboxAgeThresholdSeconds", "300"),
    ] {
        assert_eq!(template.parameters[name].as_deref(), Some(value), "{name}");
    }
    // Bringing your own stores changes nothing locally: the emulator
    // supplies DATABASE_URL and REDIS_URL.
    let own = BTreeMap::from([
        ("DatabaseHost".to_owned(), "db.example.internal".to_owned()),
        (
            "RedisUrl".to_owned(),
            "rediss://cache.example.internal:6379".to_owned(),
        ),
    ]);
    let with_own = parse_with_parameters(include_str!("../../template.yaml"), &own)
        .expect("parses with overrides");
    let relay = function(&with_own, "OutboxRelayFunction");
    assert_eq!(
        relay.environment["RELAY_OUTBOXES"],
        "orders.outbox,inventory.outbox,customers.outbox"
    );
    assert!(relay
        .unresolved_environment
        .contains(&"REDIS_URL".to_owned()));
    assert!(relay
        .unresolved_environment
        .contains(&"DATABASE_URL".to_owned()));
}
