//! The byte stream under a connection: plain TCP, or TCP wrapped by the
//! embedding application (the tarn server wraps it in TLS).
//!
//! The transport knows nothing of TLS: an application that wants its peer
//! connections encrypted and authenticated hands the transport a
//! [`PeerSecurity`], which wraps every dialed and accepted connection before
//! the transport's own handshake (the cluster id check) runs inside it, and
//! which says, once the other side's Hello names a node id, whether the
//! other side proved to be that node. Without one (the embedding API's
//! default), connections are plain TCP, as the simulator and applications
//! that bring their own transport security want.
//!
//! [`Stream::into_split`] keeps TCP's lock-free owned halves for plain
//! connections; only wrapped ones pay for `tokio::io::split`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tarn_core::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Any byte stream a connection can run over (a TLS stream, typically).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A boxed future, as [`PeerSecurity`]'s methods return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connection's byte stream: plain TCP or wrapped (TLS).
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TCP wrapped by the application, e.g. in TLS.
    Wrapped(Box<dyn AsyncStream>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Wrapped(_) => f.write_str("Wrapped"),
        }
    }
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    /// Of a plain TCP stream.
    Tcp(OwnedReadHalf),
    /// Of a wrapped stream.
    Wrapped(tokio::io::ReadHalf<Box<dyn AsyncStream>>),
}

/// The write half of a [`Stream`].
pub enum WriteHalf {
    /// Of a plain TCP stream.
    Tcp(OwnedWriteHalf),
    /// Of a wrapped stream.
    Wrapped(tokio::io::WriteHalf<Box<dyn AsyncStream>>),
}

impl Stream {
    /// Splits the stream into halves that two tasks can own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Wrapped(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Wrapped(r), WriteHalf::Wrapped(w))
            }
        }
    }

    /// Whether the stream is wrapped (encrypted, for the tarn server).
    pub fn is_wrapped(&self) -> bool {
        matches!(self, Stream::Wrapped(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Wrapped(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Wrapped(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Wrapped(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Wrapped(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Wrapped(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Wrapped(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Wrapped(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Wrapped(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Who the other side of an accepted connection proved to be (for TLS: the
/// certificate it presented, already checked against the cluster CA).
pub trait PeerIdentity: Send + Sync {
    /// Whether the other side proved to be node `claimed` (the id its Hello
    /// or probe names). `Err` says why not, for the log.
    fn check(&self, claimed: NodeId) -> Result<(), String>;
}

/// An accepted connection, wrapped, and who the other side proved to be.
pub type Accepted = (Stream, Box<dyn PeerIdentity>);

/// Wraps peer connections (TLS, in the tarn server). Errors are the reason
/// a connection was refused, for the log.
pub trait PeerSecurity: std::fmt::Debug + Send + Sync + 'static {
    /// Wraps a connection this node dialed to node `peer`, checking that the
    /// other side proves to be `peer`.
    fn dial(&self, stream: TcpStream, peer: NodeId) -> BoxFuture<'_, Result<Stream, String>>;

    /// Wraps a connection this node accepted; the returned identity checks
    /// the node id the other side then claims.
    fn accept(&self, stream: TcpStream) -> BoxFuture<'_, Result<Accepted, String>>;
}
