//! Outside Lambda, without its configuration, the binary stops at once with an
//! error on stderr. (This test also makes `cargo test` build the binary, which
//! the emulator's Runtime API tests run.)

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

#[test]
fn without_configuration_the_binary_exits_with_an_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inventory-retention"))
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
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
