//! What must not stop delivery: payloads that print huge (over 128 KiB,
//! refused by the publisher and by the schema, invariant I10), one
//! recipient whose rows cannot be read, an exhausted request pool.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tidings::config::Role;
use tidings::http::publish::payload::jsonb_text_len;
use tidings::http::publish::MAX_PAYLOAD_TEXT;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::checks::assert_problem;
use crate::helpers::cluster::{fresh_database, wait_for_sessions_waiting_for_a_lock};

/// `POST /v1/notifications` with `body` as a publisher.
async fn publish(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/notifications", app.address))
        .bearer_auth(app.token_with("service", &[Role::Publisher]))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post")
}

/// A payload `[1eN]`: `N + 3` bytes as PostgreSQL prints it.
fn printing_as(bytes: usize) -> String {
    format!("[1e{}]", bytes - 3)
}

async fn stored(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(db)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_small_request_whose_payload_prints_huge_is_a_400_and_stores_nothing() {
    let app = spawn_app().await;
    // ~9 KB of JSON, ~16 KB in jsonb, 131 MB as text.
    let payload = format!("[{}1e131071]", "1e131071,".repeat(999));
    let body = format!(r#"{{"recipient": "alice", "kind": "k", "payload": {payload}}}"#);

    let response = publish(&app, body).await;

    let problem = assert_problem(response, 400).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    // The publisher's words: the database was never asked.
    let publisher = "notification 0: its payload prints as 131074000 bytes";
    assert!(detail.starts_with(publisher), "{detail}");
    assert_eq!(stored(&app.db).await, 0);
}

#[tokio::test]
async fn a_payload_may_print_as_128_kib_and_not_one_byte_more() {
    let app = spawn_app().await;
    let at_limit = printing_as(MAX_PAYLOAD_TEXT);
    let over = printing_as(MAX_PAYLOAD_TEXT + 1);

    let accepted = publish(
        &app,
        format!(r#"{{"recipient": "alice", "kind": "k", "payload": {at_limit}}}"#),
    )
    .await;
    let refused = publish(
        &app,
        format!(r#"[{{"recipient": "alice", "kind": "k"}}, {{"recipient": "bob", "kind": "k", "payload": {over}}}]"#),
    )
    .await;

    assert_eq!(accepted.status(), 201);
    let problem = assert_problem(refused, 400).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("notification 1: "), "{detail}");
    assert!(detail.contains("131073 bytes"), "{detail}");
    assert_eq!(stored(&app.db).await, 1, "the batch stored nothing");
}

#[tokio::test]
async fn an_sql_insert_of_a_payload_printing_over_128_kib_fails_with_23514() {
    let app = spawn_app().await;
    let insert = |payload: String| {
        sqlx::query("INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', 'k', $1::jsonb)")
            .bind(payload)
            .execute(&app.db)
    };

    let accepted = insert(printing_as(MAX_PAYLOAD_TEXT)).await;
    let refused = insert(printing_as(MAX_PAYLOAD_TEXT + 1)).await;

    assert!(accepted.is_ok(), "{accepted:?}");
    let Err(sqlx::Error::Database(refused)) = refused else {
        panic!("not refused by the database: {refused:?}");
    };
    assert_eq!(refused.code().as_deref(), Some("23514"));
    assert_eq!(refused.constraint(), Some("notifications_payload_size"));
    let position: i64 =
        sqlx::query_scalar("SELECT last_seq FROM tidings.recipients WHERE recipient = 'alice'")
            .fetch_one(&app.db)
            .await
            .expect("position");
    assert_eq!(position, 1, "the refused row took no seq");
}

#[tokio::test]
async fn numbers_postgresql_cannot_hold_are_a_400_not_a_500() {
    let app = spawn_app().await;
    let numbers = [
        // Too large to print, refused by the publisher (the last two with
        // exponents beyond 64 bits)...
        "1e999999",
        "1e99999999999999999999999",
        "-1.5E-99999999999999999999",
        // ...and by the database itself (22003: numeric's scale ends at
        // 16383 digits).
        "1e-20000",
        "-0e-16384",
    ];
    for number in numbers {
        let body = format!(r#"{{"recipient": "alice", "kind": "k", "payload": [{number}]}}"#);

        let response = publish(&app, body).await;

        assert_problem(response, 400).await;
    }
    assert_eq!(stored(&app.db).await, 0);
}

/// A small deterministic generator of JSON texts that jsonb prints
/// differently from how they were written.
struct Texts(u64);

impl Texts {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next(from.len() as u64) as usize]
    }

    fn space(&mut self) -> &'static str {
        self.pick(&["", "", " ", "\n\t ", "  "])
    }

    fn value(&mut self, depth: u32) -> String {
        match self.next(if depth > 3 { 3 } else { 5 }) {
            0 => self.number(),
            1 => self.string(),
            2 => self.pick(&["true", "false", "null"]).to_owned(),
            3 => self.array(depth + 1),
            _ => self.object(depth + 1),
        }
    }

    fn number(&mut self) -> String {
        let sign = self.pick(&["", "", "-"]);
        let whole = self.pick(&["0", "1", "7", "10", "120", "98765432109876543210"]);
        let fraction = self.pick(&["", "", ".0", ".5", ".000", ".0012", ".1500"]);
        let exponent = match self.next(4) {
            0 | 1 => String::new(),
            _ => format!(
                "{}{}{}",
                self.pick(&["e", "E"]),
                self.pick(&["", "+", "-"]),
                self.pick(&["0", "1", "3", "007", "25", "400"])
            ),
        };
        format!("{sign}{whole}{fraction}{exponent}")
    }

    fn string(&mut self) -> String {
        let pieces = [
            "a",
            "é",
            "😀",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\n",
            "\\r",
            "\\t",
            "\\u0001",
            "\\u001f",
            "\\u007f",
            "\\u00e9",
            "\\u20ac",
            "\\ud83d\\ude00",
            "\\u0061",
            "\u{7f}",
        ];
        let n = self.next(5);
        let text: String = (0..n).map(|_| self.pick(&pieces)).collect();
        format!("\"{text}\"")
    }

    fn array(&mut self, depth: u32) -> String {
        let items: Vec<String> = (0..self.next(4))
            .map(|_| format!("{}{}{}", self.space(), self.value(depth), self.space()))
            .collect();
        format!("[{}]", items.join(","))
    }

    fn object(&mut self, depth: u32) -> String {
        // Few keys, some spelled two ways: duplicates are common.
        let keys = [
            "\"a\"",
            "\"\\u0061\"",
            "\"b\"",
            "\"é\"",
            "\"\\u00e9\"",
            "\"\"",
        ];
        let members: Vec<String> = (0..self.next(5))
            .map(|_| {
                let key = self.pick(&keys);
                let (before, after) = (self.space(), self.space());
                format!("{before}{key}{after}:{}{}", self.space(), self.value(depth))
            })
            .collect();
        format!("{{{}}}", members.join(","))
    }
}

#[tokio::test]
async fn the_printed_size_is_computed_as_postgresql_prints() {
    let db = PgPool::connect_with(fresh_database().await.expect("database"))
        .await
        .expect("pool");
    let mut texts: Vec<String> = [
        "{}",
        "[]",
        "0",
        "-0",
        "-0.0",
        "0e-5",
        "1e3",
        "1E+3",
        "1.50",
        "12.5e-1",
        "0.05e1",
        "-1.5e-3",
        "123.456e1",
        "0.000e2",
        "100e-2",
        "98765432109876543210e-25",
        r#"{"a": 1, "a": [2, 3], "\u0061": "x", "b": {"c": null}}"#,
        r#" [ "\u00e9\/\u007f\u0001\ud83d\ude00" , true ,false, null ] "#,
        "[1e131071]",
    ]
    .iter()
    .map(|text| text.to_string())
    .collect();
    let mut generator = Texts(0x2545_F491_4F6C_DD1D);
    texts.extend((0..3000).map(|_| generator.value(0)));

    let printed: Vec<i64> = sqlx::query_scalar(
        "SELECT octet_length(t::jsonb::text)::int8 FROM unnest($1::text[]) WITH ORDINALITY AS x (t, n) ORDER BY n",
    )
    .bind(&texts)
    .fetch_all(&db)
    .await
    .expect("printed sizes");

    let reshaped = texts
        .iter()
        .zip(&printed)
        .filter(|(t, p)| t.len() as i64 != **p);
    assert!(
        reshaped.count() > texts.len() / 2,
        "most print otherwise than written"
    );
    for (text, printed) in texts.iter().zip(printed) {
        assert_eq!(jsonb_text_len(text) as i64, printed, "{text}");
    }
}

/// Makes every read of `recipient`'s events fail as a damaged page would
/// (SQLSTATE XX001) - the hub's fetches, replays, the inbox - and nobody
/// else's: the events view gains a filter that raises for recipients in
/// `public.damaged`. Test-only; [`repair`] undoes it.
pub(crate) async fn damage(db: &PgPool, recipient: &str) {
    sqlx::raw_sql(
        r#"
        CREATE TABLE IF NOT EXISTS public.damaged (recipient text PRIMARY KEY);
        GRANT SELECT ON public.damaged TO tidings_service;
        CREATE OR REPLACE FUNCTION public.readable(who text) RETURNS boolean
        LANGUAGE plpgsql STABLE AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM public.damaged d WHERE d.recipient = who) THEN
                RAISE EXCEPTION 'invalid page in block 7 of relation base/1/2'
                    USING ERRCODE = 'data_corrupted';
            END IF;
            RETURN true;
        END;
        $$;
        CREATE OR REPLACE VIEW tidings.events AS
            SELECT recipient, seq, 'notification'::text AS type, id, kind, payload,
                   NULL::bigint[] AS notification_ids, created_at
              FROM tidings.notifications WHERE public.readable(recipient)
            UNION ALL
            SELECT recipient, seq, 'read'::text AS type, id, NULL::text, NULL::jsonb,
                   notification_ids, created_at
              FROM tidings.reads WHERE public.readable(recipient);
        "#,
    )
    .execute(db)
    .await
    .expect("damage the view");
    sqlx::query("INSERT INTO public.damaged VALUES ($1)")
        .bind(recipient)
        .execute(db)
        .await
        .expect("damage a recipient");
}

async fn repair(db: &PgPool, recipient: &str) {
    sqlx::query("DELETE FROM public.damaged WHERE recipient = $1")
        .bind(recipient)
        .execute(db)
        .await
        .expect("repair");
}

#[tokio::test]
async fn a_recipient_whose_rows_cannot_be_read_does_not_stop_anyone_elses_live_events() {
    let app = spawn_app().await;
    let (mut alice, mut mallory) = (
        app.stream("alice", None).await,
        app.stream("mallory", None).await,
    );
    // Both streams live (past their first read of the table).
    app.insert("alice", "hello", json!({})).await;
    app.insert("mallory", "hello", json!({})).await;
    alice.next().await;
    mallory.next().await;
    damage(&app.db, "mallory").await;

    app.insert("mallory", "unreadable", json!({})).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // its fetch fails
    app.insert("alice", "first", json!({})).await;
    let first = alice.next_within(Duration::from_secs(5)).await;
    app.insert("alice", "second", json!({})).await;
    let second = alice.next_within(Duration::from_secs(2)).await;
    repair(&app.db, "mallory").await;
    let late = mallory.next_within(Duration::from_secs(10)).await;

    assert_eq!(first.expect("alice's event").json()["kind"], "first");
    assert_eq!(second.expect("alice's next event").json()["kind"], "second");
    assert_eq!(
        late.expect("mallory's event, once readable").json()["kind"],
        "unreadable"
    );
}

/// Occupies every connection of the request pool (of two): publishes to
/// `alice` that wait for her counter row, which the returned transaction
/// holds. Returns once both wait.
async fn exhaust_the_pool(
    app: &TestApp,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<tokio::task::JoinHandle<u16>>,
) {
    app.insert("alice", "first", json!({})).await;
    let mut holder = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'held')")
        .execute(&mut *holder)
        .await
        .expect("lock alice's counter row");
    let waiting = (0..2)
        .map(|_| {
            let request = app
                .client
                .post(format!("{}/v1/notifications", app.address))
                .bearer_auth(app.token_with("service", &[Role::Publisher]))
                .json(&json!({"recipient": "alice", "kind": "blocked"}));
            tokio::spawn(async move { request.send().await.map_or(0, |r| r.status().as_u16()) })
        })
        .collect();
    wait_for_sessions_waiting_for_a_lock(
        &app.db,
        2,
        "the publishes did not both wait for the lock",
    )
    .await;
    (holder, waiting)
}

async fn listener_reconnects(app: &TestApp) -> String {
    let text = app.metrics().await;
    let line = text
        .lines()
        .find(|line| line.starts_with("tidings_listener_reconnects_total "));
    line.unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_exhausted_request_pool_neither_delays_hints_nor_rebuilds_the_listen_session() {
    // One connection for the hub, two for requests; a check every 200 ms,
    // each of which now waits for a connection (up to 5 s).
    let app = spawn_app_with(|s| {
        s.pool_size = 3;
        s.listener_check = Duration::from_millis(200);
    })
    .await;
    let mut bob = app.stream("bob", None).await;
    let (holder, waiting) = exhaust_the_pool(&app).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    app.insert("bob", "meanwhile", json!({})).await;
    let meanwhile = bob.next_within(Duration::from_secs(4)).await;
    // Past the checks' 5 s wait for a connection, and the tick after it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    holder.rollback().await.expect("release alice");
    for publish in waiting {
        assert_eq!(publish.await.expect("publish"), 201);
    }

    assert_eq!(
        meanwhile.expect("bob's event, hinted").json()["kind"],
        "meanwhile"
    );
    assert_eq!(
        listener_reconnects(&app).await,
        "tidings_listener_reconnects_total 0"
    );
}
