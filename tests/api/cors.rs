//! Cross-origin access (`--cors-origin`): a listed origin's preflight is
//! answered with that origin, any other origin's is not, and an origin no
//! browser would ever send (`*`, a trailing slash, a stray space) is refused
//! on the command line instead of panicking or silently never matching.

use std::process::{Command, Output};
use std::time::Duration;

use axum::http::HeaderValue;

use crate::cli::run_until_exit;
use crate::helpers::app::spawn_app_with;
use crate::helpers::binary::Binary;
use crate::helpers::checks::header;
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::SECRET;

const ALLOWED: &str = "https://app.example.com";

/// A browser's preflight for a GET of the inbox with a bearer token.
async fn preflight(client: &reqwest::Client, address: &str, origin: &str) -> reqwest::Response {
    client
        .request(
            reqwest::Method::OPTIONS,
            format!("{address}/v1/notifications"),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .expect("preflight")
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_is_allowed_with_credentials() {
    let app = spawn_app_with(|s| s.cors_origins = vec![HeaderValue::from_static(ALLOWED)]).await;

    let response = preflight(&app.client, &app.address, ALLOWED).await;

    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(header(&response, "access-control-allow-origin"), ALLOWED);
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        "true"
    );
    assert!(
        header(&response, "access-control-allow-headers")
            .to_ascii_lowercase()
            .contains("authorization"),
        "authorization is an allowed header"
    );
}

#[tokio::test]
async fn a_preflight_from_an_unlisted_origin_gets_no_allow_origin() {
    let app = spawn_app_with(|s| s.cors_origins = vec![HeaderValue::from_static(ALLOWED)]).await;

    let response = preflight(&app.client, &app.address, "https://evil.example.com").await;

    assert_eq!(header(&response, "access-control-allow-origin"), "");
}

#[tokio::test]
async fn origins_listed_with_spaces_after_the_commas_still_match() {
    let database = fresh_database().await.expect("database");
    let server = Binary::serve(&[
        ("DATABASE_URL", &url_of(&database)),
        (
            "TIDINGS_CORS_ORIGINS",
            "https://a.example.com, https://b.example.com",
        ),
    ])
    .expect("start");
    server.wait_until_ready().await.expect("ready");
    let client = reqwest::Client::new();

    for origin in ["https://a.example.com", "https://b.example.com"] {
        let response = preflight(&client, &server.address, origin).await;

        assert_eq!(
            header(&response, "access-control-allow-origin"),
            origin,
            "{origin}"
        );
    }
}

/// Runs `tidings serve` with `origins` in `--cors-origin`, against a
/// database that exists, and returns how it ended - or fails if it is
/// still running after 20 s (it served instead of refusing).
async fn serve_with_origins(origins: &str) -> Output {
    let database = fresh_database().await.expect("database");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--cors-origin", origins])
        .env("DATABASE_URL", url_of(&database))
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env_remove("TIDINGS_CORS_ORIGINS");
    run_until_exit(command, Duration::from_secs(20)).await
}

#[tokio::test]
async fn a_wildcard_origin_is_refused_before_serving() {
    let output = serve_with_origins("*").await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--cors-origin"), "{stderr}");
    assert!(stderr.contains("list the origins"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn an_origin_with_a_path_or_no_scheme_is_refused() {
    for origin in [
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "app.example.com",
        "https://App.example.com",
        "https://app.example.com:443",
        "https://a.example.com,",
    ] {
        let output = serve_with_origins(origin).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{origin}: {stderr}");
        assert!(stderr.contains("--cors-origin"), "{origin}: {stderr}");
        assert!(!stderr.contains("serving on"), "{origin}: {stderr}");
    }
}
