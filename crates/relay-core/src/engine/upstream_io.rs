//! The I/O under an upstream connection: plain TCP inline, TLS boxed.
//!
//! hyper-rustls' `MaybeHttpsStream` holds a TLS session inline (about 1.1 KiB) even when
//! the connection is plain HTTP (40 bytes), and a connection is held for its whole life:
//! 1 KiB of every open stream to a plain-HTTP upstream. Here the TLS variant is boxed,
//! so a plain connection carries only its socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type Tls = tokio_rustls::client::TlsStream<TokioIo<TokioIo<TcpStream>>>;

/// An upstream connection's byte stream.
pub(crate) enum UpstreamIo {
    /// `http://`: the socket itself.
    Plain(TcpStream),
    /// `https://`: the TLS session, boxed.
    Tls(Box<Tls>),
}

impl From<MaybeHttpsStream<TokioIo<TcpStream>>> for UpstreamIo {
    fn from(stream: MaybeHttpsStream<TokioIo<TcpStream>>) -> Self {
        match stream {
            MaybeHttpsStream::Http(plain) => UpstreamIo::Plain(plain.into_inner()),
            MaybeHttpsStream::Https(tls) => UpstreamIo::Tls(Box::new(tls.into_inner())),
        }
    }
}

impl UpstreamIo {
    fn socket(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0.inner().inner(),
        }
    }

    /// Whether the reactor has seen the socket readable (bytes or the peer's close)
    /// since the last read that drained it. No system call.
    pub(crate) fn read_ready(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.socket().poll_read_ready(&mut cx).is_ready()
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_connection_carries_only_its_socket() {
        assert!(std::mem::size_of::<UpstreamIo>() <= 64);
    }
}
