//! A browser-like stream client that misbehaves on purpose: it cuts its
//! connection after a random number of bytes (so mid-event as often as
//! between events), then reconnects - to the next tidings instance, as a
//! load balancer without stickiness would - with `Last-Event-ID` set to the
//! last *complete* event it saw, exactly as EventSource does.
//!
//! It speaks HTTP/1.0 on a raw socket so that a cut lands on an exact byte
//! (the body is then the bare event stream, ended by the server's close),
//! and reads the events with the parser the tools and tests share.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_sse::{Event, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One event as received: enough to compare with the table afterwards.
#[derive(Debug, Clone)]
pub struct Received {
    pub seq: i64,
    /// What the row says: the payload's `tag` for a notification, the ids
    /// for a read mark. Compared with the table to catch phantom rows.
    pub fingerprint: String,
}

#[derive(Debug, Default)]
pub struct ClientLog {
    pub recipient: String,
    pub events: Vec<Received>,
    pub connections: u64,
    /// Connections the client itself cut after a random number of bytes.
    pub cuts: u64,
    /// Answers other than 200: each would stop a browser for good.
    pub non_200: Vec<u16>,
    pub resets: u64,
    /// Whether it reached its recipient's final position before the deadline.
    pub caught_up: bool,
}

/// While `None`, clients misbehave; once the final positions are known,
/// they read politely until they have everything, or the deadline passes.
pub type Finish = watch::Receiver<Option<std::sync::Arc<Final>>>;

pub struct Final {
    pub positions: HashMap<String, i64>,
    pub deadline: Instant,
}

impl Final {
    /// Whether a client of `recipient` at `last` should stop reading.
    fn done(&self, recipient: &str, last: i64) -> bool {
        last >= self.positions.get(recipient).copied().unwrap_or(0)
            || Instant::now() > self.deadline
    }
}

pub struct Client {
    pub recipient: String,
    pub token: String,
    pub instances: Vec<String>,
    pub seed: u64,
}

impl Client {
    pub async fn run(self, mut finish: Finish) -> ClientLog {
        let mut log = ClientLog {
            recipient: self.recipient.clone(),
            ..ClientLog::default()
        };
        let mut rng = Rng(self.seed | 1);
        let mut last = 0i64;
        for attempt in 0usize.. {
            let last_phase = finish.borrow_and_update().clone();
            if let Some(end) = &last_phase {
                if end.done(&self.recipient, last) {
                    log.caught_up =
                        last >= end.positions.get(&self.recipient).copied().unwrap_or(0);
                    break;
                }
            }
            let address = &self.instances[attempt % self.instances.len()];
            let cut_after = last_phase.is_none().then(|| rng.between(20, 6_000));
            let outcome = self
                .connect_once(address, last, cut_after, &mut log, &finish)
                .await;
            if let Some(new_last) = outcome {
                last = new_last;
            }
            tokio::time::sleep(Duration::from_millis(rng.between(0, 30))).await;
        }
        log
    }

    /// One connection; returns the last complete event's seq, if it got one.
    async fn connect_once(
        &self,
        address: &str,
        mut last: i64,
        cut_after: Option<u64>,
        log: &mut ClientLog,
        finish: &Finish,
    ) -> Option<i64> {
        let mut socket = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        let request = format!(
            "GET /v1/stream?access_token={} HTTP/1.0\r\nHost: {address}\r\nLast-Event-ID: {last}\r\n\r\n",
            self.token
        );
        socket.write_all(request.as_bytes()).await.ok()?;
        log.connections += 1;
        let mut parser = Parser::default();
        let mut events = Vec::new();
        let mut head: Option<Vec<u8>> = Some(Vec::new());
        let mut budget = cut_after;
        let mut buffer = vec![0u8; 8192];
        loop {
            let read =
                tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buffer)).await;
            let n = match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(last), // server closed
                Ok(Ok(n)) => n,
                Err(_) => {
                    // Quiet: stop if this was the final catch-up and it is done.
                    let done = finish
                        .borrow()
                        .as_ref()
                        .is_some_and(|end| end.done(&self.recipient, last));
                    if done {
                        return Some(last);
                    }
                    continue;
                }
            };
            let mut bytes = &buffer[..n];
            if let Some(left) = budget.as_mut() {
                let take = (*left).min(bytes.len() as u64) as usize;
                bytes = &bytes[..take];
                *left -= take as u64;
            }
            if let Some(collected) = head.as_mut() {
                collected.extend_from_slice(bytes);
                let Some(end) = find(collected, b"\r\n\r\n") else {
                    if budget == Some(0) {
                        log.cuts += 1;
                        return Some(last);
                    }
                    continue;
                };
                let status = status_of(&collected[..end]);
                if status != 200 {
                    log.non_200.push(status);
                    return None;
                }
                let body = collected[end + 4..].to_vec();
                head = None;
                parser.feed(&body, &mut events);
            } else {
                parser.feed(bytes, &mut events);
            }
            for event in events.drain(..) {
                if let Some(received) = interpret(event, log) {
                    last = received.seq;
                    log.events.push(received);
                }
            }
            if budget == Some(0) {
                log.cuts += 1;
                return Some(last);
            }
        }
    }
}

fn interpret(event: Event, log: &mut ClientLog) -> Option<Received> {
    let seq = event.seq()?;
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let fingerprint = match event.event.as_str() {
        "notification" => data["payload"]["tag"].as_str().unwrap_or("?").to_owned(),
        "read" => format!("read:{}", data["ids"]),
        "reset" => {
            log.resets += 1;
            return None;
        }
        other => format!("unexpected event {other}"),
    };
    Some(Received { seq, fingerprint })
}

fn status_of(head: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// xorshift64: reproducible randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }
}
