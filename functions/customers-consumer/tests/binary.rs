//! Outside Lambda, without its configuration, the binary stops at once with an
//! error on stderr. (This test also makes `cargo test` build the binary, which
//! the emulator's Runtime API tests run.)

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

#[test]
fn without_configuration_the_binary_exits_with_an_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customers-consumer"))
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}
