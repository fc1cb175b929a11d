//! What both binaries' `main` share: logging to stderr, the report of the `check` subcommand,
//! the control subcommands, writing `init`'s starter config, the shell completions and man page
//! generated from the command line's definition, and running the async main on a runtime with
//! its error as the exit status.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

/// The shells `completions` writes for.
pub use clap_complete::Shell;

/// Prints what is generated from `command` (a binary's whole command line): its completion
/// script for `shell`, or without one its man page (roff: its options and a list of its
/// subcommands).
pub fn print_generated(mut command: clap::Command, shell: Option<Shell>) -> ExitCode {
    let Some(shell) = shell else {
        return match clap_mangen::Man::new(command).render(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    };
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// A fresh secret for a starter config: 32 random bytes, in hex.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no system randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why `init` wrote no starter config.
#[derive(Debug, thiserror::Error)]
pub enum StarterError {
    /// The file is there already: `init` never overwrites.
    #[error("{0} exists: init never overwrites a config (remove it, or give another --config)")]
    Exists(std::path::PathBuf),
    /// The file (or a token for it) could not be made.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StarterError {
    /// The file at `path` already exists.
    pub fn exists(path: &Path) -> Self {
        Self::Exists(path.to_owned())
    }

    /// `source` kept the file at `path` from being written.
    pub fn write(path: &Path, source: std::io::Error) -> Self {
        Self::Write { path: path.to_owned(), source }
    }
}

/// Writes a starter config's `text` to a new file at `path` ([`write_new_private`]).
pub fn write_starter(path: &Path, text: &str) -> Result<(), StarterError> {
    write_new_private(path, text).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => StarterError::exists(path),
        _ => StarterError::write(path, e),
    })
}

/// The `[control]` table of a starter config: on loopback at `bind`, with `token`; `binary`
/// names the program whose `status` subcommand uses it.
pub fn starter_control(binary: &str, bind: &str, token: &str) -> String {
    format!(
        r#"# The control API: status, reload, metrics and stop, on loopback, with its own token
# (`{binary} status --config THIS_FILE` uses it).
[control]
bind = "{bind}"
token = "{token}"
"#
    )
}

/// Writes `text` to a new file at `path`, readable by its owner only (it holds secrets); never
/// over an existing file (`AlreadyExists`).
pub fn write_new_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

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
