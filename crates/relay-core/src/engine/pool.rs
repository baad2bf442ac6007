//! Idle upstream connections, kept per origin, and the response body that hands its
//! connection back when it ends.
//!
//! A connection ([`Conn`]: a socket registered with the runtime that opened it, and its
//! read buffer) is lent out for one request at a time: taken from the idle list, used,
//! and put back only when its response body has been read to the end
//! ([`UpstreamBody`]). A body dropped early (a stream read up to `[DONE]`, a client
//! gone) gives its connection back only if what already arrived completes the response
//! (the terminating chunk, typically); otherwise the connection is closed, so a
//! connection with unread bytes is never reused. A connection on which anything arrived
//! while it was idle (the peer's close, stray bytes) is not handed out. Idle connections
//! expire after the idle timeout: checked when one is taken or returned, and by a sweep
//! that runs on the runtime that first used the pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use super::http1::{Conn, Decoder, Step};

/// Where a connection goes: scheme and authority (host and port).
///
/// Compared and hashed byte for byte: `Authority`'s own `Hash` lowercases every byte (its
/// equality ignores case), several hundred instructions per lookup on the request path.
/// Two spellings of one host only get two pools.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.authority.as_str() == other.authority.as_str()
            && self.scheme.as_str() == other.scheme.as_str()
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.authority.as_str().hash(state);
        self.scheme.as_str().hash(state);
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) >= timeout
    }

    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        !self.expired(now, timeout) && self.conn.is_clean()
    }
}

/// The idle connections of one origin, and the `Host` header its requests carry.
struct OriginIdle {
    host: HeaderValue,
    idle: Vec<Idle>,
}

impl OriginIdle {
    fn new(origin: &Origin) -> Self {
        OriginIdle {
            host: host_header(origin),
            idle: Vec::new(),
        }
    }
}

/// One thread's idle connections.
pub(crate) struct Pool {
    idle_timeout: Duration,
    max_idle: usize,
    origins: Mutex<HashMap<Origin, OriginIdle, foldhash::fast::RandomState>>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl Pool {
    pub(crate) fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle_timeout,
            max_idle,
            origins: Mutex::new(HashMap::default()),
            sweeping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The most recently returned live connection to `origin`, if any, and the origin's
    /// `Host` header (computed once per origin).
    pub(crate) fn take(&self, origin: &Origin) -> (Option<Conn>, HeaderValue) {
        let mut origins = self.origins.lock();
        if let Some(entry) = origins.get_mut(origin) {
            let now = Instant::now();
            while let Some(idle) = entry.idle.pop() {
                if idle.usable(now, self.idle_timeout) {
                    return (Some(idle.conn), entry.host.clone());
                }
            }
            return (None, entry.host.clone());
        }
        let entry = OriginIdle::new(origin);
        let host = entry.host.clone();
        origins.insert(origin.clone(), entry);
        (None, host)
    }

    /// Put a connection whose last response was read to the end back in the idle list.
    pub(crate) fn put(self: &Arc<Self>, origin: Origin, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        {
            let mut origins = self.origins.lock();
            let entry = origins.entry(origin).or_insert_with_key(OriginIdle::new);
            let idle = &mut entry.idle;
            // Oldest first: drop the expired ones, then make room.
            let expired = idle
                .iter()
                .take_while(|i| i.expired(now, self.idle_timeout))
                .count();
            let over = (idle.len() - expired + 1).saturating_sub(self.max_idle);
            idle.drain(..expired + over);
            idle.push(Idle { conn, since: now });
        }
        self.start_sweep();
    }

    /// Close idle connections that expired and forget origins with none left.
    fn sweep(&self) {
        let now = Instant::now();
        let mut origins = self.origins.lock();
        origins.retain(|_, entry| {
            entry.idle.retain(|i| i.usable(now, self.idle_timeout));
            !entry.idle.is_empty()
        });
    }

    /// Start the periodic sweep on the current runtime (once per pool). Without a
    /// runtime, expiry still happens when connections are taken or returned.
    fn start_sweep(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.sweeping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_millis(100));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { break };
                pool.sweep();
            }
        });
    }
}

/// `Host` for an origin: the authority without user info, and without the scheme's
/// default port.
fn host_header(origin: &Origin) -> HeaderValue {
    let host = origin.authority.host();
    let default_port = if origin.scheme == Scheme::HTTPS {
        443
    } else {
        80
    };
    let value = match origin.authority.port_u16() {
        Some(port) if port != default_port => HeaderValue::from_str(&format!("{host}:{port}")),
        _ => HeaderValue::from_str(host),
    };
    // An `Authority` holds only characters a header value accepts.
    value.unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// A response body's connection, and where it goes back to when the body ends.
pub(crate) struct Lease {
    pub(crate) conn: Conn,
    pub(crate) decoder: Decoder,
    /// The response allows another request on the connection.
    pub(crate) reusable: bool,
    pub(crate) pool: Arc<Pool>,
    pub(crate) origin: Origin,
}

/// An upstream response body, read from its connection as the reader asks. When it has
/// been read to its end, the connection goes back to the pool. Dropped before that, the
/// connection goes back only if what had already arrived completes the response;
/// otherwise it is closed.
pub struct UpstreamBody {
    lease: Option<Box<Lease>>,
}

impl UpstreamBody {
    pub(crate) fn new(lease: Box<Lease>) -> Self {
        let mut body = UpstreamBody { lease: Some(lease) };
        if body.lease.as_ref().is_some_and(|l| l.decoder.is_done()) {
            body.release();
        }
        body
    }

    /// The body ended: the connection goes back to the pool if it may be reused.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            let Lease {
                conn,
                reusable,
                pool,
                origin,
                ..
            } = *lease;
            if reusable && conn.buf.is_empty() {
                pool.put(origin, conn);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before its end, typically a stream whose reader stopped at `[DONE]`:
        // if the rest of the response (the terminating chunk) already arrived, the
        // connection is still good. Only what is buffered is looked at; no I/O.
        let done = match self.lease.as_mut() {
            Some(lease) => {
                let Lease { conn, decoder, .. } = &mut **lease;
                loop {
                    match decoder.decode(&mut conn.buf) {
                        Ok(Step::Data(_)) => {}
                        Ok(Step::Done) => break true,
                        Ok(Step::NeedMore) | Err(_) => break false,
                    }
                }
            }
            None => return,
        };
        if done {
            self.release();
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("open", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(lease) = this.lease.as_mut() else {
                return Poll::Ready(None);
            };
            let Lease { conn, decoder, .. } = &mut **lease;
            let step = decoder.decode(&mut conn.buf).and_then(|step| {
                if matches!(step, Step::Data(_)) {
                    // Consume the framing that follows, so a response whose end already
                    // arrived ends (and frees its connection) with its last data.
                    decoder.skip_framing(&mut conn.buf)?;
                }
                Ok(step)
            });
            match step {
                Ok(Step::Data(data)) => {
                    if decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Done) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        if *decoder == Decoder::Eof {
                            // Delimited by the close: the end.
                            this.lease = None;
                            return Poll::Ready(None);
                        }
                        this.lease = None;
                        return Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the upstream closed the connection before the end of the body",
                        ))));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        // The connection is broken: never reuse it.
                        this.lease = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Err(e) => {
                    this.lease = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.lease.as_ref().map(|l| l.decoder) {
            None | Some(Decoder::Done) => SizeHint::with_exact(0),
            Some(Decoder::Length(n)) => SizeHint::with_exact(n),
            Some(_) => SizeHint::default(),
        }
    }
}
