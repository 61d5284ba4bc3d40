//! The hash chain's verifier: walks each recipient's chain (invariant I8 in
//! `migrations/0001_schema.sql`) and reports the first broken link. Backs
//! `GET /v1/audit/verify` and `tidings verify`.
//!
//! It trusts nothing in the database but its rows: it rebuilds each event's
//! canonical encoding with built-in functions only - not the schema's
//! `tidings.canonical`, nor `tidings.notification_text` and
//! `tidings.read_text`, through which the triggers hash, any of which a
//! superuser could redefine - and computes SHA-256 itself. (The triggers
//! build the text with `json_build_array`, this with
//! `jsonb_build_array(...)::text`: the same bytes, as docs/schema.md
//! explains, so every verified chain also checks that.) It must never
//! write.

use axum::extract::State;
use axum::Json;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::http::auth::Auditor;
use crate::http::error::{problems, AppError, AppQuery};
use crate::http::state::AppState;

/// The outcome of a walk.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub ok: bool,
    pub recipients: u64,
    pub events: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BrokenLink {
    pub recipient: String,
    pub seq: i64,
    pub problem: String,
    /// What the chain says should be there (a hash, or a seq).
    pub expected: String,
    /// What is there.
    pub found: String,
}

/// The newest link of a recipient's chain: worth keeping elsewhere, since a
/// chain rewritten from some event to its end is consistent again but ends
/// in a different head.
#[derive(Debug, Serialize)]
pub struct Head {
    pub recipient: String,
    pub seq: i64,
    pub hash: String,
}

/// One event as the verifier sees it, with its recipient's counter row.
struct Link {
    recipient: String,
    seq: i64,
    hash: Vec<u8>,
    canonical: Vec<u8>,
    /// How many notifications this event is (1 or 0), and how many it marks
    /// read: the counter's running totals must equal their sums.
    notifications: i64,
    marked: i64,
    /// The counter row (invariant C1), all NULL if there is none.
    counter_seq: Option<i64>,
    counter_hash: Option<Vec<u8>>,
    counted_notifications: Option<i64>,
    counted_read: Option<i64>,
}

/// A recipient's counter row: what the next append continues from, so it
/// must agree with the chain's end.
struct Counter {
    last_seq: i64,
    last_hash: Vec<u8>,
    totals: (i64, i64),
}

impl Link {
    fn counter(&self) -> Option<Counter> {
        Some(Counter {
            last_seq: self.counter_seq?,
            last_hash: self.counter_hash.clone()?,
            totals: (self.counted_notifications?, self.counted_read?),
        })
    }
}

/// Where the walk is within the current recipient's chain.
#[derive(Default)]
struct Walk {
    /// The recipient whose chain is being walked; `None` before the first.
    recipient: Option<String>,
    /// The `seq` the next link must have: the chain has no gaps.
    expected_seq: i64,
    /// The hash of the link before the next one (empty at a chain's
    /// start): the next link's hash must be SHA-256 of it and its encoding.
    previous_hash: Vec<u8>,
    /// The recipient's counter row, to compare with the chain's end.
    counter: Option<Counter>,
    /// Notifications and read marks in the chain so far.
    totals: (i64, i64),
    /// The first broken link, once found; the walk stops there.
    verdict: Option<BrokenLink>,
    /// Recipients and events walked so far, across all chains.
    recipients: u64,
    events: u64,
}

impl Walk {
    /// Checks one link; records the first break and returns false at it.
    fn step(&mut self, link: Link) -> bool {
        if self.recipient.as_deref() != Some(link.recipient.as_str()) {
            if !self.finish_recipient() {
                return false;
            }
            self.recipient = Some(link.recipient.clone());
            self.expected_seq = 1;
            self.previous_hash.clear();
            self.counter = link.counter();
            self.totals = (0, 0);
            self.recipients += 1;
        }
        self.events += 1;
        self.totals.0 += link.notifications;
        self.totals.1 += link.marked;
        if link.seq != self.expected_seq {
            let problem = if link.seq > self.expected_seq {
                "event missing"
            } else {
                "event out of order"
            };
            return self.broken(
                &link.recipient,
                self.expected_seq,
                problem,
                self.expected_seq.to_string(),
                link.seq.to_string(),
            );
        }
        let computed = Sha256::new()
            .chain_update(&self.previous_hash)
            .chain_update(&link.canonical)
            .finalize();
        if computed[..] != link.hash[..] {
            return self.broken(
                &link.recipient,
                link.seq,
                "hash mismatch: the event or its predecessor was changed",
                hex::encode(computed),
                hex::encode(&link.hash),
            );
        }
        self.previous_hash = link.hash;
        self.expected_seq += 1;
        true
    }

    /// At the end of a recipient's chain: the counter row must continue
    /// exactly from here (C1), or the next append would break the chain.
    fn finish_recipient(&mut self) -> bool {
        let Some(recipient) = self.recipient.clone() else {
            return true;
        };
        match self.counter_disagreement(self.expected_seq - 1) {
            Some((seq, problem, expected, found)) => {
                self.broken(&recipient, seq, problem, expected, found)
            }
            None => true,
        }
    }

    /// How the counter row disagrees with a chain that ends at `last`, if
    /// it does: the seq to report, the problem, what the chain expects and
    /// what the counter says. Same seq, same hash, and the totals the chain
    /// adds up to.
    fn counter_disagreement(&mut self, last: i64) -> Option<(i64, &'static str, String, String)> {
        let Some(counter) = self.counter.take() else {
            let problem = "no counter row for a recipient with events";
            return Some((last, problem, last.to_string(), "none".into()));
        };
        let show = |(n, r): (i64, i64)| format!("{n}, {r}");
        let (seq, problem, expected, found) = if counter.last_seq > last {
            // The counter counts events the chain no longer has.
            let problem = "events missing at the end of the chain";
            (
                last + 1,
                problem,
                counter.last_seq.to_string(),
                last.to_string(),
            )
        } else if counter.last_seq < last {
            let problem = "counter behind the chain";
            (
                last,
                problem,
                last.to_string(),
                counter.last_seq.to_string(),
            )
        } else if counter.last_hash != self.previous_hash {
            let (chain, counted) = (
                hex::encode(&self.previous_hash),
                hex::encode(&counter.last_hash),
            );
            (last, "counter hash is not the chain's head", chain, counted)
        } else if counter.totals != self.totals {
            let problem = "counter totals disagree with the chain (notifications, read)";
            (last, problem, show(self.totals), show(counter.totals))
        } else {
            return None;
        };
        Some((seq, problem, expected, found))
    }

    fn broken(
        &mut self,
        recipient: &str,
        seq: i64,
        problem: &str,
        expected: String,
        found: String,
    ) -> bool {
        self.verdict = Some(BrokenLink {
            recipient: recipient.to_owned(),
            seq,
            problem: problem.to_owned(),
            expected,
            found,
        });
        false
    }
}

/// Walks the chain of `recipient`, or of every recipient, in one streamed
/// query: memory stays constant however long the history is.
pub async fn verify(pool: &PgPool, recipient: Option<&str>) -> Result<Verdict, sqlx::Error> {
    let mut links = sqlx::query_as!(
        Link,
        r#"
        SELECT e.recipient AS "recipient!", e.seq AS "seq!", e.hash AS "hash!", e.canonical AS "canonical!",
               e.notifications AS "notifications!", e.marked AS "marked!",
               c.last_seq AS "counter_seq?", c.last_hash AS "counter_hash?",
               c.notifications AS "counted_notifications?", c.read AS "counted_read?"
          FROM (
            SELECT n.recipient, n.seq, n.hash,
                   convert_to(jsonb_build_array('notification', n.recipient, n.seq, n.id, n.kind, n.payload,
                       n.idempotency_key, (extract(epoch FROM n.created_at) * 1000000)::bigint)::text, 'UTF8') AS canonical,
                   1::int8 AS notifications, 0::int8 AS marked
              FROM tidings.notifications n WHERE $1::text IS NULL OR n.recipient = $1
            UNION ALL
            SELECT r.recipient, r.seq, r.hash,
                   convert_to(jsonb_build_array('read', r.recipient, r.seq, r.id, to_jsonb(r.notification_ids),
                       (extract(epoch FROM r.created_at) * 1000000)::bigint)::text, 'UTF8'),
                   0::int8, cardinality(r.notification_ids)::int8
              FROM tidings.reads r WHERE $1::text IS NULL OR r.recipient = $1
          ) e
          LEFT JOIN tidings.recipients c ON c.recipient = e.recipient
         ORDER BY e.recipient, e.seq
        "#,
        recipient
    )
    .fetch(pool);
    let mut walk = Walk::default();
    while let Some(row) = links.try_next().await? {
        if !walk.step(row) {
            break;
        }
    }
    if walk.verdict.is_none() {
        walk.finish_recipient();
    }
    Ok(Verdict {
        ok: walk.verdict.is_none(),
        recipients: walk.recipients,
        events: walk.events,
        broken: walk.verdict,
    })
}

/// Every recipient's newest link, for safekeeping outside the database.
pub async fn heads(pool: &PgPool, recipient: Option<&str>) -> Result<Vec<Head>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT DISTINCT ON (e.recipient) e.recipient AS "recipient!", e.seq AS "seq!", e.hash AS "hash!"
          FROM (SELECT recipient, seq, hash FROM tidings.notifications
                UNION ALL
                SELECT recipient, seq, hash FROM tidings.reads) e
         WHERE $1::text IS NULL OR e.recipient = $1
         ORDER BY e.recipient, e.seq DESC
        "#,
        recipient
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Head {
            recipient: row.recipient,
            seq: row.seq,
            hash: hex::encode(row.hash),
        })
        .collect())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct VerifyQuery {
    /// Walk only this recipient's chain; absent: every chain.
    recipient: Option<String>,
}

/// Walks the per-recipient hash chains and names the first broken link.
/// A broken chain is still a 200, with `"ok": false`.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    params(VerifyQuery),
    responses(
        (status = 200, description = "The verdict", body = Verdict),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 403, response = problems::Forbidden),
        (status = 503, response = problems::Unavailable),
    )
)]
pub(super) async fn verify_handler(
    State(state): State<AppState>,
    _: Auditor,
    AppQuery(query): AppQuery<VerifyQuery>,
) -> Result<Json<Verdict>, AppError> {
    let recipient = query.recipient.as_deref().filter(|r| !r.is_empty());
    Ok(Json(verify(&state.pool, recipient).await?))
}
