//! Command line: `spiced --vv FILE [--config FILE.toml] [--spool DIR] [--check]`
//! and `spiced report FILE.zip [--json]` and
//! `spiced status [--json] [--socket PATH | INSTANCE]`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "spiced",
    version,
    about = "Headless SPICE session daemon: keeps a kiosk's SPICE session alive and explains every disconnect",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The virt-viewer connection file (console.vv); `-` reads it from stdin.
    #[arg(long = "vv", value_name = "FILE", required = true)]
    pub vv: Option<PathBuf>,
    /// Daemon behaviour (TOML); every option has a default.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Directory for disconnect reports (overrides report.spool_dir).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Parse the .vv (and config), print the effective settings as JSON, exit.
    /// Never connects and never deletes the file.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarise a disconnect report zip for an operator.
    Report {
        /// A spiced-disconnect-*.zip file.
        file: PathBuf,
        /// Print the raw disconnect-cause.json instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running spiced what it is doing (its control socket, docs/control.md).
    Status {
        /// Print the daemon's JSON answer (protocol v1) instead of the summary.
        #[arg(long)]
        json: bool,
        /// The control socket (default: /run/spiced/INSTANCE.sock).
        #[arg(long, value_name = "PATH", conflicts_with = "instance")]
        socket: Option<PathBuf>,
        /// The instance (spiced@INSTANCE); default: $SPICED_INSTANCE, else "default".
        instance: Option<String>,
    },
}
