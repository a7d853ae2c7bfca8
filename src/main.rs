//! The `spiced` binary: command line → one of `report`, `--check` or the daemon
//! → process exit code (see `spiced::exit`).

use clap::Parser;
use spiced::cli::{Cli, Command, RunArgs};
use spiced::{exit, vv};
use std::process::ExitCode;

fn main() -> ExitCode {
    spiced::heap::pin_mmap_threshold();
    // A panic is logged at crit and, outside a task, exits 70.
    spiced::panic::install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" printed on stdout; they succeed.
            let code = if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Some(Command::Report { file, json }) => spiced::report::cli_main(&file, json),
        Some(Command::Manpage { out_dir }) => manpage(out_dir.as_deref()),
        Some(Command::Status {
            json,
            socket,
            instance,
        }) => spiced::control::client_main(json, socket.as_deref(), instance.as_deref()),
        Some(Command::Screenshot { socket, args }) => {
            let (instance, file) = match args.as_slice() {
                [i, f] if socket.is_none() => (Some(i.to_string_lossy().into_owned()), f),
                [f] => (None, f),
                _ => {
                    eprintln!("spiced screenshot: give --socket PATH or INSTANCE, not both");
                    return ExitCode::from(spiced::exit::CONFIG);
                }
            };
            spiced::display::control::client_main(file, socket.as_deref(), instance.as_deref())
        }
        None if cli.run.check => check(&cli.run),
        None => spiced::daemon::main(&cli.run),
    };
    // Log lines still queued for stderr (it may not take them: bounded).
    spiced::stderr::flush(spiced::stderr::EXIT_FLUSH);
    ExitCode::from(code)
}

/// `spiced --vv FILE --check`: parse the .vv (never connect, never delete) and the
/// config if given; print the effective settings as one JSON line on stdout.
/// Errors and warnings go to stderr; any error means exit 78.
fn check(args: &RunArgs) -> u8 {
    // Unknown .vv keys are logged at debug level: RUST_LOG=debug shows them.
    // An empty RUST_LOG counts as unset (it would silence the warnings).
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(spiced::logging::filter_string(
        rust_log.as_deref(),
        "warn",
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();

    let Some(path) = &args.vv else {
        eprintln!("spiced: --check needs --vv FILE");
        return exit::CONFIG;
    };
    // Both are read, so both are reported when both are broken.
    let parsed = vv::load(path, false).map_err(|e| eprintln!("{e}"));
    let config = args.load_config().map_err(|e| eprintln!("{e}"));
    let (Ok(parsed), Ok((config, missing))) = (parsed, config) else {
        return exit::CONFIG;
    };
    if let Some(m) = missing {
        eprintln!("note: no {}: every option has its default", m.display());
    }
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    // What the daemon builds at start, so what it would refuse (78) is
    // refused here too: the `ca`, the host-subject, the system roots.
    if let Err(e) = spiced::link::TlsSetup::for_settings(&parsed.settings, &config.tls) {
        eprintln!("{}: {e}", path.display());
        return exit::CONFIG;
    }
    println!("{}", vv::check_json(&parsed.settings));
    exit::OK
}

/// `spiced manpage [--out-dir DIR]` (hidden): spiced(1) in roff on stdout, or
/// every page into DIR, for the .deb build.
fn manpage(out_dir: Option<&std::path::Path>) -> u8 {
    let r = match out_dir {
        Some(dir) => spiced::cli::write_manpages(dir),
        None => {
            let mut out = std::io::stdout().lock();
            spiced::cli::write_manpage(&mut out).and_then(|()| std::io::Write::flush(&mut out))
        }
    };
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("spiced: cannot write the man page: {e}");
            exit::FAILURE
        }
    }
}
