//! The one byte-stream type every channel runs over.

use tokio::io::{AsyncRead, AsyncWrite};

/// What a channel reads and writes.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected channel transport (TCP, proxy tunnel, TLS, or a test double).
pub type Stream = Box<dyn Io>;
