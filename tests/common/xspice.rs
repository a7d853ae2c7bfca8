//! A real X desktop served over SPICE: Xorg with the spiceqxl driver
//! (Debian's xserver-xspice) on a free display and port of 127.0.0.1,
//! started directly (the Xspice wrapper script deadlocks on SIGTERM; its
//! `--auto` config crashes this Xorg), as a child of the test. X clients
//! (xterm, x11perf, xsetroot) run against it with [`Xspice::client`];
//! [`Xspice::xwd_root`] is the X server's own view of its screen (`xwd
//! -root`). Channels: main, display, inputs, cursor.

use super::{free_port, port_accepts, spawn_tied, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Xspice {
    child: Child,
    port: u16,
    display: u32,
    dir: tempfile::TempDir,
    clients: Vec<Child>,
}

const XORG: &str = "/usr/lib/xorg/Xorg";
const DRIVER: &str = "/usr/lib/xorg/modules/drivers/spiceqxl_drv.so";

/// Whether Xorg with the spiceqxl driver and the X clients the tests use are
/// installed; without them: panics when env `CI` is set, else says so.
pub fn require_xspice() -> bool {
    let ok = std::path::Path::new(XORG).exists()
        && std::path::Path::new(DRIVER).exists()
        && ["xwd", "xterm", "x11perf", "xsetroot"]
            .iter()
            .chain(["xdotool"].iter())
            .all(|p| super::have_program(p));
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "Xorg, spiceqxl or the X clients missing in CI (scripts/install-deps.sh)"
        );
        eprintln!(
            "skipping: xserver-xspice, xterm, x11-apps, x11-utils, x11-xserver-utils or xdotool not installed"
        );
    }
    ok
}

fn config(port: u16, width: u32, height: u32, options: &[(&str, &str)]) -> String {
    let extra: String = options
        .iter()
        .map(|(k, v)| format!("    Option \"{k}\" \"{v}\"\n"))
        .collect();
    include_str!("../xspice/xorg.conf.in")
        .replace("{port}", &port.to_string())
        .replace("{width}", &width.to_string())
        .replace("{height}", &height.to_string())
        .replace("{extra}", &extra)
}

impl Xspice {
    /// Xorg serving a `width` x `height` desktop (a mode the driver knows,
    /// e.g. 1024x768), listening for SPICE.
    pub fn start(width: u32, height: u32) -> Xspice {
        Xspice::start_with(width, height, &[])
    }

    /// [`Xspice::start`] with more driver options (`("SpiceImageCompression",
    /// "quic")`, ...).
    pub fn start_with(width: u32, height: u32, options: &[(&str, &str)]) -> Xspice {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last = String::new();
        // Another test (or helper) may take the display or port we picked.
        for attempt in 0..8u32 {
            let port = free_port();
            let Some(display) = (40 + attempt * 7..200).find(|n| {
                !std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
                    && !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            }) else {
                break;
            };
            let conf = dir.path().join("xorg.conf");
            std::fs::write(&conf, config(port, width, height, options)).expect("write xorg.conf");
            let mut cmd = Command::new(XORG);
            cmd.arg("-config")
                .arg(&conf)
                .arg("-logfile")
                .arg(dir.path().join("xorg.log"))
                .args(["-nolisten", "tcp", "-noreset"])
                .arg(format!(":{display}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("xorg.out")).expect("xorg.out"));
            let mut child = spawn_tied(cmd).expect("start Xorg");
            let up = wait_until(Duration::from_secs(20), || {
                port_accepts(port) || child.try_wait().ok().flatten().is_some()
            });
            if up && child.try_wait().ok().flatten().is_none() && port_accepts(port) {
                return Xspice {
                    child,
                    port,
                    display,
                    dir,
                    clients: Vec::new(),
                };
            }
            super::kill_child(&mut child);
            last = std::fs::read_to_string(dir.path().join("xorg.out")).unwrap_or_default();
        }
        panic!("Xorg with spiceqxl did not start: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }

    /// An X client on this desktop (stdout and stderr to files in the
    /// helper's directory); killed when the desktop is dropped.
    pub fn client(&mut self, program: &str, args: &[&str]) -> &mut Child {
        let mut cmd = Command::new(program);
        let n = self.clients.len();
        cmd.args(args)
            .env("DISPLAY", self.display())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join(format!("c{n}.out"))).unwrap())
            .stderr(std::fs::File::create(self.dir.path().join(format!("c{n}.err"))).unwrap());
        self.clients
            .push(spawn_tied(cmd).expect("start an X client"));
        self.clients.last_mut().unwrap()
    }

    /// Runs an X client to its end (bounded), returning whether it succeeded.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> bool {
        let mut child = spawn_tied({
            let mut c = Command::new(program);
            c.args(args)
                .env("DISPLAY", self.display())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        })
        .expect("run an X client");
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            super::kill_child(&mut child);
        }
        status.is_some_and(|s| s.success())
    }

    /// Ends every client started with [`Xspice::client`].
    pub fn kill_clients(&mut self) {
        for c in &mut self.clients {
            super::kill_child(c);
        }
        self.clients.clear();
    }

    /// An invisible pointer over the root window (`xsetroot -cursor` with an
    /// empty bitmap and mask).
    pub fn blank_root_pointer(&self) {
        let xbm = self.dir.path().join("empty.xbm");
        std::fs::write(
            &xbm,
            "#define e_width 8\n#define e_height 8\n#define e_x_hot 0\n#define e_y_hot 0\n\
             static char e_bits[] = {\n   0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};\n",
        )
        .expect("write empty.xbm");
        let p = xbm.to_string_lossy().to_string();
        assert!(
            self.run("xsetroot", &["-cursor", &p, &p], Duration::from_secs(10)),
            "xsetroot -cursor"
        );
    }

    /// Moves the pointer to (x, y). The X server draws some pointer shapes
    /// into its framebuffer (what SPICE sends), which `xwd` leaves out: a
    /// comparison parks it over the bare root window first.
    pub fn pointer_to(&self, x: u32, y: u32) {
        assert!(
            self.run(
                "xdotool",
                &["mousemove", &x.to_string(), &y.to_string()],
                Duration::from_secs(10)
            ),
            "xdotool mousemove"
        );
    }

    /// The X server's own view of the whole screen: `xwd -root`, as
    /// 0x00RRGGBB pixels.
    pub fn xwd_root(&self) -> (u32, u32, Vec<u32>) {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display()])
            .output()
            .expect("run xwd");
        assert!(out.status.success(), "xwd failed: {:?}", out);
        parse_xwd(&out.stdout).expect("an XWD image (ZPixmap, 24/32 bits)")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("xorg.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Xspice {
    fn drop(&mut self) {
        self.kill_clients();
        // SIGTERM: Xorg removes its lock and socket; SIGKILL if it lingers.
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let gone = wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !gone {
            super::kill_child(&mut self.child);
            let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
            let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
        }
    }
}

/// An XWD file (what `xwd` writes: a big-endian header, the colormap, then
/// ZPixmap rows in the image's byte order) as 0x00RRGGBB pixels. Only the
/// 24/32-bit TrueColor images of a depth-24 screen.
pub fn parse_xwd(b: &[u8]) -> Option<(u32, u32, Vec<u32>)> {
    let h = |i: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            b.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    let header_size = h(0)? as usize;
    let (format, width, height) = (h(2)?, h(4)?, h(5)?);
    let byte_order = h(7)?;
    let bpp = h(11)?;
    let bytes_per_line = h(12)? as usize;
    let (rm, gm, bm) = (h(14)?, h(15)?, h(16)?);
    let ncolors = h(19)? as usize;
    if format != 2 || bpp != 32 {
        return None;
    }
    let data = header_size + 12 * ncolors;
    let shift = |m: u32| m.trailing_zeros();
    let mut px = Vec::with_capacity((width * height) as usize);
    for y in 0..height as usize {
        let row = b.get(data + y * bytes_per_line..data + (y + 1) * bytes_per_line)?;
        for x in 0..width as usize {
            let q: [u8; 4] = row.get(4 * x..4 * x + 4)?.try_into().ok()?;
            let v = if byte_order == 0 {
                u32::from_le_bytes(q)
            } else {
                u32::from_be_bytes(q)
            };
            let ch = |m: u32| (v & m) >> shift(m);
            px.push((ch(rm) << 16) | (ch(gm) << 8) | ch(bm));
        }
    }
    Some((width, height, px))
}

/// Writes `px` (0x00RRGGBB) as an XWD file `xwud -in` shows: ZPixmap,
/// depth 24, 32 bits per pixel, TrueColor, little-endian pixels.
pub fn write_xwd(path: &std::path::Path, width: u32, height: u32, px: &[u32]) {
    let name = b"spiced\0";
    let header_size = 100 + name.len() as u32;
    let fields: [u32; 25] = [
        header_size,
        7,
        2,
        24,
        width,
        height,
        0,
        0,
        32,
        0,
        32,
        32,
        width * 4,
        4,
        0xff0000,
        0xff00,
        0xff,
        8,
        256,
        0,
        width,
        height,
        0,
        0,
        0,
    ];
    let mut b = Vec::new();
    for f in fields {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(name);
    for p in px {
        b.extend_from_slice(&p.to_le_bytes());
    }
    std::fs::write(path, b).expect("write the XWD file");
}
