//! `reconnect.refresh_command`: runs the configured program and reads a fresh
//! .vv from its stdout. Everything it reads is bounded (stdout to one .vv file
//! plus a byte, stderr to a few KiB), a timeout kills it, and the error string
//! (which goes to logs and reports) never holds a secret or a control character.

use crate::secret::Secret;
use crate::vv;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// stderr bytes read from the command; only its first line is reported.
const STDERR_LIMIT: u64 = 4 * 1024;
/// Longest stderr excerpt in an error message, in characters.
const EXCERPT_CHARS: usize = 200;

/// Runs `argv` (program and arguments, no shell) with stdin closed; its stdout
/// must be a .vv file. `secrets` (see `crate::scrub::secrets`) are scrubbed
/// from the stderr excerpt of a failure. The child is killed on timeout, on
/// oversized output and if this future is dropped.
pub async fn run(
    argv: Vec<String>,
    timeout: Duration,
    secrets: Vec<Secret>,
) -> Result<vv::Parsed, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("reconnect.refresh_command is empty".into());
    };
    // The program path is shown; its arguments may hold tokens and never are.
    let prog_shown = crate::text::printable(prog);
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("refresh command {prog_shown}: cannot start: {e}"))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("refresh command {prog_shown}: no output pipes"));
    };
    let limit = vv::MAX_FILE_BYTES as u64 + 1;
    let work = async {
        // Both pipes are read at once so a chatty stderr cannot block stdout.
        let (out, err) = tokio::join!(
            read_bounded(stdout, limit),
            read_bounded(stderr, STDERR_LIMIT)
        );
        let out =
            out.map_err(|e| format!("refresh command {prog_shown}: reading its output: {e}"))?;
        if out.len() as u64 >= limit {
            return Err(format!(
                "refresh command {prog_shown}: output larger than a .vv file may be ({} bytes)",
                vv::MAX_FILE_BYTES
            ));
        }
        // stderr is only an excerpt: a read error there leaves it empty.
        let err = err.unwrap_or_default();
        let status = child
            .wait()
            .await
            .map_err(|e| format!("refresh command {prog_shown}: {e}"))?;
        Ok((out, err, status))
    };
    let (out, err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(msg)) => {
            kill(&mut child).await;
            return Err(msg);
        }
        Err(_) => {
            kill(&mut child).await;
            return Err(format!(
                "refresh command {prog_shown} did not finish within {:.0} s (killed)",
                timeout.as_secs_f64()
            ));
        }
    };
    if !status.success() {
        return Err(format!(
            "refresh command {prog_shown} failed ({status}): {}",
            excerpt(&err, &secrets)
        ));
    }
    vv::parse(&out, "refresh_command output").map_err(|e| e.to_string())
}

/// At most `limit` bytes; the pipe is closed after that (a child still writing
/// gets EPIPE rather than filling our memory).
async fn read_bounded(r: impl AsyncRead + Unpin, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Kills and reaps the child (best effort: it may have exited already).
async fn kill(child: &mut tokio::process::Child) {
    let _ = child.kill().await;
}

/// The first line of `stderr`, secrets replaced, control characters escaped, at
/// most [`EXCERPT_CHARS`] characters. Secrets go first, so neither escaping nor
/// cutting can leave one recognisable.
fn excerpt(stderr: &[u8], secrets: &[Secret]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut first = text.lines().next().unwrap_or("").to_string();
    crate::report::scrub_string(&mut first, secrets);
    let escaped = crate::text::printable(&first);
    let mut out: String = escaped.chars().take(EXCERPT_CHARS).collect();
    if out.len() < escaped.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, extra: &[&str]) -> Vec<String> {
        let mut v = vec!["/bin/sh".to_string(), "-c".into(), script.into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[tokio::test]
    async fn success_parses_the_vv_on_stdout() {
        let p = run(
            sh(
                "printf '[virt-viewer]\\ntype=spice\\nhost=fresh.example\\nport=5900\\n'",
                &[],
            ),
            Duration::from_secs(10),
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(p.settings.host, "fresh.example");
        assert_eq!(p.settings.port, Some(5900));
    }

    #[tokio::test]
    async fn failure_message_is_scrubbed_escaped_and_short() {
        // $0 is the first argument after the script: the token.
        let e = run(
            sh(
                "printf 'token %s refused \\033[31mred\\r\\n2nd line\\n' \"$0\" >&2; exit 3",
                &["T0KEN-s3cret"],
            ),
            Duration::from_secs(10),
            vec![Secret::new("T0KEN-s3cret")],
        )
        .await
        .unwrap_err();
        assert!(!e.contains("T0KEN-s3cret"), "{e}");
        assert!(e.contains("token <redacted> refused \\x1b[31mred"), "{e}");
        assert!(!e.contains('\x1b') && !e.contains('\r'), "{e:?}");
        assert!(!e.contains("2nd line"), "{e}");
        assert!(
            e.starts_with("refresh command /bin/sh failed (exit status: 3): "),
            "{e}"
        );

        let e = run(
            sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1", &[]),
            Duration::from_secs(10),
            vec![],
        )
        .await
        .unwrap_err();
        assert!(e.chars().count() < 300, "{e}");
        assert!(e.ends_with('…'), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let started = std::time::Instant::now();
        let e = run(
            sh(
                "echo $$ > \"$0\"; exec sleep 30",
                &[pidfile.to_str().unwrap()],
            ),
            Duration::from_millis(500),
            vec![],
        )
        .await
        .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(e.contains("(killed)"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc = format!("/proc/{}", pid.trim());
        assert!(!std::path::Path::new(&proc).exists(), "{proc} still there");
    }

    #[tokio::test]
    async fn huge_output_is_refused() {
        let e = run(
            sh("head -c 5000000 /dev/zero", &[]),
            Duration::from_secs(20),
            vec![],
        )
        .await
        .unwrap_err();
        assert!(e.contains("output larger than a .vv file may be"), "{e}");
        // An endless writer is stopped too, not read forever.
        let e = run(sh("yes", &[]), Duration::from_secs(20), vec![])
            .await
            .unwrap_err();
        assert!(e.contains("output larger"), "{e}");
    }

    #[tokio::test]
    async fn empty_argv_and_missing_program() {
        let e = run(vec![], Duration::from_secs(1), vec![])
            .await
            .unwrap_err();
        assert_eq!(e, "reconnect.refresh_command is empty");
        let e = run(
            vec!["/nonexistent/refresh".into(), "SECRETARG".into()],
            Duration::from_secs(1),
            vec![],
        )
        .await
        .unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
        assert!(!e.contains("SECRETARG"), "{e}");
    }
}
