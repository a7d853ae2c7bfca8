//! What the daemon shell touches outside itself — the network, the file system,
//! systemd, child processes, signals — gathered in one [`Env`] so tests run the
//! whole loop against fakes in paused time.

use super::core::{LoadError, Loaded, Signal};
use crate::config::Config;
use crate::link::{Connector, TlsSetup, TransportConnector};
use crate::report::{LogRing, ReportJob, SharedCapture};
use crate::secret::Secret;
use crate::systemd::{Notifier, SdNotify};
use crate::vv::{self, ConnectionSettings};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

pub use crate::vv::Stamp;

/// One read of the .vv: the file read and what came of it.
pub struct VvRead {
    /// The file read (a regular file's identity, from the open file): a
    /// different file at the path later is a new one.
    pub stamp: Option<Stamp>,
    pub result: Result<Loaded, LoadError>,
}

/// Reads and checks the .vv (blocking; run off the loop). `delete`: honour
/// `delete-this-file=1`.
pub type LoadVv = Arc<dyn Fn(&Path, &Config, bool) -> VvRead + Send + Sync>;
/// Opens channel streams for one session's settings.
pub type MakeConnector = Arc<
    dyn Fn(Arc<ConnectionSettings>, Arc<Config>, Option<Arc<TlsSetup>>) -> Arc<dyn Connector>
        + Send
        + Sync,
>;
/// Writes one report (blocking; run off the loop).
pub type WriteReport =
    Arc<dyn Fn(ReportJob, Option<SharedCapture>) -> Result<PathBuf, String> + Send + Sync>;
pub type RefreshFuture = Pin<Box<dyn Future<Output = Result<Loaded, String>> + Send>>;
/// Runs the refresh command; its stdout is a fresh .vv.
pub type Refresh = Arc<dyn Fn(Arc<Config>, Vec<Secret>) -> RefreshFuture + Send + Sync>;

pub struct Env {
    pub notifier: Arc<dyn Notifier>,
    pub connector: MakeConnector,
    pub load_vv: LoadVv,
    pub write_report: WriteReport,
    pub refresh: Refresh,
    /// The regular file at the .vv path now (blocking; run off the loop).
    pub stamp: fn(&Path) -> Option<Stamp>,
    /// Where subscribe lines go (the log layer feeds the same hub).
    pub hub: crate::control::Hub,
    /// The instance name (`SPICED_INSTANCE`): status and metrics labels.
    pub instance: String,
    /// The process's own timer ([`crate::wake`]): a timerfd; tokio's timer
    /// in tests, so paused time drives it.
    pub alarm: fn() -> crate::wake::Alarm,
}

impl Env {
    /// The real world. `ring` feeds `log.txt` in reports; `hub` is the one the
    /// log layer forwards key events to.
    pub fn real(ring: LogRing, hub: crate::control::Hub) -> Env {
        Env {
            notifier: Arc::new(SdNotify),
            connector: Arc::new(|settings, config, tls| {
                Arc::new(TransportConnector {
                    settings,
                    config,
                    tls,
                })
            }),
            load_vv: Arc::new(load_vv),
            write_report: Arc::new(move |job, capture| {
                let dir = job.spool.clone();
                let cfg = job.report_config.clone();
                let (name, wall) = (job.file_name.clone(), job.wall);
                let capture = capture.and_then(|c| {
                    let mut g = c.lock().ok()?;
                    Some(if job.session_goes_on {
                        g.clone()
                    } else {
                        g.take()
                    })
                });
                let input = job.into_input(capture, ring.snapshot());
                let written = crate::report::write_report_named(&dir, &cfg, &input, wall, &name);
                drop(input);
                crate::heap::release_free_memory();
                written.map_err(|e| e.to_string())
            }),
            refresh: Arc::new(|config, secrets| Box::pin(refresh(config, secrets))),
            stamp: Stamp::at,
            hub,
            instance: crate::metrics::instance_name(
                std::env::var(crate::metrics::INSTANCE_ENV).ok().as_deref(),
            ),
            alarm: crate::wake::Alarm::timerfd,
        }
    }
}

/// The real .vv load: parse (deleting a single-use file once read), then the TLS
/// material, whose root-store scan is blocking too.
pub fn load_vv(path: &Path, config: &Config, delete: bool) -> VvRead {
    let file = vv::read(path, delete);
    let result = match file.parsed {
        Err(e) => Err(LoadError {
            message: e.to_string(),
            no_file: file.missing,
        }),
        Ok(parsed) => tls_setup(&parsed.settings, config)
            .map(|tls| Loaded {
                settings: parsed.settings,
                warnings: parsed.warnings,
                tls,
            })
            .map_err(|e| format!("{}: {e}", path.display()).into()),
    };
    VvRead {
        stamp: file.stamp,
        result,
    }
}

/// Settings that did not come from a file (a live migration's target), with
/// their TLS material.
pub fn prepare(settings: ConnectionSettings, config: &Config) -> Result<Loaded, String> {
    let tls = tls_setup(&settings, config).map_err(|e| e.to_string())?;
    Ok(Loaded {
        settings,
        warnings: Vec::new(),
        tls,
    })
}

/// TLS material, built once per .vv — only when the .vv has a tls-port.
fn tls_setup(
    s: &ConnectionSettings,
    config: &Config,
) -> Result<Option<Arc<TlsSetup>>, crate::link::TransportError> {
    TlsSetup::for_settings(s, &config.tls).map(|t| t.map(Arc::new))
}

async fn refresh(config: Arc<Config>, secrets: Vec<Secret>) -> Result<Loaded, String> {
    let argv = config.reconnect.refresh_command.clone();
    let timeout = crate::time::secs(config.reconnect.refresh_timeout_secs);
    let parsed = crate::refresh::run(argv, timeout, secrets).await?;
    let cfg = config.clone();
    let tls =
        tokio::task::spawn_blocking(move || tls_setup(&parsed.settings, &cfg).map(|t| (parsed, t)))
            .await
            .map_err(|e| format!("refresh command output: {e}"))?;
    let (parsed, tls) = tls.map_err(|e| format!("refresh command output: {e}"))?;
    Ok(Loaded {
        settings: parsed.settings,
        warnings: parsed.warnings,
        tls,
    })
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR1 into the loop's signal queue.
pub fn forward_signals(tx: mpsc::UnboundedSender<Signal>) -> std::io::Result<()> {
    for (kind, sig) in [
        (SignalKind::terminate(), Signal::Terminate),
        (SignalKind::interrupt(), Signal::Terminate),
        (SignalKind::hangup(), Signal::Hangup),
        (SignalKind::user_defined1(), Signal::Reconnect),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
