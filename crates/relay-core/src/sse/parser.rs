use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Events (or unterminated lines) larger than this are refused by default: 8 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched server-sent event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if one was given.
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n`.
    pub data: Bytes,
    /// The `id:` field, if one was given.
    pub id: Option<Bytes>,
    /// The `retry:` field, if it was a valid integer.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// The event name, `message` when none was given.
    pub fn event_name(&self) -> &[u8] {
        self.event.as_deref().unwrap_or(b"message")
    }

    /// Whether this is OpenAI's `[DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        &self.data[..] == b"[DONE]"
    }
}

/// The parser refused its input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// One event (or one unterminated line) grew over the limit.
    #[error("server-sent event larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
}

/// An incremental server-sent-events parser.
///
/// Feed bytes with [`SseParser::push`], take events with [`SseParser::next_event`] until it
/// returns `Ok(None)`, and call [`SseParser::finish`] at end of input.
#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no line terminator.
    scanned: usize,
    /// The previous line ended in `\r` at the very end of the input seen so far: a `\n`
    /// that starts the next input belongs to it.
    skip_lf: bool,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    /// The first data line, kept as a zero-copy slice.
    data_first: Option<Bytes>,
    /// Set once a second data line arrives.
    data_joined: Option<BytesMut>,
    pending_bytes: usize,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default size limit.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that refuses events over `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            scanned: 0,
            skip_lf: false,
            event: None,
            id: None,
            retry: None,
            data_first: None,
            data_joined: None,
            pending_bytes: 0,
            max_event_bytes,
        }
    }

    /// Append input.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Append input, avoiding a copy when the parser holds no partial line.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        if self.buf.is_empty() {
            // `BytesMut::from(Bytes)` reuses the allocation when it is uniquely owned.
            self.buf = BytesMut::from(chunk);
            self.scanned = 0;
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Bytes held that do not yet form a complete line or event.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.pending_bytes
    }

    /// The next complete event, if the input holds one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]) else {
                self.scanned = self.buf.len();
                if self.buf.len() + self.pending_bytes > self.max_event_bytes {
                    return Err(self.too_large());
                }
                return Ok(None);
            };
            let end = self.scanned + rel;
            let terminator = self.buf[end];
            let line = self.buf.split_to(end).freeze();
            self.scanned = 0;
            self.buf.advance(1);
            if terminator == b'\r' {
                if self.buf.is_empty() {
                    self.skip_lf = true;
                } else if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
            }
            if let Some(event) = self.line(line)? {
                return Ok(Some(event));
            }
        }
    }

    /// End of input: treat an unterminated last line as terminated and dispatch any
    /// event still pending (servers that omit the final blank line are common).
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if let Some(event) = self.next_event()? {
            return Ok(Some(event));
        }
        if !self.buf.is_empty() {
            let line = self.buf.split().freeze();
            self.scanned = 0;
            if let Some(event) = self.line(line)? {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn too_large(&mut self) -> SseError {
        self.buf.clear();
        self.scanned = 0;
        self.reset();
        SseError::TooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn line(&mut self, line: Bytes) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (name, value) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let value_start = if line.get(i + 1) == Some(&b' ') {
                    i + 2
                } else {
                    i + 1
                };
                (line.slice(..i), line.slice(value_start..))
            }
            None => (line.clone(), Bytes::new()),
        };
        self.pending_bytes += line.len() + 1;
        if self.pending_bytes > self.max_event_bytes {
            return Err(self.too_large());
        }
        match &name[..] {
            b"data" => self.push_data(value),
            b"event" => self.event = Some(value),
            b"id" if memchr::memchr(0, &value).is_none() => self.id = Some(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok());
            }
            _ => {}
        }
        Ok(None)
    }

    fn push_data(&mut self, value: Bytes) {
        if let Some(joined) = &mut self.data_joined {
            joined.put_u8(b'\n');
            joined.extend_from_slice(&value);
        } else if let Some(first) = self.data_first.take() {
            let mut joined = BytesMut::with_capacity(first.len() + value.len() + 1);
            joined.extend_from_slice(&first);
            joined.put_u8(b'\n');
            joined.extend_from_slice(&value);
            self.data_joined = Some(joined);
        } else {
            self.data_first = Some(value);
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let data = match (self.data_joined.take(), self.data_first.take()) {
            (Some(joined), _) => joined.freeze(),
            (None, Some(first)) => first,
            (None, None) => {
                // No data: per the spec nothing is dispatched, and the event name resets
                // (the id and retry fields persist, but we keep events self-contained).
                self.reset();
                return None;
            }
        };
        let event = SseEvent {
            event: self.event.take(),
            data,
            id: self.id.take(),
            retry: self.retry.take(),
        };
        self.pending_bytes = 0;
        Some(event)
    }

    fn reset(&mut self) {
        self.event = None;
        self.id = None;
        self.retry = None;
        self.data_first = None;
        self.data_joined = None;
        self.pending_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(e) = p.next_event().unwrap() {
                out.push(e);
            }
        }
        while let Some(e) = p.finish().unwrap() {
            out.push(e);
        }
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(|e| Bytes::copy_from_slice(e.as_bytes())),
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: None,
            retry: None,
        }
    }

    #[test]
    fn line_endings_lf_cr_crlf() {
        let want = vec![ev(None, "a"), ev(Some("x"), "b")];
        assert_eq!(parse_all(&[b"data: a\n\nevent: x\ndata: b\n\n"]), want);
        assert_eq!(parse_all(&[b"data: a\r\revent: x\rdata: b\r\r"]), want);
        assert_eq!(
            parse_all(&[b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n"]),
            want
        );
    }

    #[test]
    fn comments_multiline_and_fields() {
        let input =
            b": keep-alive\n\ndata: one\ndata:two\ndata\nid: 7\nretry: 1500\nunknown: z\n\n";
        let got = parse_all(&[input]);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].data[..], b"one\ntwo\n");
        assert_eq!(got[0].id.as_deref(), Some(&b"7"[..]));
        assert_eq!(got[0].retry, Some(1500));
        assert_eq!(got[0].event_name(), b"message");
    }

    #[test]
    fn crlf_split_across_reads() {
        let got = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(got, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn unterminated_tail_is_flushed_at_finish() {
        let got = parse_all(&[b"data: a\n\ndata: [DONE]"]);
        assert_eq!(got.len(), 2);
        assert!(got[1].is_done());
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(parse_all(&[b"event: ping\n\n: c\n\n"]).is_empty());
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut p = SseParser::with_limit(16);
        p.push(b"data: 0123456789abcdefghij");
        assert_eq!(p.next_event(), Err(SseError::TooLarge { limit: 16 }));
        let mut p = SseParser::with_limit(16);
        p.push(b"data: 0123456\ndata: 789abcdefg\n");
        assert!(p.next_event().is_err());
    }

    #[test]
    fn single_line_data_is_zero_copy() {
        let input = Bytes::from_static(b"data: {\"x\":1}\n\n");
        let mut p = SseParser::new();
        p.push_bytes(input);
        let e = p.next_event().unwrap().unwrap();
        assert_eq!(&e.data[..], b"{\"x\":1}");
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            events in proptest::collection::vec(("[a-z]{0,3}", "[ -~]{0,40}", 0usize..3), 0..12),
            ending in 0usize..3,
            cuts in proptest::collection::vec(0usize..2000, 0..20),
        ) {
            let eol = ["\n", "\r", "\r\n"][ending];
            let mut text = String::new();
            for (name, data, comments) in &events {
                for _ in 0..*comments { text.push_str(": c"); text.push_str(eol); }
                if !name.is_empty() { text.push_str("event: "); text.push_str(name); text.push_str(eol); }
                for line in data.split('|') { text.push_str("data: "); text.push_str(line); text.push_str(eol); }
                text.push_str(eol);
            }
            let bytes = text.as_bytes();
            let whole = parse_all(&[bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&bytes[last..c]); last = c; }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(parse_all(&chunks), whole.clone());
            // Byte-at-a-time too.
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(parse_all(&singles), whole.clone());
            prop_assert_eq!(whole.len(), events.len());
        }

        #[test]
        fn never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let split = split.min(input.len());
            let _ = parse_all(&[&input[..split], &input[split..]]);
        }
    }
}
