//! The response body: a whole buffer, or a live translated stream.
//!
//! [`RelayBody`] is an `http_body::Body`. In streaming mode it pulls upstream frames only
//! when the client side polls (so backpressure reaches the upstream), translates each
//! complete SSE event as it arrives, enforces idle and total deadlines, ends at once on
//! the terminal event, and settles usage exactly once. Dropping it (the client went away)
//! drops the upstream response, which closes that connection and so cancels the call.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::settle::Settlement;
use crate::adapter::StreamTranslator;
use crate::error::{ErrorKind, RelayError, Side};
use crate::hooks::StreamFilter;
use crate::select::{Channel, HealthBoard};
use crate::sse::SseParser;
use crate::usage::Outcome;

/// The body of every relay response.
pub struct RelayBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Box<StreamState>),
}

impl std::fmt::Debug for RelayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_tuple("RelayBody::Full")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
            Kind::Stream(_) => f.write_str("RelayBody::Stream"),
        }
    }
}

impl RelayBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        RelayBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RelayBody {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn stream(state: StreamState) -> Self {
        RelayBody {
            kind: Kind::Stream(Box::new(state)),
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => s.poll_next(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.ended && s.out.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A stream that produced its first content event (or ended): ready to commit.
pub(crate) struct StartedStream {
    /// The rest of the upstream body.
    pub(crate) upstream: super::UpstreamBody,
    /// The parser, with any partial event it holds.
    pub(crate) parser: SseParser,
    /// The translator, with what it has seen.
    pub(crate) translator: Box<dyn StreamTranslator>,
    /// Client bytes held back until the commit.
    pub(crate) held: BytesMut,
    /// The terminal event was already seen.
    pub(crate) done: bool,
}

/// A committed stream: what was held before the commit, then the live upstream.
pub(crate) struct StreamState {
    pub(crate) upstream: super::UpstreamBody,
    pub(crate) parser: SseParser,
    pub(crate) translator: Box<dyn StreamTranslator>,
    pub(crate) out: BytesMut,
    pub(crate) ended: bool,
    pub(crate) idle: Duration,
    pub(crate) idle_sleep: Pin<Box<Sleep>>,
    pub(crate) total_sleep: Pin<Box<Sleep>>,
    pub(crate) settlement: Settlement,
    pub(crate) channel: Arc<Channel>,
    pub(crate) board: Arc<HealthBoard>,
    /// Plugins' stream filter; `None` (the fast path) when no plugin looks at streams.
    pub(crate) filter: Option<Box<dyn StreamFilter>>,
}

impl StreamState {
    pub(crate) fn new(
        started: StartedStream,
        idle: Duration,
        deadline: Instant,
        settlement: Settlement,
        channel: Arc<Channel>,
        board: Arc<HealthBoard>,
        filter: Option<Box<dyn StreamFilter>>,
    ) -> Self {
        let StartedStream {
            upstream,
            parser,
            translator,
            held,
            done,
        } = started;
        let mut state = StreamState {
            upstream,
            parser,
            translator,
            out: held,
            ended: false,
            idle,
            idle_sleep: Box::pin(tokio::time::sleep(idle)),
            total_sleep: Box::pin(tokio::time::sleep_until(deadline)),
            settlement,
            channel,
            board,
            filter,
        };
        state.settlement.first_token();
        // What was held before the commit goes through the plugins too.
        if let Some(filter) = state.filter.as_mut() {
            let mut result = filter.on_chunk(&mut state.out);
            if result.is_ok() && done {
                result = filter.on_end(&mut state.out);
            }
            if let Err(e) = result {
                // Nothing the filter did not pass may go out.
                state.out.clear();
                state.end(Some(e));
                return state;
            }
        }
        if done {
            state.end(None);
        }
        state
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if !self.out.is_empty() {
                return Poll::Ready(Some(self.out.split().freeze()));
            }
            if self.ended {
                if !self.upstream.is_end_stream() {
                    // The terminal event came first; the chunked trailer is usually
                    // already buffered. Reading it lets the connection go back to the
                    // pool instead of being closed. One poll only: never wait for it.
                    let _ = Pin::new(&mut self.upstream).poll_frame(cx);
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push_bytes(data);
                        self.drain_events();
                        if !self.ended {
                            let next = Instant::now() + self.idle;
                            self.idle_sleep.as_mut().reset(next);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = RelayError::new(
                        ErrorKind::StreamCut,
                        Side::Upstream,
                        format!(
                            "upstream stream failed: {}",
                            super::client::source_chain(&e)
                        ),
                    );
                    self.end(Some(err));
                }
                Poll::Ready(None) => {
                    loop {
                        match self.parser.finish() {
                            Ok(Some(event)) => {
                                if !self.on_event(event) {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                self.end(Some(protocol_error(e)));
                                break;
                            }
                        }
                    }
                    if !self.ended {
                        let result = match self.filter.is_some() {
                            false => self.translator.on_eof(&mut self.out),
                            true => {
                                let mut scratch = BytesMut::new();
                                let result = self.translator.on_eof(&mut scratch);
                                self.filtered(scratch, result.is_ok())
                            }
                        };
                        self.end(result.err());
                    }
                }
                Poll::Pending => {
                    if self.total_sleep.as_mut().poll(cx).is_ready() {
                        self.end(Some(RelayError::new(
                            ErrorKind::TotalTimeout,
                            Side::Upstream,
                            "the request exceeded its total time limit while streaming",
                        )));
                        continue;
                    }
                    if self.idle_sleep.as_mut().poll(cx).is_ready() {
                        self.end(Some(RelayError::new(
                            ErrorKind::IdleTimeout,
                            Side::Upstream,
                            format!(
                                "the upstream stream was silent for {} ms",
                                self.idle.as_millis()
                            ),
                        )));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Translate every complete event in the parser. Stops at the terminal event.
    fn drain_events(&mut self) {
        loop {
            match self.parser.next_event() {
                Ok(Some(event)) => {
                    if !self.on_event(event) {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => return self.end(Some(protocol_error(e))),
            }
        }
    }

    /// Returns false once the stream has ended.
    fn on_event(&mut self, event: crate::sse::SseEvent) -> bool {
        if self.filter.is_some() {
            return self.on_event_filtered(event);
        }
        match self.translator.on_event(event, &mut self.out) {
            Ok(progress) => {
                if progress.done {
                    self.end(None);
                    return false;
                }
                true
            }
            Err(e) => {
                self.end(Some(e));
                false
            }
        }
    }

    /// [`on_event`](Self::on_event) with plugins: the event's client bytes go through
    /// the filter first; at the terminal event the filter releases what it held.
    fn on_event_filtered(&mut self, event: crate::sse::SseEvent) -> bool {
        let mut scratch = BytesMut::new();
        let progress = match self.translator.on_event(event, &mut scratch) {
            Ok(p) => p,
            Err(e) => {
                self.end(Some(e));
                return false;
            }
        };
        if let Err(e) = self.filtered(scratch, progress.done) {
            self.end(Some(e));
            return false;
        }
        if progress.done {
            self.end(None);
            return false;
        }
        true
    }

    /// Pass `chunk` through the filter (and, when the stream ends cleanly, let it
    /// release what it held), then queue the result for the client.
    fn filtered(&mut self, mut chunk: BytesMut, end: bool) -> Result<(), RelayError> {
        let Some(filter) = self.filter.as_mut() else {
            self.out.unsplit(chunk);
            return Ok(());
        };
        filter.on_chunk(&mut chunk)?;
        if end {
            filter.on_end(&mut chunk)?;
        }
        self.out.unsplit(chunk);
        Ok(())
    }

    /// End the stream: append an error event if there is one, settle.
    fn end(&mut self, error: Option<RelayError>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.settlement.usage_seen = self.translator.usage();
        self.settlement.produced_chars = self.translator.produced_chars();
        match error {
            None => self.settlement.finish(Outcome::Ok, None),
            Some(err) => {
                tracing::warn!(channel = %self.channel.id(), error = %err, "stream ended with an error after the response began");
                if err.side() == Side::Upstream {
                    self.channel.health.on_failure(&self.board);
                }
                self.translator.encode_error(&err, &mut self.out);
                self.settlement.finish(Outcome::Error, Some(&err));
            }
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if !self.ended {
            // The client went away: note what was produced; the settlement's own Drop
            // writes the cancelled record, and dropping `upstream` closes that connection.
            self.settlement.usage_seen = self.translator.usage();
            self.settlement.produced_chars = self.translator.produced_chars();
        }
    }
}

fn protocol_error(e: crate::sse::SseError) -> RelayError {
    RelayError::new(
        ErrorKind::UpstreamProtocol,
        Side::Upstream,
        format!("bad upstream event stream: {e}"),
    )
}
