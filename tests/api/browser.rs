//! The browser side: `/tidings.js`, `/tidings.d.ts` and the demo page over
//! HTTP, then the client and `<tidings-bell>` in a real headless Chromium,
//! driven by `tests/browser/run.mjs` (Playwright) against the real
//! `tidings` binary and PostgreSQL. One test per scenario, so a failure
//! names its guarantee.
//!
//! The browser scenarios need Chromium (`/usr/bin/chromium`), Node.js and
//! `tests/browser/node_modules`; `.ci/run` installs them. Where one is
//! missing they say NOT RUN, except in CI (`CI` set), where that fails.
//! They take turns: two Chromiums at once on a small machine would measure
//! the machine, not tidings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use crate::examples::libpq_env;
use crate::helpers::app::{spawn_app, spawn_app_with};
use crate::helpers::checks::{header, runnable};
use crate::helpers::cluster::{as_service, fresh_database, url_of};
use crate::helpers::components::free_port;
use crate::helpers::proxies::{snippet, Proxy, NGINX_TOP};
use crate::helpers::SECRET;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bounds a scenario even if its own timeout (120 s) never fires.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(180);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn browser_shows_rows_inserted_with_sql_live_once_each_in_order_on_the_demo_page() {
    run_scenario("live").await;
}

#[tokio::test]
async fn browser_shows_rows_inserted_while_tidings_was_down_exactly_once() {
    run_scenario("restart").await;
}

#[tokio::test]
async fn browser_reload_loses_nothing_and_doubles_nothing() {
    run_scenario("reload").await;
}

#[tokio::test]
async fn browser_tabs_share_one_stream_and_see_each_others_read_marks() {
    run_scenario("tabs").await;
}

#[tokio::test]
async fn browser_renders_html_in_payloads_as_text() {
    run_scenario("injection").await;
}

#[tokio::test]
async fn browser_screenshot_of_the_open_bell_is_not_blank() {
    run_scenario("screenshot").await;
}

#[tokio::test]
async fn browser_renews_a_refused_token_and_resumes_from_the_last_event() {
    run_scenario("token").await;
}

#[tokio::test]
async fn browser_tabs_of_different_users_never_share_a_stream() {
    run_scenario("users").await;
}

#[tokio::test]
async fn browser_resets_to_the_log_when_the_database_was_restored_behind_it() {
    run_scenario_with_restore("reset").await;
}

#[tokio::test]
async fn browser_loads_the_client_from_another_origin_both_ways_the_readme_shows() {
    run_scenario("origin").await;
}

#[tokio::test]
async fn browser_types_declare_exactly_what_the_client_has_and_type_check() {
    run_scenario("types").await;
}

#[tokio::test]
async fn browser_pages_of_other_origins_cannot_mark_read_with_the_cookie() {
    run_scenario("forgery").await;
}

#[tokio::test]
async fn browser_list_loads_all_of_history_and_says_when_everything_is_shown() {
    run_scenario("history").await;
}

#[tokio::test]
async fn browser_failures_are_said_with_what_to_do_and_retry_recovers() {
    run_scenario("errors").await;
}

#[tokio::test]
async fn browser_row_click_is_a_cancelable_event_a_router_can_take_over() {
    run_scenario("router").await;
}

#[tokio::test]
async fn browser_kind_line_is_shown_only_with_the_show_kind_attribute() {
    run_scenario("kind").await;
}

#[tokio::test]
async fn browser_panel_fits_a_phone_screen_with_touch_sized_controls() {
    run_scenario("mobile").await;
}

#[tokio::test]
async fn browser_list_is_one_tab_stop_with_arrow_keys_and_escape_returns_to_the_bell() {
    run_scenario("keyboard").await;
}

#[tokio::test]
async fn browser_axe_finds_no_violations_in_the_bell_closed_or_open() {
    run_scenario("audit").await;
}

#[tokio::test]
async fn browser_speaks_the_pages_language_and_cuts_text_between_whole_characters() {
    run_scenario("languages").await;
}

#[tokio::test]
async fn browser_eventsource_keeps_its_stream_through_a_tidings_restart_behind_the_guides_nginx() {
    if !browser_available() {
        return;
    }
    // nginx first, in front of the port the scenario starts tidings on.
    let port = free_port();
    let Some(nginx) = Proxy::nginx(port, &snippet(NGINX_TOP)) else {
        return;
    };
    let env = [
        ("PROXY_URL", nginx.url.clone()),
        ("TIDINGS_PORT", port.to_string()),
    ];
    run("proxy", false, &env).await;
}

#[tokio::test]
async fn browser_client_is_a_module_with_an_etag_that_revalidates_to_304() {
    let app = spawn_app().await;
    let url = format!("{}/tidings.js", app.address);

    let first = app.client.get(&url).send().await.expect("GET /tidings.js");
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag");
    assert_eq!(
        header(&first, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&first, "cache-control"), "no-cache");
    assert!(
        etag.starts_with('"') && etag.len() > 10,
        "a strong ETag: {etag}"
    );
    let script = first.text().await.expect("body");
    assert!(
        script.contains("export function connect("),
        "exports connect"
    );
    assert!(
        script.contains("customElements.define('tidings-bell'"),
        "defines the bell"
    );

    let again = app.client.get(&url).header("if-none-match", &etag);
    let again = again.send().await.expect("conditional GET");
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().await.expect("body").is_empty());
}

/// The client is served as one file joined from its modules: nothing of
/// the join's input is left for a browser to fetch.
#[tokio::test]
async fn browser_client_is_one_file_importing_nothing_for_any_origin() {
    let app = spawn_app().await;

    let response = app.client.get(format!("{}/tidings.js", app.address));
    let response = response.send().await.expect("GET /tidings.js");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    let script = response.text().await.expect("body");
    let statements: Vec<&str> = script
        .lines()
        .filter(|line| line.starts_with("import ") || line.starts_with("export "))
        .collect();
    assert_eq!(
        statements,
        [
            "export function connect(options = {}) {",
            "export { TidingsBell, TidingsError, claimsOf, describe };",
            "export default { connect, TidingsBell, TidingsError, describe };",
        ],
        "no imports left, and only the entry module's exports"
    );
    for part in ["feed", "format", "styles", "bell"] {
        let marker = format!("// ---- web/tidings/{part}.js (its line N is line N + ");
        assert!(script.contains(&marker), "a marker for {part}.js");
    }
    let missing = app.client.get(format!("{}/tidings/feed.js", app.address));
    let missing = missing.send().await.expect("GET /tidings/feed.js");
    assert_eq!(missing.status(), 404, "the parts are not served");
}

#[tokio::test]
async fn browser_client_types_are_served_like_the_client_with_an_etag_that_revalidates_to_304() {
    let app = spawn_app().await;
    let url = format!("{}/tidings.d.ts", app.address);

    let first = app
        .client
        .get(&url)
        .send()
        .await
        .expect("GET /tidings.d.ts");
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "content-type"),
        "application/typescript; charset=utf-8"
    );
    assert_eq!(header(&first, "cache-control"), "no-cache");
    assert_eq!(header(&first, "x-content-type-options"), "nosniff");
    assert_eq!(header(&first, "access-control-allow-origin"), "*");
    let etag = header(&first, "etag");
    assert!(
        etag.starts_with('"') && etag.len() > 10,
        "a strong ETag: {etag}"
    );
    let declarations = first.text().await.expect("body");
    for declared in [
        "export declare function connect(",
        "export declare class TidingsBell extends HTMLElement",
        "'tidings-bell': TidingsBell;",
    ] {
        assert!(declarations.contains(declared), "declares {declared}");
    }

    let again = app.client.get(&url).header("if-none-match", &etag);
    let again = again.send().await.expect("conditional GET");
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(header(&again, "access-control-allow-origin"), "*");
    assert!(again.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn browser_demo_page_offers_the_publish_form_only_in_demo_mode() {
    let configured = spawn_app().await;
    let dev = spawn_app_with(|settings| settings.demo_mode = true).await;

    let page = |address: String| async move {
        let response = reqwest::get(format!("{address}/")).await.expect("GET /");
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&response, "referrer-policy"), "no-referrer");
        assert!(header(&response, "content-security-policy").contains("script-src 'self'"));
        (
            header(&response, "etag"),
            response.text().await.expect("body"),
        )
    };
    let (configured_etag, configured_page) = page(configured.address.clone()).await;
    let (dev_etag, dev_page) = page(dev.address.clone()).await;

    assert!(configured_page.contains(r#"data-demo="off""#));
    assert!(dev_page.contains(r#"data-demo="on""#));
    assert_ne!(configured_etag, dev_etag, "each variant has its own ETag");
}

/// Runs `node tests/browser/run.mjs <name>` on a fresh database and fails
/// with its output unless it exits 0.
async fn run_scenario(name: &'static str) {
    run(name, false, &[]).await;
}

/// [`run_scenario`], with a second fresh database to "restore" to.
async fn run_scenario_with_restore(name: &'static str) {
    run(name, true, &[]).await;
}

/// Runs scenario `name`, with `env` added to its environment.
async fn run(name: &'static str, with_restore: bool, env: &[(&'static str, String)]) {
    if !browser_available() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = fresh_database().await.expect("fresh database");
    let restored = if with_restore {
        Some(fresh_database().await.expect("second fresh database"))
    } else {
        None
    };
    let started = Instant::now();
    let env = env.to_vec();
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_node(name, &database, restored.as_ref(), &env))
            .await
            .expect("join");
    let took = started.elapsed();
    assert!(
        status == Some(0),
        "browser scenario `{name}` failed (exit {status:?}, {took:?}):\n{stdout}\n{stderr}"
    );
    println!("browser scenario `{name}` ({took:.1?}):\n{stdout}");
}

/// Whether everything the browser scenarios need is here; in CI, it must be.
fn browser_available() -> bool {
    let node = runnable("Node.js", "node", &["--version"]);
    let missing: Vec<&str> = [
        (Path::new(CHROMIUM).exists(), "Chromium (/usr/bin/chromium)"),
        (node, "Node.js"),
        (
            browser_dir().join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules (npm ci)",
        ),
    ]
    .into_iter()
    .filter_map(|(present, what)| (!present).then_some(what))
    .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the browser tests, but this is missing: {missing}"
    );
    eprintln!("NOT RUN: the browser tests need {missing} (.ci/run installs it)");
    false
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Screenshots land in `<target>/browser-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-artifacts")
}

/// The scenario in its own process group, so that whatever it started is
/// ended with it should it overrun: SIGTERM first (it then closes the
/// browser and stops tidings itself), SIGKILL for anything still left.
fn run_node(
    name: &str,
    database: &PgConnectOptions,
    restored: Option<&PgConnectOptions>,
    env: &[(&'static str, String)],
) -> (Option<i32>, String, String) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("node");
    if let Some(restored) = restored {
        command
            .env("RESTORED_DATABASE_URL", url_of(restored))
            .env(
                "RESTORED_SERVICE_DATABASE_URL",
                url_of(&as_service(restored)),
            )
            .env(
                "RESTORED_PGDATABASE",
                restored.get_database().unwrap_or_default(),
            );
    }
    let child = command
        .arg(browser_dir().join("run.mjs"))
        .arg(name)
        .current_dir(browser_dir())
        .envs(libpq_env(database))
        .env("DATABASE_URL", url_of(database))
        // tidings serves as its own role; the scenarios write as the owner.
        .env("SERVICE_DATABASE_URL", url_of(&as_service(database)))
        .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("BROWSER_ARTIFACTS", artifacts_dir())
        .envs(env.iter().map(|(key, value)| (key, value)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = std::thread::spawn({
        let finished = finished.clone();
        move || {
            let deadline = Instant::now() + SCENARIO_DEADLINE;
            while !finished.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !finished.load(Ordering::SeqCst) {
                end_group(group);
            }
        }
    });
    let output = child.wait_with_output().expect("wait for node");
    finished.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    end_group(group);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn end_group(group: nix::unistd::Pid) {
    use nix::sys::signal::{killpg, Signal};
    if killpg(group, Signal::SIGTERM).is_ok() {
        std::thread::sleep(Duration::from_secs(3));
        let _ = killpg(group, Signal::SIGKILL);
    }
}
