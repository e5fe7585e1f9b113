//! Checks of ARCHITECTURE.md's invariants that a build alone does not enforce.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

/// The shared core knows no AWS event shapes: it depends on no Lambda crate.
#[test]
fn the_shared_core_depends_on_no_lambda_crate() {
    let manifest = include_str!("../shared/Cargo.toml");
    for forbidden in [
        "lambda_runtime",
        "lambda_http",
        "aws_lambda_events",
        "aws-lambda-events",
    ] {
        assert!(
            !manifest.contains(forbidden),
            "shared/Cargo.toml mentions {forbidden}"
        );
    }
}

/// The text of every `.rs` file under `dir` (relative to the repository).
fn sources(dir: &str) -> Vec<(std::path::PathBuf, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a readable source file");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repository().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

fn repository() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Money never goes through a float in the shop's published language or the
/// order body.
#[test]
fn no_float_on_a_money_path() {
    let mut files = sources("services/contracts/src");
    files.extend(sources("functions/create-order/src"));
    for (file, text) in files {
        for float in ["f32", "f64"] {
            assert!(!text.contains(float), "{} uses {float}", file.display());
        }
    }
}

/// The toolkit is not a fork: its crates (the core, the emulator, the HTTP and
/// consumer glue, the relay and migrate functions) depend on no service or
/// shop function crate, so a new service changes none of them.
#[test]
fn the_toolkit_depends_on_no_service() {
    let toolkit = [
        "shared",
        "emulator",
        "http-api",
        "stream-consumer",
        "functions/outbox-relay",
        "functions/migrate",
    ];
    let app = [
        "contracts",
        "order-service",
        "inventory-service",
        "customer-service",
        "create-order",
        "customers-api",
        "inventory-api",
        "inventory-consumer",
        "customers-consumer",
        "order-saga",
        "order-reconciler",
        "inventory-retention",
        "shop",
        "services/",
    ];
    for krate in toolkit {
        let manifest = std::fs::read_to_string(repository().join(krate).join("Cargo.toml"))
            .expect("a manifest");
        for line in manifest.lines() {
            let name = line.split(['=', '.']).next().unwrap_or("").trim();
            assert!(
                !app.iter()
                    .any(|a| name == *a || line.contains(&format!("\"../{a}"))),
                "{krate}/Cargo.toml depends on {name}: {line}"
            );
        }
    }
}

/// Every service's outbox has one shape (names, types, nullability, defaults,
/// order), so one relay can drain them all.
#[tokio::test]
async fn every_outbox_table_has_the_same_shape() -> anyhow::Result<()> {
    let db = tests::TestDb::fresh().await?;
    let shape = |schema: &'static str| {
        sqlx::query_as::<_, (String, String, String, Option<String>)>(
            "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'outbox'
             ORDER BY ordinal_position",
        )
        .bind(schema)
        .fetch_all(&db.pool)
    };
    let orders = shape("orders").await?;
    assert!(orders.len() >= 9, "{orders:?}");
    assert_eq!(orders, shape("inventory").await?);
    assert_eq!(orders, shape("customers").await?);
    Ok(())
}

/// Migrations run at deploy time (the migrate function, a CloudFormation custom
/// resource), never on a function's cold start.
#[test]
fn no_function_migrates_at_cold_start() {
    let functions = std::fs::read_dir(repository().join("functions")).expect("functions/");
    for function in functions.flatten() {
        let name = function.file_name().to_string_lossy().into_owned();
        if name == "migrate" {
            continue;
        }
        for (file, text) in sources(&format!("functions/{name}/src")) {
            for migrating in ["db::migrate", "migrations()"] {
                assert!(
                    !text.contains(migrating),
                    "{} uses {migrating}",
                    file.display()
                );
            }
        }
    }
    let template = include_str!("../template.yaml");
    assert_eq!(
        template.matches("DependsOn: DatabaseMigrations").count(),
        9,
        "every function but MigrateFunction waits for the migrations"
    );
}
