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

/// The runtime's worker threads when `--threads` is not given: half the cores, at least one.
///
/// Measured on the 2-core bench machine (peers harness, one stream through separate server and
/// client processes beside iperf3 and nginx): one worker per process against two moved 6.5–6.9
/// Gbit/s against 5.4–5.6, at 2.0 CPU-seconds per GiB against 2.4–2.5, and wrk 50k req/s
/// against 42–44k. Two workers on two cores that the backends, the users and the kernel's
/// packet processing also need spend their time waking each other and moving tasks across
/// cores. With more cores, half of them keeps that room while the tasks of many connections
/// still spread (one tunnel's QUIC connection is driven by one task, so one client's bulk
/// flow uses about one core whatever the count).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs `main` on a new multi-threaded runtime of `threads` workers ([`default_threads`] if
/// `None`); an error (printed with its causes) exits 1.
pub fn run<E: Display>(threads: Option<usize>, main: impl Future<Output = Result<(), E>>) -> ExitCode {
    let threads = threads.unwrap_or_else(default_threads).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
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
