//! The seam between a session and the network: a [`Connector`] turns a channel's
//! [`Target`] into a byte stream. [`TransportConnector`] is the real one (TCP,
//! proxy, TLS from [`super::transport`]); tests put in-process servers behind the
//! same trait.

use super::{Probe, Stream, Target, TlsSetup, TransportError};
use crate::config::Config;
use crate::vv::ConnectionSettings;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Stream, TransportError>> + Send + 'a>>;

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Probe> + Send + 'a>>;

/// Opens the byte stream for one channel: plain or TLS, direct or through a proxy.
pub trait Connector: Send + Sync {
    fn connect(&self, target: Target) -> ConnectFuture<'_>;

    /// Whether `target` accepts connections right now, within `within`: a TCP
    /// connect (through the proxy: its CONNECT answer), closed at once, never a
    /// SPICE link. Connectors that cannot tell say `Unknown`.
    fn probe(&self, target: Target, within: std::time::Duration) -> ProbeFuture<'_> {
        let _ = (target, within);
        Box::pin(async { Probe::Unknown })
    }
}

/// Connects with the settings of one .vv.
pub struct TransportConnector {
    pub settings: Arc<ConnectionSettings>,
    pub config: Arc<Config>,
    /// Built once per .vv (off the event loop), only when it has a tls-port.
    pub tls: Option<Arc<TlsSetup>>,
}

impl Connector for TransportConnector {
    fn connect(&self, target: Target) -> ConnectFuture<'_> {
        Box::pin(async move {
            super::connect(&self.settings, &self.config, self.tls.as_deref(), &target).await
        })
    }

    fn probe(&self, target: Target, within: std::time::Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            super::transport::probe(&self.settings, &self.config, &target, within).await
        })
    }
}
