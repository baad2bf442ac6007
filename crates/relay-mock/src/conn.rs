//! The per-connection socket wrapper that lets a stream cut its connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream whose flushes fail once `cut` is set.
///
/// hyper throws away its unflushed write buffer when a response body
/// errors, so a body cannot simply fail to cut a stream "after N chunks".
/// Instead the body sets `cut` and stops producing frames; hyper then
/// flushes everything it buffered (the N chunks) and calls `poll_flush`,
/// which fails here, so hyper drops the connection mid-body: the client sees
/// the N chunks and then an unterminated chunked body.
#[derive(Debug)]
pub(crate) struct CutStream {
    inner: TcpStream,
    cut: Arc<AtomicBool>,
}

impl CutStream {
    pub(crate) fn new(inner: TcpStream) -> CutStream {
        CutStream {
            inner,
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag a response body sets to cut this connection.
    pub(crate) fn cut_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cut)
    }
}

impl AsyncRead for CutStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "relay-mock: stream cut on purpose (cut_after)",
            )));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
