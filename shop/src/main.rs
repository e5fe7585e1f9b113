//! `emulator`: the emulator's command line with the shop's functions linked
//! in-process ([`shop::Shop`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    emulator::app::main(std::sync::Arc::new(shop::Shop)).await
}
