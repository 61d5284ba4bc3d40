//! tidings-sse: the Server-Sent Events reader that tidings' load tool, its
//! delivery verifier and its integration tests share, so that all three
//! read a stream exactly as a browser's EventSource does.
//!
//! [`Parser`] is the event-stream parser of the HTML standard, fed bytes as
//! they arrive: `id`, `event`, `data` and `retry` fields, comments,
//! multi-line data, CR, LF and CRLF line ends, a leading BOM, and a
//! character split across reads. [`Reader`] runs it over a streaming
//! response body and answers what a client waits for: the next event
//! within a time, whether the stream stays quiet, whether it ended.
//!
//! It owns parsing and waiting only. It must never speak HTTP (each caller
//! brings its bytes its own way: the tools over raw sockets, to count every
//! byte or cut a connection at an exact one), never buffer a whole stream
//! (an event leaves as soon as it is complete), and never read into an
//! event more than its fields say.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last event ID in force when this event was dispatched: what
    /// EventSource would send as `Last-Event-ID` after it.
    pub id: Option<String>,
    /// The event type; `message` when the event named none.
    pub event: String,
    pub data: String,
}

impl Event {
    /// The id as a number: tidings' ids are the event's `seq`.
    pub fn seq(&self) -> Option<i64> {
        self.id.as_deref()?.parse().ok()
    }
}

/// The event-stream parser of the HTML standard, fed bytes as they come.
#[derive(Debug, Default)]
pub struct Parser {
    /// The current line, when it arrived split across feeds.
    line: Vec<u8>,
    /// The previous byte was a CR, so a following LF belongs to it.
    after_cr: bool,
    /// The first line is done (a BOM is only stripped from that one, and
    /// may arrive split across reads).
    started: bool,
    event: String,
    data: String,
    last_id: Option<String>,
    /// The latest `retry:` value, in milliseconds.
    pub retry: Option<u64>,
    /// Comment lines seen (tidings' heartbeats).
    pub comments: u64,
}

impl Parser {
    /// Appends every event `bytes` complete to `out`. Whole lines are
    /// handed on as slices of `bytes`; only a line split across feeds is
    /// copied (the load tool's CPU is taken from the server's). A line is
    /// decoded once complete, so a character split across feeds is whole.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) {
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = &bytes[1..]; // the LF of a CRLF
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line.extend_from_slice(bytes);
                return;
            };
            self.after_cr = bytes[end] == b'\r';
            if self.line.is_empty() {
                self.line_ended(&bytes[..end], out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.line_ended(&line, out);
                line.clear();
                self.line = line;
            }
            bytes = &bytes[end + 1..];
        }
    }

    /// A BOM is stripped from the stream's first line only.
    fn line_ended(&mut self, mut line: &[u8], out: &mut Vec<Event>) {
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        self.line_done(line, out);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        out.push(Event {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
        });
    }
}

/// Why [`Reader::next_within`] has no event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The wait passed with the stream still open.
    TimedOut,
    /// The server ended the stream.
    Ended,
    /// The body failed mid-stream (a reset connection, a bad chunk).
    Broken(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => f.write_str("no event in time"),
            Self::Ended => f.write_str("stream ended"),
            Self::Broken(why) => write!(f, "broke the connection: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Events read from a streaming response body: any stream of byte chunks,
/// such as reqwest's `Response::bytes_stream()` (boxed, to be `Unpin`).
pub struct Reader<S> {
    body: S,
    parser: Parser,
    /// Complete events not yet asked for (one chunk may complete several).
    ready: VecDeque<Event>,
}

impl<S, B, E> Reader<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: fmt::Display,
{
    pub fn new(body: S) -> Self {
        Self {
            body,
            parser: Parser::default(),
            ready: VecDeque::new(),
        }
    }

    /// The latest `retry:` value, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry
    }

    /// Comment lines seen so far (tidings' heartbeats).
    pub fn comments(&self) -> u64 {
        self.parser.comments
    }

    /// The next event, or why there is none within `wait`. Cancel-safe:
    /// bytes read before the wait ran out stay for the next call.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Event, ReadError> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .unwrap_or(Err(ReadError::TimedOut))
    }

    /// Whether `wait` passed with the stream still open and no event
    /// arriving: the check for "nothing more arrives". An event makes it
    /// false, and so does a stream that ends or breaks, which is quiet for
    /// the wrong reason; either is told on stderr, beside the failed check.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        match self.next_within(wait).await {
            Err(ReadError::TimedOut) => true,
            Ok(event) => {
                eprintln!("expected quiet, got {event:?}");
                false
            }
            Err(error) => {
                eprintln!("expected a quiet open stream, got: {error}");
                false
            }
        }
    }

    /// Whether the server ended the stream cleanly within `wait` (neither
    /// going quiet, nor sending an event, nor breaking the connection).
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        self.next_within(wait).await == Err(ReadError::Ended)
    }

    async fn next_event(&mut self) -> Result<Event, ReadError> {
        let mut complete = Vec::new();
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.parser.feed(chunk.as_ref(), &mut complete);
                    self.ready.extend(complete.drain(..));
                }
                Some(Err(error)) => return Err(ReadError::Broken(error.to_string())),
                None => return Err(ReadError::Ended),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, BoxStream};

    fn parse_in_pieces(input: &[u8], piece: usize) -> (Vec<Event>, Parser) {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            parser.feed(part, &mut out);
        }
        (out, parser)
    }

    #[test]
    fn fields_comments_and_multi_line_data_in_any_split() {
        let input = b"\xEF\xBB\xBFretry: 2000\n: hi\n\nid: 7\nevent: notification\ndata: {\"a\":1}\n\nid: 8\r\ndata: one\r\ndata:two\r\rdata\n\n";
        for piece in 1..input.len() {
            let (events, parser) = parse_in_pieces(input, piece);
            assert_eq!(parser.retry, Some(2000));
            assert_eq!(parser.comments, 1);
            assert_eq!(events.len(), 3, "piece {piece}");
            assert_eq!(events[0].id.as_deref(), Some("7"));
            assert_eq!(events[0].seq(), Some(7));
            assert_eq!(events[0].event, "notification");
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].id.as_deref(), Some("8"));
            assert_eq!(events[1].event, "message");
            assert_eq!(events[1].data, "one\ntwo");
            assert_eq!(events[2].data, "");
            assert_eq!(events[2].id.as_deref(), Some("8"));
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let (events, _) = parse_in_pieces(b"event: x\nid: 3\n\n", 4);
        assert!(events.is_empty());
    }

    type Body = BoxStream<'static, Result<&'static [u8], std::io::Error>>;

    /// A [`Reader`] over `chunks`, as a server might split its body; the
    /// body then ends, or with `open`, stays open and silent.
    fn reader_over(chunks: Vec<&'static [u8]>, open: bool) -> Reader<Body> {
        let sent = stream::iter(chunks.into_iter().map(Ok));
        let body: Body = match open {
            true => sent.chain(stream::pending()).boxed(),
            false => sent.boxed(),
        };
        Reader::new(body)
    }

    #[tokio::test]
    async fn the_sse_reader_decodes_a_character_split_across_chunks() {
        let mut reader = reader_over(vec![b"id: 1\ndata: \"\xc3", b"\xa9\"\n\n"], true);

        let event = reader.next_within(Duration::from_secs(1)).await;

        assert_eq!(event.map(|e| e.data), Ok("\"é\"".to_owned()));
    }

    #[tokio::test]
    async fn a_stream_that_ended_is_not_quiet() {
        let mut reader = reader_over(vec![b": heartbeat\n\n"], false);

        let quiet = reader.quiet_for(Duration::from_millis(100)).await;

        assert!(!quiet);
        assert_eq!(reader.comments(), 1);
    }

    #[tokio::test]
    async fn a_broken_stream_is_neither_quiet_nor_ended() {
        let broken = || -> Body {
            let failure = std::io::Error::other("reset");
            stream::iter([Ok(&b": hi\n"[..]), Err(failure)]).boxed()
        };

        let quiet = Reader::new(broken())
            .quiet_for(Duration::from_millis(100))
            .await;
        let ended = Reader::new(broken())
            .ended_within(Duration::from_millis(100))
            .await;

        assert!(!quiet && !ended);
    }

    #[tokio::test]
    async fn an_open_idle_stream_is_quiet_and_an_event_is_not() {
        let mut idle = reader_over(vec![b"retry: 1000\n\n"], true);
        let mut busy = reader_over(vec![b"id: 1\nevent: e\ndata: x\n\n"], true);

        assert!(idle.quiet_for(Duration::from_millis(50)).await);
        assert_eq!(idle.retry(), Some(1000));
        assert!(!busy.quiet_for(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn events_completed_by_one_chunk_are_each_returned_in_order() {
        let mut reader = reader_over(vec![b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n"], false);
        let wait = Duration::from_secs(1);

        let first = reader.next_within(wait).await.map(|e| e.seq());
        let second = reader.next_within(wait).await.map(|e| e.seq());

        assert_eq!((first, second), (Ok(Some(1)), Ok(Some(2))));
        assert!(reader.ended_within(wait).await);
    }
}
