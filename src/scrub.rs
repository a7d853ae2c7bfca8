//! Every secret a run carries, derived in one place for scrubbing logs,
//! reports and error messages (the refresh command's stderr among them).

use crate::config::Config;
use crate::secret::Secret;
use crate::vv::ConnectionSettings;

/// Every secret the settings and config carry, longest first, for scrubbing
/// logs, reports and error messages: the password; the host when it embeds the
/// ticket (Proxmox `pvespiceproxy:...`, see `link::error::shown_host`); the
/// proxy's user, password, `user:password` and its base64 form as sent in
/// `Proxy-Authorization`, each also percent-decoded; every non-empty argument of
/// `reconnect.refresh_command` after the program (they may hold API tokens).
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
        out.push(crate::link::proxy::base64(sent.as_bytes()));
        for v in [info, user, pass, sent.as_str()] {
            out.push(v.to_string());
            out.push(percent_decode(v));
        }
    }
    if let Some((_, args)) = config.reconnect.refresh_command.split_first() {
        out.extend(args.iter().cloned());
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so a secret containing another is replaced whole.
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out.into_iter().map(Secret::new).collect()
}

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
        c.reconnect.refresh_command = vec!["/bin/get".into(), "--token=XYZ".into(), "".into()];
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
            !got.iter().any(|g| g == "/bin/get" || g.is_empty()),
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
            &crate::link::proxy::base64(b"b%40b:p@ss%2Fw"),
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
        assert!(
            got.contains(&crate::link::proxy::base64(b"bob:")),
            "{got:?}"
        );
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
