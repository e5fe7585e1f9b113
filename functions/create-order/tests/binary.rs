//! Outside Lambda, without its configuration, the binary stops at once with an
//! error on stderr (`test_support::assert_exits_asking_for`).

#[test]
fn without_configuration_the_binary_exits_with_an_error() {
    test_support::assert_exits_asking_for(env!("CARGO_BIN_EXE_create-order"), "DATABASE_URL");
}
