//! The upstream side's HTTP/1.1, spoken by the request itself.
//!
//! An upstream connection is a socket (or TLS session) and a read buffer, lent to one
//! request at a time. The request's own future writes the request and reads the response
//! head; the response body ([`super::pool::UpstreamBody`]) reads the rest from the same
//! socket and gives the connection back when the response ends. No connection task, no
//! channel between the request and its connection: per request that is two task wake-ups
//! and a request/response channel pair fewer than `hyper::client::conn`, and per open
//! stream no connection task, no dispatch channel and no write buffer.
//!
//! What is spoken: requests with a `Content-Length` body; responses framed by
//! `Content-Length`, `chunked`, or the connection's close; `1xx` heads skipped;
//! `Connection: close` and HTTP/1.0 answers end the connection's reuse. Heads are parsed
//! by `httparse`, with limits on their size and header count.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::io::AsyncWrite;

use super::upstream_io::UpstreamIo;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a response head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;
/// How much the read buffer grows by when it is nearly full.
const READ_SIZE: usize = 8 * 1024;
/// Below this much free room, the read buffer grows before the next read.
const MIN_SPARE: usize = 2 * 1024;
/// Data up to this size is copied out of the read buffer, so the buffer stays unshared
/// and is reused from its start; larger pieces are split off without a copy.
const COPY_MAX: usize = 2 * 1024;
/// A body up to this size goes out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// One upstream connection: its byte stream and what was read but not consumed.
pub(crate) struct Conn {
    io: UpstreamIo,
    pub(crate) buf: BytesMut,
}

/// A parsed response head.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
}

impl Conn {
    pub(crate) fn new(io: UpstreamIo) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing has arrived on it since
    /// its last response, neither stray bytes nor the peer's close (as far as the
    /// runtime's reactor has seen; no system call).
    pub(crate) fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.io.read_ready()
    }

    /// Read more into the buffer; `Ok(0)` at the end of the stream.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Write the request: `head`, then `body`, flushed.
    pub(crate) async fn write_request(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let parts = [IoSlice::new(head), IoSlice::new(body)];
            let n = poll_fn(|cx| Pin::new(&mut self.io).poll_write_vectored(cx, &parts)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await
    }

    /// Read a final response head (skipping `1xx` ones).
    pub(crate) async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(head) = parse_head(&mut self.buf)? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(protocol("the upstream switched protocols"));
                    }
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(protocol("the upstream's response head is too large"));
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before a response head",
                ));
            }
        }
    }
}

fn protocol(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// The request's head as bytes, with `host` (unless the request has one) and the
/// body's `content-length`; the body itself when it is small enough to share the write.
pub(crate) fn encode_request(
    parts: &http::request::Parts,
    host: &HeaderValue,
    body: &[u8],
) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let inline = body.len() <= INLINE_BODY;
    let mut out = Vec::with_capacity(
        64 + target.len() + parts.headers.len() * 48 + if inline { body.len() } else { 0 },
    );
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        line(&mut out, b"host", host.as_bytes());
    }
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let has_body =
        !body.is_empty() || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        let mut digits = itoa::Buffer::new();
        line(
            &mut out,
            b"content-length",
            digits.format(body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(body);
    }
    out
}

/// Whether [`encode_request`] put the body in the head's buffer.
pub(crate) fn body_inlined(body: &[u8]) -> bool {
    body.len() <= INLINE_BODY
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parse a complete head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<Head>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(&format!("bad upstream response head: {e}"))),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| protocol("bad upstream status code"))?;
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // The values are slices of one copy of the head: the read buffer itself stays
    // unshared, so it is reused for the next read instead of reallocated.
    let copy = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| protocol("bad upstream header name"))?;
        // A slice of the copy when the value lies inside the head (it always should;
        // an empty value's pointer is not promised to), a copy of its own otherwise.
        let value = match (h.value.as_ptr() as usize).checked_sub(base) {
            Some(start) if start + h.value.len() <= len => {
                HeaderValue::from_maybe_shared(copy.slice(start..start + h.value.len()))
            }
            _ => HeaderValue::from_bytes(h.value),
        }
        .map_err(|_| protocol("bad upstream header value"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

impl Head {
    /// Whether the connection may carry another request after this response.
    pub(crate) fn keep_alive(&self) -> bool {
        !connection_has(&self.headers, b"close")
            && (self.version == Version::HTTP_11 || connection_has(&self.headers, b"keep-alive"))
    }

    /// How the body is delimited (RFC 9112 section 6.3).
    pub(crate) fn framing(&self, method: &Method) -> io::Result<Decoder> {
        if method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Decoder::Done);
        }
        let mut codings = self.headers.get_all(TRANSFER_ENCODING).iter().peekable();
        if codings.peek().is_some() {
            let last_chunked = codings.last().is_some_and(|v| {
                v.as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            });
            return Ok(if last_chunked {
                Decoder::Chunked(Chunk::Size)
            } else {
                Decoder::Eof
            });
        }
        let mut length: Option<u64> = None;
        for value in self.headers.get_all(CONTENT_LENGTH) {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| protocol("bad upstream content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting upstream content-length"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Decoder::Done,
            Some(n) => Decoder::Length(n),
            None => Decoder::Eof,
        })
    }
}

/// Whether the `Connection` headers list `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Where a response body's framing stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the connection closes (never reused).
    Eof,
    /// The body ended.
    Done,
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
}

/// What one decoding step found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

impl Decoder {
    /// Whether the body ended.
    pub(crate) fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The next piece of body data in `buf`, or what is missing.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match self {
                Decoder::Done => return Ok(Step::Done),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Step::Data(take(buf, n)));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = buf.len();
                    return Ok(Step::Data(take(buf, n)));
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Step::Data(take(buf, n)));
                }
                Decoder::Chunked(_) => {
                    if !self.framing_step(buf)? {
                        return Ok(Step::NeedMore);
                    }
                }
            }
        }
    }

    /// Consume the framing (chunk sizes, CRLFs, trailers) that `buf` holds up to the
    /// next data or the end, without any I/O; whether the body ended.
    pub(crate) fn skip_framing(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        loop {
            match self {
                Decoder::Done => return Ok(true),
                Decoder::Chunked(Chunk::Size | Chunk::DataEnd | Chunk::Trailer) => {
                    if !self.framing_step(buf)? {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
    }

    /// One step through chunked framing; `false` when `buf` holds too little for it.
    fn framing_step(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        match self {
            Decoder::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(protocol("bad upstream chunk: no CRLF after its data"));
                }
                buf.advance(2);
                *self = Decoder::Chunked(Chunk::Size);
            }
            Decoder::Chunked(Chunk::Size) => {
                let Some(end) = find_line(buf)? else {
                    return Ok(false);
                };
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 2);
                *self = if size == 0 {
                    Decoder::Chunked(Chunk::Trailer)
                } else {
                    Decoder::Chunked(Chunk::Data(size))
                };
            }
            Decoder::Chunked(Chunk::Trailer) => {
                let Some(end) = find_line(buf)? else {
                    return Ok(false);
                };
                buf.advance(end + 2);
                if end == 0 {
                    *self = Decoder::Done;
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// The position of the CRLF ending the line at the front of `buf`.
fn find_line(buf: &[u8]) -> io::Result<Option<usize>> {
    match memchr::memmem::find(buf, b"\r\n") {
        Some(end) if end <= MAX_LINE => Ok(Some(end)),
        Some(_) => Err(protocol("bad upstream chunk: line too long")),
        None if buf.len() > MAX_LINE => Err(protocol("bad upstream chunk: line too long")),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional `;extensions`.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(protocol("bad upstream chunk size"));
    }
    let mut size = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(protocol("bad upstream chunk size")),
        };
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

/// The first `n` bytes of `buf`: copied when small (the buffer stays unshared and is
/// reused), split off when large.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_MAX {
        let out = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        out
    } else {
        buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).unwrap().unwrap()
    }

    /// Decode everything in `wire`, fed in pieces of the given sizes.
    fn decode_all(
        mut decoder: Decoder,
        wire: &[u8],
        pieces: &[usize],
    ) -> io::Result<(Vec<u8>, bool, usize)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut sizes = pieces.iter().copied().cycle();
        loop {
            match decoder.decode(&mut buf)? {
                Step::Data(d) => {
                    out.extend_from_slice(&d);
                    decoder.skip_framing(&mut buf)?;
                }
                Step::Done => return Ok((out, true, buf.len())),
                Step::NeedMore => {
                    if fed == wire.len() {
                        return Ok((out, false, buf.len()));
                    }
                    let n = sizes.next().unwrap_or(1).max(1).min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn heads_parse_with_their_framing() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nx-empty:\r\nx-obs: caf\xe9\r\n\r\n"[..],
        );
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(h.headers["x-obs"].as_bytes(), b"caf\xe9");
        assert!(h.keep_alive());
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Length(5));

        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
        );
        assert_eq!(
            h.framing(&Method::POST).unwrap(),
            Decoder::Chunked(Chunk::Size)
        );
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Eof);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Eof);
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n");
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Done);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Done);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n");
        assert_eq!(h.framing(&Method::POST).unwrap(), Decoder::Length(4));
        for bad in ["4, 5", "-1", "", "0x10", "1 2"] {
            let h = head(&format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n"));
            assert!(h.framing(&Method::POST).is_err(), "{bad}");
        }

        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive());
        assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn incomplete_and_bad_heads() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed");
        let mut buf = BytesMut::from(&b"HTTX/1.1 200 OK\r\n\r\n"[..]);
        assert!(parse_head(&mut buf).is_err());
        // The head is consumed; what follows stays for the body.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn requests_encode_with_host_and_length() {
        let req = http::Request::post("http://example.com:8080/v1/chat?x=1")
            .header("authorization", "Bearer k")
            .header("content-length", "999")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let host = HeaderValue::from_static("example.com:8080");
        let out = encode_request(&parts, &host, b"{}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat?x=1 HTTP/1.1\r\nhost: example.com:8080\r\nauthorization: Bearer k\r\ncontent-length: 2\r\n\r\n{}"
        );
        let big = vec![b'x'; INLINE_BODY + 1];
        let out = encode_request(&parts, &host, &big);
        assert!(out.ends_with(b"\r\n\r\n"));
        assert!(!body_inlined(&big));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        // Fed a byte at a time, it stops at its end.
        let (out, done, _) = decode_all(Decoder::Chunked(Chunk::Size), wire, &[1]).unwrap();
        assert_eq!(out, b"hello, world!!!");
        assert!(done);
        // Fed at once, the bytes after the body stay in the buffer.
        let (out, done, left) = decode_all(Decoder::Chunked(Chunk::Size), wire, &[1000]).unwrap();
        assert_eq!(out, b"hello, world!!!");
        assert!(done);
        assert_eq!(left, 4);
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"12345678901234567\r\n"] {
            assert!(decode_all(Decoder::Chunked(Chunk::Size), bad, &[64]).is_err());
        }
        let (_, done, _) = decode_all(Decoder::Chunked(Chunk::Size), b"5\r\nhel", &[64]).unwrap();
        assert!(!done, "cut short");
    }

    proptest! {
        /// Any body, cut into any chunks, sent in any pieces, decodes to itself.
        #[test]
        fn chunked_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(1usize..700, 1..8),
            pieces in proptest::collection::vec(1usize..300, 1..8),
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (out, done, left) = decode_all(Decoder::Chunked(Chunk::Size), &wire, &pieces).unwrap();
            prop_assert!(done);
            prop_assert_eq!(left, 0);
            prop_assert_eq!(out, body.clone());
            let (out, done, _) = decode_all(Decoder::Length(body.len() as u64), &body, &pieces).unwrap();
            prop_assert!(done || body.is_empty());
            prop_assert_eq!(out, body);
        }
    }
}
