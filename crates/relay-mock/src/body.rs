//! Response bodies: a pre-rendered full body, or a paced SSE stream that
//! tracks completion and cancellation.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::Shared;
use crate::render::{ContentFrames, Frames};

/// The response body type of every mock response.
#[derive(Debug)]
pub(crate) enum MockBody {
    /// A complete body, sent with a `content-length`.
    Full(Option<Bytes>),
    /// A server-sent-events stream.
    Sse(SseBody),
}

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> MockBody {
        MockBody::Full(Some(bytes.into()))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(sse) => sse.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(bytes) => bytes.is_none(),
            MockBody::Sse(sse) => sse.next >= sse.frames.ends.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// Pacing and fault settings of one stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    pub(crate) chunk_interval: Duration,
    pub(crate) stall_first_token: Duration,
    pub(crate) cut_after: Option<u32>,
}

/// A rendered stream that any number of bodies can hand out at once: the
/// frames of a [`Frames`] behind reference counts.
#[derive(Debug, Clone)]
pub(crate) struct SharedFrames {
    data: Bytes,
    ends: Arc<[usize]>,
    content: Arc<ContentFrames>,
    finish: usize,
    first_token: usize,
    /// Per frame, where its send-time stamp goes (`stamp_frames`).
    stamps: Option<Arc<[Option<usize>]>>,
}

impl SharedFrames {
    /// Shares `frames`; `stamps` gives, per frame, the offset (from the
    /// frame's start) of [`STAMP_DIGITS`] digits to overwrite with the send
    /// time.
    pub(crate) fn new(frames: Frames, stamps: Option<Vec<Option<usize>>>) -> SharedFrames {
        SharedFrames {
            data: Bytes::from(frames.data),
            ends: frames.ends.into(),
            content: Arc::new(frames.content),
            finish: frames.finish,
            first_token: frames.first_token,
            stamps: stamps.map(Into::into),
        }
    }

    fn cut_index(&self, n: u32) -> usize {
        crate::render::cut_index(&self.content, self.finish, n)
    }
}

impl From<Frames> for SharedFrames {
    fn from(frames: Frames) -> SharedFrames {
        SharedFrames::new(frames, None)
    }
}

/// Digits of a send-time stamp: nanoseconds since the Unix epoch.
pub(crate) const STAMP_DIGITS: usize = 19;

/// Writes the current wall-clock time, in nanoseconds since the Unix epoch,
/// as [`STAMP_DIGITS`] zero-padded digits into `out`.
fn write_stamp(out: &mut [u8]) {
    let mut ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for b in out.iter_mut().rev() {
        *b = b'0' + (ns % 10) as u8;
        ns /= 10;
    }
}

/// A pre-rendered stream (SSE in every dialect, or Gemini's streamed JSON
/// array) handed out one frame at a time.
///
/// Every frame is a zero-copy slice of one buffer. Dropping the body before
/// the last frame (`[DONE]`, `message_stop`, Gemini's final chunk) was
/// produced counts the stream as cancelled.
#[derive(Debug)]
pub(crate) struct SseBody {
    frames: SharedFrames,
    /// Index of the next frame to produce.
    next: usize,
    /// Frame index at which the stream is cut instead.
    cut_at: Option<usize>,
    pacing: Pacing,
    /// The delay before frame `next` has elapsed (or was not needed).
    delay_done: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    sleep_armed: bool,
    /// The last frame was produced or the stream was cut: not a cancellation.
    ended: bool,
    shared: Arc<Shared>,
    /// The connection's cut flag (see [`CutStream`](crate::conn::CutStream)).
    cut: Arc<AtomicBool>,
}

impl SseBody {
    pub(crate) fn new(
        frames: SharedFrames,
        pacing: Pacing,
        shared: Arc<Shared>,
        cut: Arc<AtomicBool>,
    ) -> SseBody {
        shared.stats.streams_started.fetch_add(1, Ordering::Relaxed);
        let cut_at = pacing.cut_after.map(|n| frames.cut_index(n));
        SseBody {
            frames,
            next: 0,
            cut_at,
            pacing,
            delay_done: false,
            sleep: None,
            sleep_armed: false,
            ended: false,
            shared,
            cut,
        }
    }

    /// The pause owed before frame `i`.
    fn delay_before(&self, i: usize) -> Duration {
        let mut delay = Duration::ZERO;
        if i == self.frames.first_token {
            delay += self.pacing.stall_first_token;
        }
        if self.frames.content.is_later(i) {
            delay += self.pacing.chunk_interval;
        }
        delay
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let i = self.next;
        let ends = &self.frames.ends;
        if i >= ends.len() {
            return Poll::Ready(None);
        }
        if self.ended {
            // Cut: never produce anything again; the connection's next
            // flush fails and hyper drops the connection.
            return Poll::Pending;
        }
        if !self.delay_done {
            let delay = self.delay_before(i);
            if !delay.is_zero() {
                if !self.sleep_armed {
                    let deadline = Instant::now() + delay;
                    match self.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.sleep_armed = true;
                }
                if let Some(sleep) = self.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                self.sleep_armed = false;
            }
            self.delay_done = true;
        }
        if self.cut_at == Some(i) {
            self.ended = true;
            self.cut.store(true, Ordering::Release);
            return Poll::Pending;
        }
        self.delay_done = false;
        self.next += 1;
        let ends = &self.frames.ends;
        let start = if i == 0 { 0 } else { ends[i - 1] };
        let mut frame = self.frames.data.slice(start..ends[i]);
        let last = self.next == ends.len();
        let stamp_at = self
            .frames
            .stamps
            .as_ref()
            .and_then(|s| s.get(i).copied().flatten());
        if let Some(at) = stamp_at.filter(|&at| at + STAMP_DIGITS <= frame.len()) {
            let mut stamped = BytesMut::from(&frame[..]);
            write_stamp(&mut stamped[at..at + STAMP_DIGITS]);
            frame = stamped.freeze();
        }
        if last {
            self.ended = true;
            self.shared
                .stats
                .streams_completed
                .fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if !self.ended {
            self.shared
                .stats
                .streams_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
