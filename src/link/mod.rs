//! I/O edge of a channel link: transport (TCP, proxy, TLS) and the link handshake.

pub mod handshake;
