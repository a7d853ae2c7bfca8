//! The wire protocol v1 (docs/control.md): what a request line asks for and
//! the lines spiced sends back. Pure: no socket, no clock. A new request is a
//! [`Request`] variant parsed here and answered in `server`.

use crate::daemon::status::Status;
use serde::Serialize;

/// The protocol version every message carries.
pub const VERSION: u32 = 1;

/// A status message: `{"version":1,"type":"status","instance":..,"now":..,<Status>}`.
#[derive(Serialize)]
struct StatusMsg<'a> {
    version: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    instance: &'a str,
    now: f64,
    #[serde(flatten)]
    status: &'a Status,
}

/// The status line sent for `status` and pushed to subscribers on a change.
pub fn status_line(instance: &str, status: &Status, now: f64) -> String {
    let msg = StatusMsg {
        version: VERSION,
        kind: "status",
        instance,
        now,
        status,
    };
    serde_json::to_string(&msg).unwrap_or_else(|e| error_line(&format!("status: {e}")))
}

/// The error a peer of another user gets (the client exits 77 on it).
pub(super) const PERMISSION_DENIED: &str = "permission denied";

pub(super) fn error_line(msg: &str) -> String {
    serde_json::json!({"version": VERSION, "type": "error", "error": msg}).to_string()
}

pub(super) fn ok_line(cmd: &str) -> String {
    serde_json::json!({"version": VERSION, "type": "ok", "cmd": cmd}).to_string()
}

/// What a request line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Subscribe,
    Reconnect,
    Screenshot,
    Bad(String),
}

pub(super) fn parse_request(line: &str) -> Request {
    #[derive(serde::Deserialize)]
    struct Req {
        cmd: String,
    }
    match serde_json::from_str::<Req>(line) {
        Ok(r) => match r.cmd.as_str() {
            "status" => Request::Status,
            "subscribe" => Request::Subscribe,
            "reconnect" => Request::Reconnect,
            "screenshot" => Request::Screenshot,
            other => Request::Bad(format!(
                "unknown cmd {:?} (status, subscribe, reconnect, screenshot)",
                crate::text::printable(other)
            )),
        },
        Err(_) => Request::Bad("not a JSON request like {\"cmd\":\"status\"}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Request::Status);
        assert_eq!(parse_request(r#"{"cmd":"subscribe"}"#), Request::Subscribe);
        assert_eq!(
            parse_request(r#"{"cmd":"reconnect","x":1}"#),
            Request::Reconnect
        );
        match parse_request("{\"cmd\":\"st\\u001batus\"}") {
            Request::Bad(e) => assert!(e.contains("\\x1b") && !e.contains('\x1b'), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_request("status"), Request::Bad(_)));
    }
}
