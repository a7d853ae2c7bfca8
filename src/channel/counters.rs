//! Per-channel traffic counters, kept by each channel task and snapshotted into
//! disconnect reports. Times are seconds since the session started.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub last_recv_ts_secs: Option<f64>,
    pub last_send_ts_secs: Option<f64>,
    pub last_ping_recv_ts_secs: Option<f64>,
    pub last_client_keepalive_send_ts_secs: Option<f64>,
    pub ping_recv_count: u32,
    pub pong_send_count: u32,
    pub client_keepalive_send_count: u32,
    /// Messages the server sent in answer to a keepalive (spice-server sends none
    /// for ACK_SYNC; a non-zero value here means the keepalive perturbs the server).
    pub keepalive_replies: u32,
    pub ack_send_count: u32,
    pub connected_at_secs: Option<f64>,
    pub closed_at_secs: Option<f64>,
    pub close_reason: Option<String>,
}
