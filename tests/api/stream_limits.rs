//! Limits that shed load instead of failing: `--max-streams` caps the
//! streams one instance serves, below the open-file limit, with a 503 a
//! client or load balancer can route around; and every 429 and 503 says
//! when to come back (`Retry-After`).

use std::time::Duration;

use crate::helpers::app::{spawn_app_with, TestApp};
use crate::helpers::checks::{assert_problem, header};
use crate::helpers::sse::SseClient;

/// `GET /v1/stream` for `recipient`, however it is answered.
async fn open(app: &TestApp, recipient: &str) -> reqwest::Response {
    app.get("/v1/stream", recipient)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("stream request")
}

/// `Retry-After` as whole seconds; fails the test if absent or not that.
fn retry_after(response: &reqwest::Response) -> u64 {
    let value = header(response, "retry-after");
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is {value:?}, not delay-seconds"))
}

#[tokio::test]
async fn one_stream_beyond_max_streams_is_a_503_with_retry_after_until_one_closes() {
    let app = spawn_app_with(|s| s.streams.max_streams = 3).await;
    let first = SseClient::new(open(&app, "alice").await);
    let _second = SseClient::new(open(&app, "bob").await);
    let _third = SseClient::new(open(&app, "alice").await);

    let refused = open(&app, "carol").await;

    let delay = retry_after(&refused);
    assert!((1..=60).contains(&delay), "Retry-After: {delay}");
    let problem = assert_problem(refused, 503).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("3 streams"), "{detail}");
    drop(first);
    let mut admitted = false;
    for _ in 0..100 {
        if open(&app, "carol").await.status() == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a freed place can be taken again");
}

#[tokio::test]
async fn a_recipients_429_says_when_to_retry() {
    let app = spawn_app_with(|s| s.streams.max_per_recipient = 1).await;
    let _open = SseClient::new(open(&app, "alice").await);

    let refused = open(&app, "alice").await;

    let delay = retry_after(&refused);
    assert!((1..=300).contains(&delay), "Retry-After: {delay}");
    assert_problem(refused, 429).await;
}

#[tokio::test]
async fn an_export_beyond_the_limit_is_a_503_that_says_when_to_retry() {
    // A pool of 2 allows one export; the first waits on a lock the test
    // holds, so it keeps its place while the second asks.
    let app = spawn_app_with(|s| s.pool_size = 2).await;
    let mut lock = app.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tidings.notifications IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let export = || {
        app.client
            .get(format!("{}/v1/audit/events", app.address))
            .bearer_auth(app.token_with("auditor", &[tidings::config::Role::Auditor]))
            .header("Accept", "text/csv")
            .send()
    };
    let waiting = tokio::spawn(export());
    crate::helpers::cluster::wait_for_sessions_waiting_for_a_lock(
        &app.db,
        1,
        "the export never queued",
    )
    .await;

    let refused = export().await.expect("second export");

    let delay = retry_after(&refused);
    assert!((1..=300).contains(&delay), "Retry-After: {delay}");
    assert_problem(refused, 503).await;
    lock.rollback().await.expect("unlock");
    let waiting = waiting.await.expect("join").expect("first export");
    assert_eq!(waiting.status(), 200);
}

#[tokio::test]
async fn max_streams_defaults_below_the_open_file_limit_with_room_for_the_rest() {
    use tidings::delivery::slots::max_streams_for;

    // 1024, the usual soft limit, and a pool of 16: the pool, the LISTEN
    // connection and the process's own files come off first, then a
    // sixteenth of the rest is kept for requests that are not streams.
    let default = max_streams_for(1024, 16);
    assert!((800..1024 - 16 - 1 - 64).contains(&default), "{default}");
    // The capacity BENCHMARKS.md reports: 18,000 streams at 20,000 files.
    assert!(max_streams_for(20_000, 16) >= 18_000);
    // A bigger pool leaves fewer; a tiny limit still serves one stream;
    // an unlimited one sets no limit.
    assert!(max_streams_for(1024, 64) < default);
    assert_eq!(max_streams_for(20, 16), 1);
    assert_eq!(max_streams_for(u64::MAX, 16), 0);
}

#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_to_the_hard_one_at_start() {
    // Arrange: a shell's usual soft limit under a higher hard one.
    let database = crate::helpers::cluster::fresh_database()
        .await
        .expect("database");
    let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        panic!("cannot read the open-file limit");
    };
    assert!(
        hard > 1024,
        "the test needs a hard limit above 1,024 (it is {hard})"
    );

    // Act
    let server = crate::helpers::binary::Binary::serve_through(
        &["prlimit", &format!("--nofile=1024:{hard}"), "--"],
        &[("DATABASE_URL", &crate::helpers::cluster::url_of(&database))],
    )
    .expect("tidings");

    // Assert: the limit it reports, and serves by, is the hard one.
    let line = server
        .lines_within(Duration::from_secs(5), |l| l.contains("open_files"))
        .await;
    let line = line.first().expect("the limit logged");
    let plain = without_colours(line);
    assert!(plain.contains(&format!("open_files={hard}")), "{line}");
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    assert!(open_files.contains(&format!("{hard}  ")), "{open_files}");
    assert!(!open_files.contains(" 1024 "), "{open_files}");
}

/// `line` without its ANSI colour sequences (ESC, `[`, ..., `m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::new();
    let mut in_sequence = false;
    for c in line.chars() {
        match (in_sequence, c) {
            (false, '\u{1b}') => in_sequence = true,
            (false, c) => plain.push(c),
            (true, 'm') => in_sequence = false,
            (true, _) => {}
        }
    }
    plain
}
