//! What `emulator up` trusts, from its command line: the development key (and
//! `emulator token --scope --ttl`), a JWKS file of another issuer's keys
//! (`--jwks` with `AuthIssuer` / `AuthAudience`), or nothing (`--no-auth`, said
//! loudly in the banner).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

mod common;

use common::{env_vars, fresh_database, spare_port, start_up, BIN, TEMPLATE};

/// The claims of a JWT, unverified.
fn claims(token: &str) -> anyhow::Result<Value> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// `up ARGS` on a fresh database: its banner and base URL (the guard stops it).
async fn up(args: &[&str]) -> anyhow::Result<(common::Up, String, String)> {
    let database_url = fresh_database().await?;
    let namespace = format!("tru{}", uuid::Uuid::now_v7().simple());
    let vars = env_vars(&namespace)?;
    let port = spare_port()?.to_string();
    let state = std::env::temp_dir().join(&namespace);
    let (vars_path, state_path) = (
        vars.0.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let mut all = vec![
        "--port",
        &port,
        "--template",
        TEMPLATE,
        "--env-vars",
        &vars_path,
        "--state-dir",
        &state_path,
    ];
    all.extend_from_slice(args);
    let (up, lines) = start_up(&all, &database_url, &[])?;
    let banner = common::banner(&lines)?;
    Ok((up, banner, format!("http://127.0.0.1:{port}")))
}

/// `GET /inventory/NOPE` with `authorization`: 404 once the function ran, 401
/// when the authorizer refused.
async fn status(base: &str, authorization: Option<&str>) -> anyhow::Result<u16> {
    let mut request = reqwest::Client::new().get(format!("{base}/inventory/NOPE-1"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    Ok(request.send().await?.status().as_u16())
}

#[test]
fn token_takes_its_scopes_and_lifetime_from_the_command_line() -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("tok{}", uuid::Uuid::now_v7().simple()));
    let out = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "ops-1",
            "--scope",
            "orders:read orders:admin",
        ])
        .args(["--ttl", "600", "--template", TEMPLATE, "--state-dir"])
        .arg(&state)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let claims = claims(String::from_utf8(out.stdout)?.trim())?;
    assert_eq!(claims["sub"], "ops-1");
    assert_eq!(claims["scope"], "orders:read orders:admin");
    let lifetime =
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default();
    assert_eq!(lifetime, 600, "{claims}");
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

#[tokio::test]
async fn jwks_trusts_another_issuers_keys_instead_of_the_development_key() -> anyhow::Result<()> {
    let issuer_key = emulator::auth::DevKey::generate()?;
    let jwks = std::env::temp_dir().join(format!("jwks{}.json", uuid::Uuid::now_v7().simple()));
    std::fs::write(&jwks, serde_json::to_string(&issuer_key.jwks())?)?;
    let jwks_path = jwks.to_string_lossy().into_owned();
    let (_up, banner, base) = up(&[
        "--jwks",
        &jwks_path,
        // (Both forms: SAM's one space-separated argument, and several.)
        "--parameter-overrides",
        "AuthIssuer=https://id.example AuthAudience=x",
        "AuthAudience=shop",
    ])
    .await?;
    assert!(
        banner.contains(&format!("Tokens: the 1 key(s) of {jwks_path}")),
        "{banner}"
    );
    let token = |issuer: &str| {
        issuer_key.token(&emulator::auth::TokenRequest {
            subject: "c-1".into(),
            scopes: vec!["inventory:read".into()],
            ttl: Duration::from_secs(60),
            issuer: issuer.into(),
            audience: "shop".into(),
        })
    };
    let good = format!("Bearer {}", token("https://id.example")?);
    assert_eq!(status(&base, Some(&good)).await?, 404, "the function ran");
    let elsewhere = format!("Bearer {}", token("https://elsewhere.example")?);
    assert_eq!(status(&base, Some(&elsewhere)).await?, 401);
    // The development key is not trusted any more.
    let dev = emulator::auth::DevKey::generate()?;
    let dev_token = dev.token(&emulator::auth::TokenRequest {
        subject: "c-1".into(),
        scopes: vec!["inventory:read".into()],
        ttl: Duration::from_secs(60),
        issuer: "https://id.example".into(),
        audience: "shop".into(),
    })?;
    assert_eq!(
        status(&base, Some(&format!("Bearer {dev_token}"))).await?,
        401
    );
    assert_eq!(status(&base, None).await?, 401);
    let _ = std::fs::remove_file(jwks);
    Ok(())
}

#[tokio::test]
async fn no_auth_says_so_loudly_and_lets_every_request_through() -> anyhow::Result<()> {
    let (_up, banner, base) = up(&["--no-auth"]).await?;
    assert!(
        banner.contains("!! AUTHORIZERS OFF (--no-auth)"),
        "{banner}"
    );
    assert_eq!(status(&base, None).await?, 404, "the function ran");
    assert_eq!(
        status(&base, Some("Bearer not.a.token")).await?,
        404,
        "nothing is verified"
    );
    Ok(())
}
