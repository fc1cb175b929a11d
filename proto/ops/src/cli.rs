//! What both binaries' `main` share: logging to stderr, the report of the `check` subcommand,
//! the control subcommands, and running the async main on a runtime with its error as the exit
//! status.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

/// Logs to stderr at `info` (or as `RUST_LOG` says), with colours only on a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// Prints the outcome of loading the config at `path` for `check`: `ok` (exit 0), or the error
/// with its key and line (exit 1).
pub fn report_check<T, E: Display>(path: &Path, loaded: Result<T, E>) -> ExitCode {
    match loaded {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// A control subcommand (`status`, `reload`, `stop`) for the end whose config file `file` gave
/// `api`: its control API's address and token, or `None` without `[control]`. Sends `method
/// path` and prints the reply. Exit 0 on a 2xx answer, 1 otherwise.
pub fn control_subcommand<E: Display>(
    file: &Path,
    api: Result<Option<(std::net::SocketAddr, String)>, E>,
    method: hyper::Method,
    path: &str,
) -> ExitCode {
    match api {
        Ok(Some((addr, token))) => control_command(addr, &token, method, path),
        Ok(None) => {
            eprintln!("{}: no [control] table: the control API is off", file.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn control_command(addr: std::net::SocketAddr, token: &str, method: hyper::Method, path: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let called = runtime.block_on(crate::control::call(addr, Some(token), method, path, bytes::Bytes::new()));
    match called {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("{path}: {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: control API at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `main` on a new multi-threaded runtime; an error (printed with its causes) exits 1.
pub fn run<E: Display>(main: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
