//! Every secret a run carries, derived in one place for scrubbing logs,
//! reports and error messages (the refresh command's stderr among them).

use crate::config::Config;
use crate::secret::Secret;
use crate::vv::ConnectionSettings;

/// Every secret the settings and config carry, longest first, for scrubbing
/// logs, reports and error messages: the password; the host when it embeds the
/// ticket (Proxmox `pvespiceproxy:...`, see `link::error::shown_host`); the
/// proxy's user, password, `user:password` and its base64 form as sent in
/// `Proxy-Authorization`, each also percent-decoded; the credentials among
/// `reconnect.refresh_command`'s arguments ([`refresh_arg_secrets`]). Nothing
/// else: scrubbing an ordinary word or number (`--vmid 101`) would only
/// garble what a report shows.
pub fn secrets(settings: &ConnectionSettings, config: &Config) -> Vec<Secret> {
    let mut out: Vec<String> = Vec::new();
    if let Some(p) = &settings.password {
        out.push(p.expose().to_string());
    }
    if settings.shown_host() != settings.host {
        out.push(settings.host.clone());
    }
    if let Some(info) = settings
        .proxy
        .as_deref()
        .and_then(crate::link::proxy::userinfo)
    {
        let (user, pass) = info.split_once(':').unwrap_or((info, ""));
        // What connect_request puts on the wire.
        let sent = format!("{user}:{pass}");
        out.push(crate::base64::encode(sent.as_bytes()));
        for v in [info, user, pass, sent.as_str()] {
            out.push(v.to_string());
            out.push(percent_decode(v));
        }
    }
    if let Some((_, args)) = config.reconnect.refresh_command.split_first() {
        out.extend(refresh_arg_secrets(args));
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so a secret containing another is replaced whole.
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out.into_iter().map(Secret::new).collect()
}

/// Whether an option, variable or header name says its value is a
/// credential: it contains `password`, `passwd`, `passphrase`, `secret`,
/// `token`, `ticket`, `credential`, `auth` or `cookie`, ends in `key`, or is
/// `pass`, `pw` or `pwd` (case and `_`/`-` do not matter); unless it names
/// where the credential is (ends in `file`, `path`, `dir`, `url` or `uri`:
/// `--token-file` holds a path).
pub fn names_a_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    if ["file", "path", "dir", "url", "uri"]
        .iter()
        .any(|w| n.ends_with(w))
    {
        return false;
    }
    const WORDS: [&str; 9] = [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "ticket",
        "credential",
        "auth",
        "cookie",
    ];
    WORDS.iter().any(|w| n.contains(w))
        || n.ends_with("key")
        || matches!(n.as_str(), "pass" | "pw" | "pwd")
}

/// Where a refresh argument's secret starts (byte offset), if it holds one.
fn secret_offsets(args: &[String]) -> Vec<Option<usize>> {
    let env_name = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let header_name = |n: &str| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    for a in args {
        if std::mem::take(&mut value_next) {
            out.push(Some(0));
            continue;
        }
        let option = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .filter(|o| o.len() >= 2);
        let at = if let Some(o) = option {
            match o.split_once('=') {
                // --token=VALUE
                Some((name, _)) => {
                    names_a_credential(name).then(|| a.len() - o.len() + name.len() + 1)
                }
                // --token VALUE
                None => {
                    value_next = names_a_credential(o);
                    None
                }
            }
        } else if let Some((name, _)) = a.split_once('=').filter(|(n, _)| env_name(n)) {
            // PVE_TOKEN=VALUE, as `env` takes it
            names_a_credential(name).then_some(name.len() + 1)
        } else if let Some((name, value)) = a.split_once(':').filter(|(n, _)| header_name(n)) {
            // Authorization: VALUE, as `curl -H` takes it
            names_a_credential(name).then(|| a.len() - value.trim_start().len())
        } else {
            None
        };
        out.push(at.filter(|i| *i < a.len()));
    }
    out
}

/// The credentials among a refresh command's arguments (after the program):
/// the value after an option that names one (`--token VALUE`,
/// `--password=VALUE`, also with one dash), of an environment assignment
/// (`PVE_TOKEN=VALUE`, for `env`) or of a header (`Authorization: Bearer
/// VALUE`, for `curl -H`), as [`names_a_credential`] decides; each as the
/// value, its last word, and the whole argument (sorted, once each). Every other argument (a URL,
/// a node, a VM id, a file the credential is read from) is no secret.
pub fn refresh_arg_secrets(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (a, at) in args.iter().zip(secret_offsets(args)) {
        let Some(value) = at.and_then(|i| a.get(i..)) else {
            continue;
        };
        out.push(a.clone());
        out.push(value.to_string());
        if let Some(last) = value.split_whitespace().last() {
            out.push(last.to_string());
        }
    }
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

/// `argv` (program first) as a report shows it: each credential among the
/// arguments ([`refresh_arg_secrets`]) replaced by `<redacted>`, the rest kept.
pub fn redact_refresh_command(argv: &[String]) -> Vec<String> {
    let Some((prog, args)) = argv.split_first() else {
        return Vec::new();
    };
    let mut out = vec![prog.clone()];
    for (a, at) in args.iter().zip(secret_offsets(args)) {
        out.push(match at.and_then(|i| a.get(..i)) {
            Some(kept) => format!("{kept}{REDACTED}"),
            None => a.clone(),
        });
    }
    out
}

const REDACTED: &str = "<redacted>";

/// `%XX` sequences decoded (others kept as written); lossy on bad UTF-8.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(settings: &ConnectionSettings, config: &Config) -> Vec<String> {
        secrets(settings, config)
            .iter()
            .map(|s| s.expose().to_string())
            .collect()
    }

    #[test]
    fn secrets_cover_password_ticket_host_proxy_and_refresh_args() {
        let s = ConnectionSettings {
            host: "pvespiceproxy:T1CKET".into(),
            password: Some(Secret::new("pw")),
            proxy: Some("http://alice:pa/ss@proxy:3128".into()),
            ..Default::default()
        };
        let mut c = Config::default();
        c.reconnect.refresh_command = vec![
            "/bin/get".into(),
            "--token=XYZ".into(),
            "".into(),
            "--vmid".into(),
            "101".into(),
        ];
        let got = all(&s, &c);
        for want in [
            "pw",
            "pvespiceproxy:T1CKET",
            "alice",
            "pa/ss",
            "alice:pa/ss",
            "YWxpY2U6cGEvc3M=",
            "--token=XYZ",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
        assert!(
            !got.iter()
                .any(|g| ["/bin/get", "", "--vmid", "101"].contains(&g.as_str())),
            "{got:?}"
        );
        // Longest first.
        assert!(got.windows(2).all(|w| w[0].len() >= w[1].len()), "{got:?}");
        // An ordinary host is not a secret.
        let plain = ConnectionSettings {
            host: "spice.example".into(),
            ..Default::default()
        };
        assert!(all(&plain, &Config::default()).is_empty());
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Only credentials among the refresh arguments are secrets: values of
    /// options, assignments and headers whose name says so; never a URL, a
    /// node, a VM id or the file a credential is read from.
    #[test]
    fn refresh_arguments_are_secrets_only_when_named_so() {
        let a = args(&[
            "--url",
            "https://pve1.example:8006",
            "--node",
            "pve1",
            "--vmid",
            "101",
            "--token-file",
            "/etc/spiced/pve-token",
            "--password",
            "pw2",
            "--api-key=K3y",
            "-token",
            "t0k",
            "PVE_TOKEN=abc",
            "HOME=/root",
            "Authorization: Bearer qqq",
            "X-Trace: 1",
            "--verbose",
            "--secret",
        ]);
        let got = refresh_arg_secrets(&a);
        let mut want = args(&[
            "pw2",
            "--api-key=K3y",
            "K3y",
            "t0k",
            "PVE_TOKEN=abc",
            "abc",
            "Authorization: Bearer qqq",
            "Bearer qqq",
            "qqq",
        ]);
        want.sort();
        assert_eq!(got, want);
        let mut argv = vec!["/usr/bin/get".to_string()];
        argv.extend(a);
        assert_eq!(
            redact_refresh_command(&argv),
            args(&[
                "/usr/bin/get",
                "--url",
                "https://pve1.example:8006",
                "--node",
                "pve1",
                "--vmid",
                "101",
                "--token-file",
                "/etc/spiced/pve-token",
                "--password",
                "<redacted>",
                "--api-key=<redacted>",
                "-token",
                "<redacted>",
                "PVE_TOKEN=<redacted>",
                "HOME=/root",
                "Authorization: <redacted>",
                "X-Trace: 1",
                "--verbose",
                "--secret",
            ])
        );
    }

    #[test]
    fn credential_names() {
        for yes in [
            "password",
            "PASSWORD",
            "db_passwd",
            "token",
            "api-token",
            "apikey",
            "api_key",
            "access-key",
            "secret",
            "client-secret",
            "ticket",
            "auth",
            "Authorization",
            "Cookie",
            "pass",
            "pw",
            "credentials",
        ] {
            assert!(names_a_credential(yes), "{yes}");
        }
        for no in [
            "token-file",
            "password_file",
            "tokenfile",
            "key-path",
            "secret-dir",
            "auth-url",
            "vmid",
            "node",
            "url",
            "user",
            "host",
            "passenger",
            "keyboard",
        ] {
            assert!(!names_a_credential(no), "{no}");
        }
    }

    #[test]
    fn proxy_password_with_at_and_percent() {
        let s = ConnectionSettings {
            host: "h".into(),
            proxy: Some("b%40b:p@ss%2Fw@proxy".into()),
            ..Default::default()
        };
        let got = all(&s, &Config::default());
        for want in [
            "b%40b",
            "b@b",
            "p@ss%2Fw",
            "p@ss/w",
            "b%40b:p@ss%2Fw",
            "b@b:p@ss/w",
            &crate::base64::encode(b"b%40b:p@ss%2Fw"),
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
        // A user with no password is still a secret; so is `user:` as sent.
        let s = ConnectionSettings {
            proxy: Some("http://bob@proxy".into()),
            ..Default::default()
        };
        let got = all(&s, &Config::default());
        assert!(got.contains(&"bob".to_string()), "{got:?}");
        assert!(got.contains(&crate::base64::encode(b"bob:")), "{got:?}");
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%40b%2f"), "a@b/");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}
