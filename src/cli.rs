//! Command line: `spiced --vv FILE [--config FILE.toml | --config-if-exists
//! FILE.toml] [--spool DIR] [--check]`, `spiced report FILE.zip [--json]` and
//! `spiced status [--json] [--socket PATH | INSTANCE]`.

use crate::config::{Config, ConfigError};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};

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
    /// Like --config, but a file that does not exist means every option has its
    /// default (spiced@NAME's /etc/spiced/NAME.toml is optional). A file that
    /// exists and is invalid is still an error.
    #[arg(long, value_name = "FILE.toml", conflicts_with = "config")]
    pub config_if_exists: Option<PathBuf>,
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
    /// Print the man page spiced(1) (roff) on stdout; the .deb build runs it.
    #[command(hide = true)]
    Manpage {
        /// Write spiced.1 and a page per subcommand (spiced-report.1, ...) here.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Ask a running spiced what it is doing (its control socket, docs/control.md).
    Status {
        /// Print the daemon's JSON answer (protocol v1) instead of the summary.
        #[arg(long)]
        json: bool,
        /// The control socket (default: /run/spiced/INSTANCE/control.sock).
        #[arg(long, value_name = "PATH", conflicts_with = "instance")]
        socket: Option<PathBuf>,
        /// The instance (spiced@INSTANCE); default: $SPICED_INSTANCE, else "default".
        instance: Option<String>,
    },
    /// Save what the guest's screen shows now as a PNG (the display mirror,
    /// through the control socket; docs/display.md).
    Screenshot {
        /// The control socket (default: /run/spiced/INSTANCE.sock).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// [INSTANCE] FILE.png: the instance (spiced@INSTANCE; default:
        /// $SPICED_INSTANCE, else "default") and where to write the PNG.
        #[arg(value_name = "[INSTANCE] FILE.png", num_args = 1..=2, required = true)]
        args: Vec<PathBuf>,
    },
}

impl RunArgs {
    /// The daemon's options: from --config FILE (which must exist), from
    /// --config-if-exists FILE when it exists, else the defaults. Also returns
    /// the --config-if-exists path that did not exist, for the caller to log
    /// once logging is set up (it is configured by the file).
    pub fn load_config(&self) -> Result<(Config, Option<&Path>), ConfigError> {
        if let Some(p) = &self.config {
            return Config::load(p).map(|c| (c, None));
        }
        match &self.config_if_exists {
            Some(p) => match Config::load_if_exists(p)? {
                Some(c) => Ok((c, None)),
                None => Ok((Config::default(), Some(p.as_path()))),
            },
            None => Ok((Config::default(), None)),
        }
    }
}

/// The command as the man pages describe it: without the `help` subcommand,
/// which would be listed as a page spiced-help(1) that nobody ships.
fn man_command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// Writes the man page spiced(1) in roff, generated from the definitions above
/// so it cannot drift from `--help`. Hidden subcommands stay out of it.
pub fn write_manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(man_command()).render(out)
}

/// Writes spiced.1 and one page per visible subcommand (spiced-report.1, ...),
/// which spiced(1) refers to, into `dir`.
pub fn write_manpages(dir: &Path) -> std::io::Result<()> {
    clap_mangen::generate_to(man_command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> RunArgs {
        let mut all = vec!["spiced", "--vv", "x.vv"];
        all.extend_from_slice(argv);
        match Cli::try_parse_from(all) {
            Ok(cli) => cli.run,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_if_exists_missing_means_defaults_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("kiosk1.toml");
        let a = args(&["--config-if-exists", p.to_str().expect("utf-8")]);
        let (cfg, missing) = a.load_config().expect("defaults");
        assert_eq!(missing, Some(p.as_path()));
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn config_if_exists_present_is_loaded_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("kiosk1.toml");
        std::fs::write(&p, "[report]\nmax_files = 7\n").expect("write");
        let a = args(&["--config-if-exists", p.to_str().expect("utf-8")]);
        let (cfg, missing) = a.load_config().expect("loads");
        assert_eq!(missing, None);
        assert_eq!(cfg.report.max_files, 7);
        std::fs::write(&p, "[report]\nmax_filez = 7\n").expect("write");
        let e = a.load_config().expect_err("unknown key");
        assert!(e.0.contains("kiosk1.toml"), "{e}");
    }

    #[test]
    fn config_if_exists_that_cannot_be_read_is_an_error() {
        // A directory: it exists but is no file; only "not found" means defaults.
        let dir = tempfile::tempdir().expect("tempdir");
        let a = args(&["--config-if-exists", dir.path().to_str().expect("utf-8")]);
        let e = a.load_config().expect_err("a directory");
        assert!(e.0.contains("cannot read config"), "{e}");
    }

    #[test]
    fn config_is_still_required_to_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("missing.toml");
        let a = args(&["--config", p.to_str().expect("utf-8")]);
        assert!(a.load_config().is_err());
    }

    #[test]
    fn config_and_config_if_exists_conflict() {
        let r = Cli::try_parse_from([
            "spiced",
            "--vv",
            "x.vv",
            "--config",
            "a.toml",
            "--config-if-exists",
            "b.toml",
        ]);
        assert!(r.is_err());
    }
}
