//! `wmproxy-server`: runs the server from a config file, or on embedded defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use hyper::Method;
use tokio_util::sync::CancellationToken;
use wmproxy_config::{Secret, ServerConfig, ServerFile};
use wmproxy_ops::cli;
use wmproxy_server::Server;
use wmproxy_server::identity::load_or_generate_token;

/// wmproxy server: publishes services of wmproxy clients through a QUIC tunnel.
///
/// Without --config it runs on embedded defaults: UDP port 7835 on all addresses, a generated
/// certificate and token kept in the state directory, any client name with that token, public
/// ports 1024-65535. It prints what a client needs to connect.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Config file (TOML). See config/examples/server.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Runtime worker threads, 1 to 1024 (default: half the cores, at least one).
    #[arg(long, env = "WMPROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// State directory for the embedded defaults (not with --config: set `state_dir` there).
    #[arg(long, default_value = "wmproxy-state", conflicts_with = "config")]
    state_dir: PathBuf,
    /// UDP address for the embedded defaults (not with --config: set `bind` there).
    #[arg(long, conflicts_with = "config")]
    bind: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a config file and exits: 0 if it is valid, 1 with the error if not.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the running server's status (clients, services, groups) from its control API.
    Status(Control),
    /// Makes the running server re-read its config file and apply the difference.
    Reload(Control),
    /// Stops the running server gracefully.
    Stop(Control),
    /// Writes a commented starter config with a fresh token (never over an existing file),
    /// generates the certificate, and prints what clients need.
    Init {
        /// Where to write the config.
        #[arg(long, short, default_value = "wmproxy-server.toml")]
        config: PathBuf,
        /// The state directory the config names; the certificate is generated there.
        #[arg(long, default_value = "wmproxy-state")]
        state_dir: PathBuf,
    },
    /// Prints a shell completion script (e.g. `wmproxy-server completions bash >
    /// /etc/bash_completion.d/wmproxy-server`).
    Completions {
        /// The shell.
        shell: cli::Shell,
    },
    /// Prints the man page (roff; `wmproxy-server manpage | man -l -`).
    Manpage,
}

/// How to reach the control API: the `[control]` table of the server's config file.
#[derive(Debug, clap::Args)]
struct Control {
    /// The running server's config file.
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (control, method, path) = match &cli.command {
        Some(Command::Check { config }) => return cli::report_check(config, wmproxy_config::load_server(config)),
        Some(Command::Status(c)) => (c, Method::GET, "/status"),
        Some(Command::Reload(c)) => (c, Method::POST, "/reload"),
        Some(Command::Stop(c)) => (c, Method::POST, "/stop"),
        Some(Command::Init { config, state_dir }) => return init(config, state_dir),
        Some(Command::Completions { shell }) => return cli::print_generated(Cli::command(), Some(*shell)),
        Some(Command::Manpage) => return cli::print_generated(Cli::command(), None),
        None => {
            cli::init_logging();
            return cli::run(cli.threads.map(usize::from), serve(cli));
        }
    };
    let api = wmproxy_config::load_server(&control.config).map(|c| {
        c.control.map(|api| (api.addr(wmproxy_config::control::SERVER_CONTROL_BIND), api.token.expose().to_owned()))
    });
    cli::control_subcommand(&control.config, api, method, path)
}

/// `init`: the starter config, and what to do next.
fn init(config: &std::path::Path, state_dir: &std::path::Path) -> ExitCode {
    match wmproxy_server::starter::init(config, state_dir) {
        Ok(started) => {
            let fingerprint = started.fingerprint;
            println!("wrote {} (it holds the tokens: readable by you only)", config.display());
            println!("certificate fingerprint: {fingerprint}");
            println!("start the server:");
            println!("  wmproxy-server --config {}", config.display());
            println!("then, on each client machine:");
            println!(
                "  wmproxy-client init --server <THIS_HOST>:{} --fingerprint {fingerprint} --token {}",
                started.port, started.token
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> Result<()> {
    let (config, embedded_token) = match &cli.config {
        Some(path) => (wmproxy_config::load_server(path)?, None),
        None => embedded(&cli)?,
    };
    let mut server = Server::bind(config).context("cannot start the server")?;
    if let Some(path) = &cli.config {
        server.set_config_path(path.clone());
    }
    let addr = server.local_addr()?;
    let fingerprint = server.fingerprint();
    println!("wmproxy-server listening on udp {addr}");
    println!("certificate fingerprint: {fingerprint}");
    if let Some(token) = embedded_token {
        // Shown once, on the console the operator started us from; never logged.
        println!("token (kept in {}): {}", cli.state_dir.join("token").display(), token.expose());
        println!("connect a client with:");
        println!(
            "  wmproxy-client --server <THIS_HOST>:{} --fingerprint {fingerprint} --token {} --local 127.0.0.1:8080 --remote-port 18080",
            addr.port(),
            token.expose()
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wmproxy_ops::shutdown::on_signal(shutdown.clone()));
    let handle = server.handle();
    // A refused reload is logged by the server and changes nothing.
    tokio::spawn(wmproxy_ops::shutdown::on_hangup(move || {
        let handle = handle.clone();
        async move {
            let _ = handle.reload().await;
        }
    }));
    server.run(shutdown).await;
    Ok(())
}

/// The embedded defaults, with the token from (or generated into) the state directory.
fn embedded(cli: &Cli) -> Result<(ServerConfig, Option<Secret>)> {
    let token = Secret::new(load_or_generate_token(&cli.state_dir)?);
    let mut file = ServerFile { state_dir: cli.state_dir.clone(), token: Some(token.clone()), ..ServerFile::default() };
    if let Some(bind) = cli.bind {
        file.bind = bind;
    }
    Ok((file.validate("")?, Some(token)))
}
