//! Test code only: the parent declares this module under #[cfg(test)].
use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::io::AsyncReadExt;

fn ctx(status: Status) -> (ServerCtx, watch::Sender<Arc<Status>>, mpsc::Receiver<()>) {
    let (stx, srx) = watch::channel(Arc::new(status));
    let (rtx, rrx) = mpsc::channel(4);
    (
        ServerCtx {
            instance: Arc::from("t1"),
            status: srx,
            hub: Hub::new(8),
            reconnect: rtx,
            screen: crate::display::screen::Screen::off(),
        },
        stx,
        rrx,
    )
}

async fn line(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> serde_json::Value {
    let mut s = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut s))
        .await
        .expect("an answer")
        .unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

async fn connect(
    path: &Path,
) -> (
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
) {
    let s = UnixStream::connect(path).await.unwrap();
    let (r, w) = s.into_split();
    (BufReader::new(r), w)
}

/// status, reconnect, subscribe (a snapshot, then hub lines), errors, an
/// oversized request, and a subscriber that stops reading is dropped while
/// another keeps getting every line.
#[tokio::test]
async fn the_protocol_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let st = Status {
        state: "connected",
        channels_up: 11,
        channels_total: 11,
        ..Status::default()
    };
    let (c, stx, mut reconnects) = ctx(st);
    let hub = c.hub.clone();
    let server = tokio::spawn(serve(listener, c));

    let (mut r, mut w) = connect(&path).await;
    w.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
    let v = line(&mut r).await;
    assert_eq!(
        (
            v["version"].clone(),
            v["type"].clone(),
            v["instance"].clone()
        ),
        (1.into(), "status".into(), "t1".into())
    );
    assert_eq!(
        (v["state"].clone(), v["channels_up"].clone()),
        ("connected".into(), 11.into())
    );
    stx.send_replace(Arc::new(Status {
        state: "pending",
        attempt: Some(2),
        attempt_budget: Some(3),
        ..Status::default()
    }));
    w.write_all(b"\n{\"cmd\":\"status\"}\n").await.unwrap();
    let v = line(&mut r).await;
    assert_eq!(
        (v["state"].clone(), v["attempt"].clone()),
        ("pending".into(), 2.into())
    );
    w.write_all(b"{\"cmd\":\"reconnect\"}\n").await.unwrap();
    assert_eq!(line(&mut r).await["type"], "ok");
    assert_eq!(reconnects.recv().await, Some(()));
    w.write_all(b"{\"cmd\":\"nope\"}\n").await.unwrap();
    let v = line(&mut r).await;
    assert_eq!(v["type"], "error");
    assert!(v["error"].as_str().unwrap().contains("unknown cmd"));
    // Too long: an error, then the connection is closed.
    w.write_all(&vec![b'x'; MAX_REQUEST + 10]).await.unwrap();
    let v = line(&mut r).await;
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    let mut rest = String::new();
    assert_eq!(r.read_to_string(&mut rest).await.unwrap(), 0);

    // Two subscribers: one reads, one never does.
    let (mut good, mut gw) = connect(&path).await;
    gw.write_all(b"{\"cmd\":\"subscribe\"}\n").await.unwrap();
    assert_eq!(
        line(&mut good).await["state"],
        "pending",
        "a snapshot first"
    );
    let stuck = UnixStream::connect(&path).await.unwrap();
    let (mut stuck_r, mut stuck_w) = stuck.into_split();
    stuck_w
        .write_all(b"{\"cmd\":\"subscribe\"}\n")
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), async {
        while hub.subscribers() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok());
    // Far more than the ring (8) and the socket buffer hold, in bursts the
    // reading subscriber keeps up with.
    let big = "y".repeat(2000);
    let start = std::time::Instant::now();
    for i in 0..400 {
        hub.publish(format!("{{\"n\":{i},\"pad\":\"{big}\"}}"));
        let v = line(&mut good).await;
        assert_eq!(v["n"], i);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The stuck one was dropped: its connection ends after what was buffered.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            match stuck_r.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the stuck subscriber's connection is closed");
    assert!(
        drained < 400 * 2000,
        "it did not get everything: {drained} bytes"
    );
    assert_eq!(hub.subscribers(), 1);
    server.abort();
}

#[tokio::test]
async fn too_many_clients_are_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = bind(&path).unwrap();
    let (c, _stx, _r) = ctx(Status::default());
    let server = tokio::spawn(serve(listener, c));
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let (mut r, mut w) = connect(&path).await;
        w.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        line(&mut r).await;
        held.push((r, w));
    }
    let (mut r, _w) = connect(&path).await;
    let v = line(&mut r).await;
    assert!(
        v["error"].as_str().unwrap().contains("too many clients"),
        "{v}"
    );
    server.abort();
}

/// Subscribers that went away give their slot back at once, with nothing
/// published to find out by a failed write: twice as many one-off
/// subscribers as there are slots come and go (half of them half-close and
/// wait for the server to let go, half just close), then `status` is
/// answered.
#[tokio::test]
async fn subscribers_that_went_away_release_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = bind(&path).unwrap();
    let (c, _stx, _r) = ctx(Status::default());
    let hub = c.hub.clone();
    let server = tokio::spawn(serve(listener, c));
    for i in 0..2 * MAX_CLIENTS {
        let (mut r, mut w) = connect(&path).await;
        w.write_all(b"{\"cmd\":\"subscribe\"}\n").await.unwrap();
        assert_eq!(line(&mut r).await["type"], "status", "client {i}");
        if i % 2 == 0 {
            w.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest))
                .await
                .map(|r| r.is_ok());
            assert_eq!(
                closed,
                Ok(true),
                "client {i}: the server still holds a subscriber that closed"
            );
        }
    }
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while hub.subscribers() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(gone.is_ok(), "{} subscribers still held", hub.subscribers());
    let (mut r, mut w) = connect(&path).await;
    w.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
    let v = line(&mut r).await;
    assert_eq!(v["type"], "status", "{v}");
    server.abort();
}

#[test]
fn the_socket_path_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("s.sock");
    // A regular file is never replaced.
    std::fs::write(&path, "keep").unwrap();
    let e = bind(&path).unwrap_err();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
    std::fs::remove_file(&path).unwrap();
    // A stale socket (nobody listening) is replaced; a live one is refused.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let live = bind(&path).expect("a stale socket is replaced");
        let e = bind(&path).unwrap_err();
        assert!(e.contains("another process is listening"), "{e}");
        drop(live);
    });
    std::fs::remove_file(&path).unwrap();
    // A directory others can write to, not sticky: refused; sticky (/tmp): fine.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = bind(&path).unwrap_err();
    assert!(e.contains("writable by other users"), "{e}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    rt.block_on(async {
        bind(&path).expect("sticky is fine");
    });
    let e = bind(&dir.path().join("none/s.sock")).unwrap_err();
    assert!(e.contains("its directory"), "{e}");
}

/// Another user is refused by the daemon itself (SO_PEERCRED), even if the
/// socket's mode is loosened by hand. Needs root to switch users.
#[tokio::test]
async fn another_user_is_refused_even_through_a_loosened_mode() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to connect as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("c.sock");
    let listener = bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (c, _stx, _r) = ctx(Status::default());
    let server = tokio::spawn(serve(listener, c));
    let answer = tokio::task::spawn_blocking(move || read_as(65534, &path))
        .await
        .unwrap();
    assert!(answer.contains("permission denied"), "{answer:?}");
    server.abort();
}

/// Connects to `sock` as `uid` from a forked child, sends a status request
/// and returns the first bytes of the answer.
fn read_as(uid: u32, sock: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(sock.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let req = b"{\"cmd\":\"status\"}\n";
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array; the child only makes
    // async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            libc::close(fds[0]);
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(100);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if rc != 0 {
                libc::_exit(101);
            }
            libc::write(fd, req.as_ptr().cast(), req.len());
            let mut buf = [0u8; 512];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                libc::write(fds[1], buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fds[0]);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        assert_eq!(libc::WEXITSTATUS(st), 0, "the child could not connect");
        String::from_utf8_lossy(&out).into_owned()
    }
}
