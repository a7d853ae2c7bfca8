//! Socket options every spiced TCP socket gets, from `[keepalive]` in the config.
//!
//! TCP_NODELAY (SPICE is request/answer traffic of small messages); TCP keepalive
//! (idle, interval, probes; `tcp_idle_secs = 0` turns it off) so a silently dead
//! idle path is found by the kernel; TCP_USER_TIMEOUT so data that stays
//! unacknowledged ends the connection quickly: with the default 25 s and the 15 s
//! application keepalive, a black-holed path is detected about 40 s after the last
//! byte received (the keepalive is sent at 15 s and never acknowledged).

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::KeepaliveConfig;

/// Applies the options to a socket before it connects.
pub fn apply(sock: SockRef<'_>, cfg: &KeepaliveConfig) -> std::io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if cfg.tcp_idle_secs > 0 {
        let ka = TcpKeepalive::new()
            .with_time(Duration::from_secs(u64::from(cfg.tcp_idle_secs)))
            .with_interval(Duration::from_secs(u64::from(cfg.tcp_interval_secs.max(1))))
            .with_retries(cfg.tcp_probes.max(1));
        sock.set_tcp_keepalive(&ka)?;
    } else {
        sock.set_keepalive(false)?;
    }
    if cfg.tcp_user_timeout_secs > 0 {
        sock.set_tcp_user_timeout(Some(Duration::from_secs(u64::from(
            cfg.tcp_user_timeout_secs,
        ))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> socket2::Socket {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()
    }

    #[test]
    fn defaults_reach_the_kernel() {
        let s = socket();
        apply(SockRef::from(&s), &KeepaliveConfig::default()).unwrap();
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(25)));
    }

    #[test]
    fn zero_disables() {
        let s = socket();
        let cfg = KeepaliveConfig {
            tcp_idle_secs: 0,
            tcp_user_timeout_secs: 0,
            ..KeepaliveConfig::default()
        };
        apply(SockRef::from(&s), &cfg).unwrap();
        assert!(s.tcp_nodelay().unwrap());
        assert!(!s.keepalive().unwrap());
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }
}
