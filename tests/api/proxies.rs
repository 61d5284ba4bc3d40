//! Behind the reverse proxies docs/deployment.md configures, run as the
//! guide shows them (see `helpers::proxies`): real nginx and Caddy pass
//! streams and requests; while tidings is down a stream request gets a
//! short `200 text/event-stream` that tells the client to retry, and a
//! client that follows the SSE rules (a non-200 ends it for good) keeps
//! its stream across a restart with every row once; and the connection
//! arithmetic the guide gives is what the processes hold. The browser's
//! own `EventSource` through nginx is in `browser`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::app::spawn_app;
use crate::helpers::binary::Binary;
use crate::helpers::checks::header;
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::components::{free_port, open_files};
use crate::helpers::proxies::{snippet, Proxy, NGINX_TOP};
use crate::helpers::sse::SseClient;
use crate::helpers::SECRET;

/// Both proxies in front of tidings on `port`, with the guide's files
/// (nginx with the guide's top-level settings too); those not installed
/// are left out (or fail the test, under CI).
fn proxies(port: u16) -> Vec<(&'static str, Proxy)> {
    let mut proxies = Vec::new();
    if let Some(nginx) = Proxy::nginx(port, &snippet(NGINX_TOP)) {
        proxies.push(("nginx", nginx));
    }
    if let Some(caddy) = Proxy::caddy(port) {
        proxies.push(("caddy", caddy));
    }
    proxies
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port")
}

fn token(recipient: &str) -> String {
    tidings::http::auth::Keys::new(SECRET.as_bytes())
        .issue(recipient, &[], Duration::from_secs(3600))
        .expect("token")
}

#[tokio::test]
async fn streams_and_requests_pass_through_the_guides_nginx_and_caddy_unbuffered() {
    let app = spawn_app().await;
    for (name, proxy) in proxies(port_of(&app.address)) {
        let recipient = format!("via-{name}");
        let response = app
            .client
            .get(format!("{}/v1/stream", proxy.url))
            .bearer_auth(token(&recipient))
            .send()
            .await
            .expect("stream through the proxy");
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let mut stream = SseClient::new(response);

        for n in 1..=3 {
            let inserted = Instant::now();
            app.insert(&recipient, "k", json!({"n": n})).await;
            let event = stream.next_within(Duration::from_secs(5)).await;
            let event = event.unwrap_or_else(|e| panic!("{name}: event {n}: {e}"));
            assert_eq!(event.json()["payload"]["n"], n, "{name}");
            // Buffered, it would wait for more bytes or for the end.
            assert!(
                inserted.elapsed() < Duration::from_secs(1),
                "{name} held event {n} for {:?}",
                inserted.elapsed()
            );
        }
        let inbox = app
            .client
            .get(format!("{}/v1/notifications", proxy.url))
            .bearer_auth(token(&recipient))
            .send()
            .await
            .expect("inbox through the proxy");
        assert_eq!(inbox.status(), 200, "{name}");
    }
}

#[tokio::test]
async fn while_tidings_is_down_a_stream_request_gets_a_short_200_stream_saying_retry() {
    // Nothing listens on the upstream port: tidings is down.
    let down = free_port();
    for (name, proxy) in proxies(down) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let response = client
            .get(format!(
                "{}/v1/stream?access_token={}",
                proxy.url,
                token("x")
            ))
            .header("Last-Event-ID", "41")
            .send()
            .await
            .expect("stream request");

        assert_eq!(
            response.status(),
            200,
            "{name}: EventSource stops on anything else"
        );
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        assert_eq!(header(&response, "cache-control"), "no-store");
        let body = response.text().await.expect("a body that ends");
        assert_eq!(body, "retry: 2000\n\n", "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: answered at once"
        );
        // Anything else keeps telling the truth.
        let inbox = client
            .get(format!("{}/v1/notifications", proxy.url))
            .bearer_auth(token("x"))
            .send()
            .await
            .expect("inbox request");
        assert_eq!(inbox.status(), 502, "{name}");
    }
}

/// A client that does what the SSE rules say a browser does: reconnects
/// after the last `retry:` with `Last-Event-ID`, for as long as it gets
/// 200 - and stops for good, as `EventSource` does, on anything else.
struct EventSourceLike {
    url: String,
    token: String,
    last: i64,
    seqs: Vec<i64>,
    /// Answers that were 200 with no event (the proxy's retry answer, or
    /// a stream that tidings ended).
    empty_answers: u32,
}

impl EventSourceLike {
    /// Reads until it has `count` events or `deadline` passes.
    async fn read_until(&mut self, count: usize, deadline: Instant) -> Result<(), String> {
        let client = reqwest::Client::new();
        let mut retry = Duration::from_millis(2000);
        while self.seqs.len() < count && Instant::now() < deadline {
            let response = client
                .get(format!(
                    "{}/v1/stream?access_token={}",
                    self.url, self.token
                ))
                .header("Last-Event-ID", self.last.to_string())
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(error) => return Err(format!("a network error ends EventSource: {error}")),
            };
            if response.status() != 200 {
                return Err(format!(
                    "{}: EventSource gives up for good",
                    response.status()
                ));
            }
            let mut stream = SseClient::new(response);
            let before = self.seqs.len();
            while self.seqs.len() < count {
                match stream.next_within(Duration::from_secs(3)).await {
                    Ok(event) => {
                        self.last = event.seq();
                        self.seqs.push(self.last);
                    }
                    Err(_) => break, // ended, broke or went quiet: reconnect
                }
            }
            if let Some(ms) = stream.retry() {
                retry = Duration::from_millis(ms);
            }
            if self.seqs.len() == before {
                self.empty_answers += 1;
            }
            tokio::time::sleep(retry).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_client_following_the_sse_rules_keeps_its_stream_through_a_restart_behind_either_proxy() {
    let database = fresh_database().await.expect("database");
    let db = sqlx::PgPool::connect_with(database.clone())
        .await
        .expect("pool");
    let port = free_port();
    let env = [
        ("DATABASE_URL", url_of(&database)),
        ("TIDINGS_LISTEN", format!("127.0.0.1:{port}")),
        ("TIDINGS_RETRY", "500ms".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Binary::serve(&env).expect("start");
    server.wait_until_ready().await.expect("ready");
    let insert = |recipient: String, n: i64| {
        let db = db.clone();
        async move {
            sqlx::query(
                "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, 'k', $2)",
            )
            .bind(recipient)
            .bind(json!({"n": n}))
            .execute(&db)
            .await
            .expect("insert");
        }
    };

    for (name, proxy) in proxies(port) {
        let recipient = format!("restart-{name}");
        let mut client = EventSourceLike {
            url: proxy.url.clone(),
            token: token(&recipient),
            last: 0,
            seqs: Vec::new(),
            empty_answers: 0,
        };
        insert(recipient.clone(), 1).await;
        let soon = Instant::now() + Duration::from_secs(10);
        client
            .read_until(1, soon)
            .await
            .expect("before the restart");

        // A restart: tidings stops, rows arrive meanwhile, tidings starts.
        server.terminate().expect("SIGTERM");
        for n in 2..=4 {
            insert(recipient.clone(), n).await;
        }
        let reading = tokio::spawn(async move {
            let outcome = client
                .read_until(5, Instant::now() + Duration::from_secs(30))
                .await;
            (client, outcome)
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        server = Binary::serve(&env).expect("start again");
        insert(recipient.clone(), 5).await;
        let (client, outcome) = reading.await.expect("join");

        assert_eq!(outcome, Ok(()), "{name}:\n{}", proxy.log());
        assert_eq!(
            client.seqs,
            vec![1, 2, 3, 4, 5],
            "{name}: each once, in order"
        );
        assert!(
            client.empty_answers >= 1,
            "{name}: the proxy answered while tidings was down"
        );
    }
}

/// Streams opened through `proxy` for one recipient each; kept open.
async fn open_streams(proxy: &Proxy, count: usize, prefix: &str) -> Vec<Option<SseClient>> {
    let client = reqwest::Client::new();
    let opening = (0..count).map(|n| {
        let client = client.clone();
        let url = format!("{}/v1/stream", proxy.url);
        let token = token(&format!("{prefix}-{n}"));
        let open = async move {
            let response = client.get(url).bearer_auth(token).send().await.ok()?;
            if response.status() != 200 {
                return None;
            }
            let mut stream = SseClient::new(response);
            // Open for real: it answered, and stays open.
            stream
                .quiet_for(Duration::from_millis(300))
                .await
                .then_some(stream)
        };
        // A proxy out of connections may not even accept: no answer at all.
        async move {
            tokio::time::timeout(Duration::from_secs(5), open)
                .await
                .ok()
                .flatten()
        }
    });
    futures_util::future::join_all(opening).await
}

#[tokio::test]
async fn each_stream_holds_two_file_descriptors_in_the_proxy_and_one_in_tidings() {
    const STREAMS: usize = 200;
    let database = fresh_database().await.expect("database");
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("start");
    server.wait_until_ready().await.expect("ready");
    let top = "worker_processes 1;\nevents {\n    worker_connections 1024;\n}";
    let candidates = [
        ("nginx", Proxy::nginx(port_of(&server.address), top)),
        ("caddy", Proxy::caddy(port_of(&server.address))),
    ];
    for (name, proxy) in candidates {
        let Some(proxy) = proxy else { continue };
        // Once before measuring: the database pool and the proxy's idle
        // upstream connections grow to their size with the first streams.
        drop(open_streams(&proxy, STREAMS, name).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (proxy_before, tidings_before) = (
            open_files(proxy.process.pid()),
            open_files(server.child.id()),
        );

        let streams = open_streams(&proxy, STREAMS, name).await;

        let open = streams.iter().flatten().count();
        let per_stream = |before: usize, after: usize| (after - before) as f64 / open as f64;
        let in_proxy = per_stream(proxy_before, open_files(proxy.process.pid()));
        let in_tidings = per_stream(tidings_before, open_files(server.child.id()));
        println!("{name}: {open} streams: {in_proxy:.2} descriptors each in {name}, {in_tidings:.2} in tidings");
        assert_eq!(open, STREAMS, "{name}");
        assert!(
            (1.9..=2.1).contains(&in_proxy),
            "{name}: {in_proxy} per stream"
        );
        assert!(
            (0.95..=1.05).contains(&in_tidings),
            "tidings: {in_tidings} per stream"
        );
        drop(streams);
    }
}

#[tokio::test]
async fn nginx_counts_two_connections_per_stream_against_worker_connections_and_drops_the_rest() {
    let database = fresh_database().await.expect("database");
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("start");
    server.wait_until_ready().await.expect("ready");
    // One worker with 64 connections: its listening socket takes one.
    let top = "worker_processes 1;\nevents {\n    worker_connections 64;\n}";
    let Some(nginx) = Proxy::nginx(port_of(&server.address), top) else {
        return;
    };

    let streams = open_streams(&nginx, 40, "capped").await;

    let open = streams.iter().flatten().count();
    println!("nginx with worker_connections 64: {open} of 40 streams open");
    assert!(
        (28..=32).contains(&open),
        "{open} streams: (64 - 1) / 2 expected"
    );
    assert!(
        nginx.log().contains("worker_connections are not enough"),
        "said in the error log only:\n{}",
        nginx.log()
    );
}
