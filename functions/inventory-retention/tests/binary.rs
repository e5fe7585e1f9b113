//! Outside Lambda, without its configuration, the binary stops at once with an
//! error on stderr (`test_support::assert_exits_asking_for`).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

#[test]
fn without_configuration_the_binary_exits_with_an_error() {
    test_support::assert_exits_asking_for(
        env!("CARGO_BIN_EXE_inventory-retention"),
        "DATABASE_URL",
    );
}

/// A retention that a redrive could outlive stops the cold start, naming the
/// variables to fix.
#[test]
fn an_inbox_retention_a_redrive_could_outlive_stops_the_cold_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inventory-retention"))
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .env("INBOX_RETENTION_HOURS", "200")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "INBOX_RETENTION_HOURS",
        "STREAM_RETENTION_HOURS",
        "DLQ_RETENTION_HOURS",
    ] {
        assert!(stderr.contains(var), "{var} in {stderr}");
    }
}
