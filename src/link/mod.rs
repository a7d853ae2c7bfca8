//! The I/O edge of a SPICE channel: connection settings in, a byte stream out
//! (TCP with socket options, HTTP CONNECT proxy, TLS with remote-viewer's
//! certificate rules), then the SPICE link handshake on top of [`Stream`].

pub mod connector;
pub mod error;
pub mod handshake;
pub mod proxy;
pub mod sockopt;
pub mod stream;
pub mod subject;
pub mod tls;
pub mod transport;

pub use connector::{ConnectFuture, Connector, ProbeFuture, TransportConnector};
pub use error::{TransportClass, TransportError};
pub use tls::TlsSetup;
pub use transport::{connect, probe, Io, Probe, Stream, Target};
