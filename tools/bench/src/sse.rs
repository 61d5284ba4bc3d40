//! The wire: a minimal HTTP/1.1 client for one `GET` and a chunked-transfer
//! decoder, whose body goes through the Server-Sent Events parser the tools
//! and tests share (tidings-sse, which follows the WHATWG rules).
//!
//! Hand-rolled rather than reqwest so that 18,000 streams cost one socket and
//! one small buffer each in the load tool, and every byte is accounted for.
//! It must never buffer a whole stream: parsed events leave immediately.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use tidings_sse::{Event, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes read per socket read.
const READ_CHUNK: usize = 16 * 1024;

/// Connects to `server` from `source` (port chosen by the kernel): binding
/// first spreads sockets over several 127.0.0.x addresses, each with its
/// own ephemeral port range.
pub async fn connect(server: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    UntilClose,
}

/// A `GET` whose response body is read as a Server-Sent Events stream.
pub struct EventStream {
    tcp: TcpStream,
    framing: Framing,
    raw: Vec<u8>,
    /// `raw` holds bytes not yet decoded (those that came with the head).
    untried: bool,
    chunks: ChunkDecoder,
    decoded: Vec<u8>,
    pub parser: Parser,
}

/// Sends `GET path` with `headers` and reads the response head. Returns the
/// status and, for a 200, the body as an event stream.
pub async fn get_stream(
    mut tcp: TcpStream,
    host: &SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(u16, Option<EventStream>)> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let (status, framing, rest) = read_head(&mut tcp).await?;
    if status != 200 {
        return Ok((status, None));
    }
    let stream = EventStream {
        tcp,
        framing,
        raw: rest,
        untried: true,
        chunks: ChunkDecoder::default(),
        decoded: Vec::new(),
        parser: Parser::default(),
    };
    Ok((status, Some(stream)))
}

/// A plain `GET` with `Connection: close`: the status only.
pub async fn get_status(server: SocketAddr, path: &str) -> Result<u16> {
    let mut tcp = TcpStream::connect(server).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let (status, _, _) = read_head(&mut tcp).await?;
    Ok(status)
}

/// Reads up to the blank line ending the head; returns the status, the body
/// framing, and whatever body bytes came with the head.
async fn read_head(tcp: &mut TcpStream) -> Result<(u16, Framing, Vec<u8>)> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = find(&head, b"\r\n\r\n") {
            break at;
        }
        if head.len() > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before the response head ended");
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = std::str::from_utf8(&head[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("malformed status line")?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    Ok((status, framing, head[end + 4..].to_vec()))
}

impl EventStream {
    /// Waits for more bytes and appends every event they complete to `out`.
    /// Returns `false` once the server has ended the stream.
    pub async fn read_events(&mut self, out: &mut Vec<Event>) -> Result<bool> {
        // Bytes left over from the last call are an incomplete frame: read
        // more first (but bytes that came with the head are untried yet).
        if !std::mem::take(&mut self.untried) {
            self.raw.reserve(READ_CHUNK);
            if self.tcp.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
        }
        let open = match self.framing {
            Framing::Chunked => {
                let used = self.chunks.decode(&self.raw, &mut self.decoded)?;
                self.raw.drain(..used);
                !self.chunks.done
            }
            Framing::UntilClose => {
                self.decoded.append(&mut self.raw);
                true
            }
        };
        self.parser.feed(&self.decoded, out);
        self.decoded.clear();
        // A burst's big buffer is not kept: idle streams stay small.
        if self.raw.capacity() > 4 * READ_CHUNK && self.raw.len() < READ_CHUNK {
            self.raw.shrink_to(READ_CHUNK);
        }
        Ok(open)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// The CRLF after a chunk's data is still to be skipped.
    in_trailer_crlf: bool,
    pub done: bool,
}

impl ChunkDecoder {
    /// Decodes what it can of `input` into `out`; returns the bytes used.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let mut at = 0;
        while at < input.len() && !self.done {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len() - at);
                out.extend_from_slice(&input[at..at + take]);
                at += take;
                self.remaining -= take;
                self.in_trailer_crlf = self.remaining == 0;
            } else if self.in_trailer_crlf {
                if input.len() - at < 2 {
                    break;
                }
                if &input[at..at + 2] != b"\r\n" {
                    bail!("chunk data not followed by CRLF");
                }
                at += 2;
                self.in_trailer_crlf = false;
            } else {
                let Some(line_end) = find(&input[at..], b"\r\n") else {
                    break;
                };
                let line = std::str::from_utf8(&input[at..at + line_end])?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .with_context(|| format!("bad chunk size {size:?}"))?;
                at += line_end + 2;
                self.remaining = size;
                self.done = size == 0;
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_in_any_split() -> Result<()> {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for piece in 1..body.len() {
            let mut decoder = ChunkDecoder::default();
            let mut raw = Vec::new();
            let mut out = Vec::new();
            for part in body.chunks(piece) {
                raw.extend_from_slice(part);
                let used = decoder.decode(&raw, &mut out)?;
                raw.drain(..used);
            }
            assert_eq!(out, b"hello, world");
            assert!(decoder.done);
        }
        Ok(())
    }

    #[test]
    fn a_bad_chunk_size_is_an_error() {
        let mut out = Vec::new();
        assert!(ChunkDecoder::default().decode(b"zz\r\n", &mut out).is_err());
    }
}
