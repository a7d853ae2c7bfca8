//! Disconnect-cause reports. (to be written)

/// `spiced report FILE.zip [--json]`; returns the exit code.
pub fn cli_main(_file: &std::path::Path, _json: bool) -> u8 {
    crate::exit::FAILURE
}
