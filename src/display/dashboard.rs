//! `display.screen_png_secs`: the screen as a PNG file for a kiosk dashboard,
//! rewritten at most that often and only when the picture changed. The PNG
//! is encoded and written on a blocking thread (never on the event loop),
//! one write at a time, atomically: a temp file in the same directory renamed
//! over the target, so a reader sees the old picture or the new one. Off by
//! default: it is the one display feature that wakes an idle daemon (once
//! per period, to see whether the picture changed).

use super::screen::{Screen, Shot};
use crate::config::DisplayConfig;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the PNG goes without `display.screen_png` or `STATE_DIRECTORY`.
pub const DEFAULT_PATH: &str = "/var/lib/spiced/screen.png";

/// `display.screen_png`, else `$STATE_DIRECTORY/screen.png` (the first
/// directory systemd gave), else [`DEFAULT_PATH`].
pub fn path(cfg: &DisplayConfig, state_directory: Option<&OsStr>) -> PathBuf {
    if let Some(p) = &cfg.screen_png {
        return p.clone();
    }
    state_directory
        .and_then(|s| s.to_str())
        .and_then(|s| s.split(':').next())
        .filter(|s| !s.is_empty())
        .map_or_else(
            || PathBuf::from(DEFAULT_PATH),
            |d| Path::new(d).join("screen.png"),
        )
}

/// Stops the writer when dropped (with the daemon loop).
pub struct Dashboard(tokio::task::JoinHandle<()>);

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the writer when the mirror is on and `screen_png_secs` is set.
pub fn start(screen: &Screen, cfg: &DisplayConfig) -> Option<Dashboard> {
    if !screen.is_on() || cfg.screen_png_secs <= 0.0 {
        return None;
    }
    let every = crate::time::secs(cfg.screen_png_secs);
    let path = path(cfg, std::env::var_os("STATE_DIRECTORY").as_deref());
    tracing::info!(
        "writing the screen to {} every {} when it changed",
        path.display(),
        crate::time::fmt_dur(every)
    );
    Some(Dashboard(tokio::spawn(run(screen.clone(), path, every))))
}

/// The picture last written: a shot is written when it differs.
#[derive(Debug, Default)]
struct Written(Option<(u64, u32, u32)>);

impl Written {
    fn key(shot: &Shot) -> (u64, u32, u32) {
        (shot.changes, shot.frame.width, shot.frame.height)
    }
    fn wants(&self, shot: &Shot) -> bool {
        self.0 != Some(Self::key(shot))
    }
    fn done(&mut self, shot: &Shot) {
        self.0 = Some(Self::key(shot));
    }
}

async fn run(screen: Screen, path: PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = Written::default();
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(shot) = screen.shot().filter(|s| written.wants(s)) else {
            continue;
        };
        let (p, frame) = (path.clone(), shot.frame.clone());
        let job = tokio::task::spawn_blocking(move || {
            let written = frame.png().and_then(|png| write_atomic(&p, &png));
            drop(frame);
            crate::heap::release_free_memory();
            written
        });
        match job.await {
            Ok(Ok(())) => {
                written.done(&shot);
                if std::mem::take(&mut failing) {
                    tracing::info!("{} written again", path.display());
                }
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(
                    "cannot write the screen to {}: {e} (further failures are logged at debug level)",
                    path.display()
                );
            }
            Ok(Err(e)) => tracing::debug!("{} not written: {e}", path.display()),
            Err(_) => return,
        }
    }
}

/// `bytes` to `path` through a temp file in its directory (mode 0640: the
/// screen can show private data) renamed over it. Blocking.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fill, surface_create};
    use super::super::wire::msg;
    use super::*;
    use crate::display::screen::DisplaySink;

    #[test]
    fn the_path_is_the_option_else_the_state_directory() {
        let mut cfg = DisplayConfig::default();
        assert_eq!(path(&cfg, None), PathBuf::from(DEFAULT_PATH));
        assert_eq!(
            path(&cfg, Some(OsStr::new("/var/lib/spiced/k1:/other"))),
            PathBuf::from("/var/lib/spiced/k1/screen.png")
        );
        cfg.screen_png = Some("/srv/dash/k1.png".into());
        assert_eq!(
            path(&cfg, Some(OsStr::new("/x"))),
            PathBuf::from("/srv/dash/k1.png")
        );
    }

    /// A picture is written when it changed (a blink is no change), not on
    /// every period.
    #[test]
    fn written_when_the_picture_changed() {
        let screen = Screen::on(crate::display::Limits::default(), None);
        let feed = screen.attach(tokio::time::Instant::now()).unwrap();
        let mut w = Written::default();
        assert!(screen.shot().is_none());
        feed.message(
            msg::SURFACE_CREATE,
            &surface_create(0, 4, 2, true),
            Duration::ZERO,
        );
        feed.message(
            msg::DRAW_FILL,
            &fill(0, 0, 0, 2, 2, 0xff0000),
            Duration::ZERO,
        );
        let a = screen.shot().unwrap();
        assert!(w.wants(&a));
        w.done(&a);
        // Painted again with the same pixels: not wanted.
        feed.message(
            msg::DRAW_FILL,
            &fill(0, 0, 0, 2, 2, 0xff0000),
            Duration::from_secs(1),
        );
        assert!(!w.wants(&screen.shot().unwrap()));
        feed.message(
            msg::DRAW_FILL,
            &fill(0, 0, 0, 4, 2, 0x00ff00),
            Duration::from_secs(2),
        );
        assert!(w.wants(&screen.shot().unwrap()));
    }

    /// The writer task writes the screen atomically (0640, no temp file
    /// left) once there is one.
    #[tokio::test]
    async fn the_writer_writes_the_screen() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("screen.png");
        let screen = Screen::on(crate::display::Limits::default(), None);
        let cfg = DisplayConfig {
            screen_png_secs: 1.0,
            screen_png: Some(file.clone()),
            ..DisplayConfig::default()
        };
        assert!(start(&Screen::off(), &cfg).is_none());
        assert!(start(&screen, &DisplayConfig::default()).is_none());
        let _d = start(&screen, &cfg).unwrap();
        let feed = screen.attach(tokio::time::Instant::now()).unwrap();
        feed.message(
            msg::SURFACE_CREATE,
            &surface_create(0, 4, 2, true),
            Duration::ZERO,
        );
        feed.message(
            msg::DRAW_FILL,
            &fill(0, 0, 0, 2, 2, 0xff0000),
            Duration::ZERO,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (w, h, px) = crate::display::png::decode_rgb(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!((w, h, px[0]), (4, 2, 0xff0000));
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
