//! The one byte-stream type every channel runs over.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a channel reads and writes.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected channel transport (TCP, proxy tunnel, TLS, or a test double),
/// with the TCP socket under it when there is one: a channel may tune when the
/// kernel wakes it ([`Stream::set_recv_lowat`]), whatever runs on top.
pub struct Stream {
    io: Box<dyn Io>,
    /// The socket `io` owns (directly or through its layers): valid as long
    /// as `io` lives, which is as long as `self`.
    tcp: Option<RawFd>,
}

impl Stream {
    /// A transport without a TCP socket of its own (test doubles).
    pub fn new(io: impl Io + 'static) -> Stream {
        Stream {
            io: Box::new(io),
            tcp: None,
        }
    }

    /// A plain TCP connection.
    pub fn tcp(s: tokio::net::TcpStream) -> Stream {
        let fd = s.as_raw_fd();
        Stream {
            io: Box::new(s),
            tcp: Some(fd),
        }
    }

    /// `io` layered over `socket` (a proxy tunnel or TLS over the TCP
    /// connection it owns).
    pub fn layered(io: impl Io + 'static, socket: Option<RawFd>) -> Stream {
        Stream {
            io: Box::new(io),
            tcp: socket,
        }
    }

    /// The TCP socket under the stream, for a layer to carry on.
    pub fn socket(&self) -> Option<RawFd> {
        self.tcp
    }

    /// Asks the kernel to report the socket readable only once `bytes` are
    /// waiting (SO_RCVLOWAT; 1 is the default). The kernel still reports
    /// fewer bytes when the connection ends or its buffer fills, and lowering
    /// the mark reports at once what is already there. A stream without a
    /// socket ignores it.
    pub fn set_recv_lowat(&self, bytes: usize) -> io::Result<()> {
        match self.tcp {
            Some(fd) => set_lowat(fd, bytes),
            None => Ok(()),
        }
    }
}

/// SO_RCVLOWAT on `fd`, which the caller keeps open.
fn set_lowat(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket (the caller's guarantee); setsockopt
    // reads `v` only for the length given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Stream::tcp(c), s)
    }

    /// Whether the kernel reports the socket readable within `ms`.
    fn readable(s: &Stream, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: s.socket().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, the socket open while `s` lives.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[tokio::test]
    async fn a_mark_holds_bytes_until_reached_and_lowering_it_wakes_a_waiting_read() {
        let (mut s, mut server) = pair().await;
        s.set_recv_lowat(1000).unwrap();
        server.write_all(&[7; 10]).await.unwrap();
        assert!(!readable(&s, 100), "10 bytes under a mark of 1000");
        server.write_all(&[7; 990]).await.unwrap();
        assert!(readable(&s, 5000), "the mark reached");
        let mut buf = [0u8; 2000];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1000);

        // A read parked on the reactor under the mark completes once the
        // mark is lowered (the deadline's way out, crate::wake::lowat).
        server.write_all(&[7; 10]).await.unwrap();
        assert!(!readable(&s, 100));
        let fd = s.socket().unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            s.read(&mut buf).await.unwrap()
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!reader.is_finished());
        set_lowat(fd, 1).unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("lowering the mark wakes the read")
            .unwrap();
        assert_eq!(n, 10);
    }

    #[tokio::test]
    async fn a_stream_without_a_socket_ignores_marks() {
        let (a, _b) = tokio::io::duplex(64);
        let s = Stream::new(a);
        assert!(s.socket().is_none());
        s.set_recv_lowat(100_000).unwrap();
    }
}
