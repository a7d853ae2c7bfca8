//! Disconnect-cause reports: for every disconnect (subject to a cooldown), a
//! zip in the spool directory holding `disconnect-cause.json` (why, and what
//! every channel was doing), `session.json`, `traffic.pcap` (the last minute of
//! decrypted SPICE traffic as synthetic TCP streams) and `log.txt`.
//!
//! The pieces, one concept each: [`Capture`] records traffic (sans-IO, fed by
//! the channel tasks); [`LogRing`] keeps recent log lines; [`Reporter`] decides
//! whether to write and logs failures once; [`write_report`] builds, scrubs and
//! atomically writes the zip and applies spool retention; [`summarize`] is
//! `spiced report FILE.zip`. The format is documented in docs/disconnect-report.md.

mod assemble;
mod capture;
mod cause;
mod log_ring;
mod pcap;
mod redact;
mod reporter;
mod summary;
mod writer;

pub use assemble::{redacted_config, Facts, ReportJob, ServerJson, SessionJson};
pub use capture::{Capture, Direction, RecordKind, SharedCapture};
pub use cause::{DisconnectCause, SCHEMA_VERSION};
pub use log_ring::LogRing;
pub use pcap::MAX_SEGMENT;
pub use redact::{scrub_string, REDACTED};
pub use reporter::Reporter;
pub use summary::{
    cause_json_for_output, format_summary, read_cause_from, read_cause_json, summarize,
    ReportError, MAX_CAUSE_BYTES,
};
pub use writer::{
    enforce_retention, file_channel_name, numbered_file_name, report_file_name, resolve_spool_dir,
    resolve_spool_dir_from, write_report, write_report_named, ReportInput, CAUSE_ENTRY,
    DEFAULT_SPOOL, LOG_ENTRY, PCAP_ENTRY, SESSION_ENTRY,
};

use std::io::Write;
use std::path::Path;

/// `spiced report FILE.zip [--json]`; returns the exit code.
pub fn cli_main(file: &Path, json: bool) -> u8 {
    let result = if json {
        // Checked JSON, controls escaped; invalid or oversized entries fail.
        cause_json_for_output(file)
    } else {
        summarize(file).map(String::into_bytes)
    };
    match result {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => crate::exit::OK,
                // A closed pipe (`| head`) is not worth a message.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::exit::OK,
                Err(e) => {
                    eprintln!("spiced report: {e}");
                    crate::exit::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("spiced report: {e}");
            crate::exit::FAILURE
        }
    }
}
