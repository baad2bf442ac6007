//! Idle upstream connections, kept per origin, and the response body that hands its
//! connection back when it ends.
//!
//! A connection is a `hyper::client::conn::http1` sender whose I/O task runs on the
//! runtime that opened it. It is lent out for one request at a time: taken from the idle
//! list, used, and put back only when its response body has been read to the end
//! ([`UpstreamBody`]). A body dropped early (a stream read up to `[DONE]`, a client
//! gone) comes back only if hyper can drain the rest of the response from what has
//! already arrived; otherwise hyper closes the connection, so a connection with unread
//! bytes is never reused. Idle connections expire after the idle timeout: checked when one is
//! taken or returned, and by a sweep that runs on the runtime that first used the pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;

/// The sending half of one upstream HTTP/1.1 connection.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

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
    sender: Sender,
    since: Instant,
}

impl Idle {
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) >= timeout
    }

    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        !self.sender.is_closed() && !self.expired(now, timeout)
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
    pub(crate) fn take(&self, origin: &Origin) -> (Option<Sender>, HeaderValue) {
        let mut origins = self.origins.lock();
        if let Some(entry) = origins.get_mut(origin) {
            let now = Instant::now();
            while let Some(idle) = entry.idle.pop() {
                if idle.usable(now, self.idle_timeout) {
                    return (Some(idle.sender), entry.host.clone());
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
    pub(crate) fn put(self: &Arc<Self>, origin: Origin, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
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
            idle.push(Idle { sender, since: now });
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

/// Where a body's connection goes back to when the body ends.
pub(crate) struct Lease {
    pub(crate) pool: Arc<Pool>,
    pub(crate) origin: Origin,
    pub(crate) sender: Sender,
}

/// An upstream response body. When it has been read to its end, its connection goes
/// back to the pool. Dropped before that, the connection goes back only if hyper could
/// finish reading the response from what had already arrived; otherwise it is closed.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Box<Lease>>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Box<Lease>) -> Self {
        let mut body = UpstreamBody {
            inner,
            lease: Some(lease),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.pool.put(lease.origin, lease.sender);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Dropped before its end, typically a stream whose reader stopped at `[DONE]`
        // with the last chunk still in flight. hyper drains what has already arrived of
        // the rest and keeps the connection if that completes the response, or closes
        // it. Wait for that verdict off the request path, and pool the connection if it
        // is reusable.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let Lease {
                pool,
                origin,
                mut sender,
            } = *lease;
            if let Ok(Ok(())) = tokio::time::timeout(DRAIN_VERDICT, sender.ready()).await {
                pool.put(origin, sender);
            }
        });
    }
}

/// How long a connection whose body was dropped early may take to become reusable.
const DRAIN_VERDICT: Duration = Duration::from_secs(1);

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken: never reuse it.
                this.lease = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
