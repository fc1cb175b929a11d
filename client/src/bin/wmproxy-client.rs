//! `wmproxy-client`: keeps a tunnel to a wmproxy server, from a config file or from flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use hyper::Method;
use tokio_util::sync::CancellationToken;
use wmproxy_client::Client;
use wmproxy_config::client::{parse_fingerprint, split_host_port};
use wmproxy_config::tcp_proxy::TcpProxy;
use wmproxy_config::{ClientConfig, ClientLimits, Exposure, Name, Publish, Secret, ServerTrust, Service, Target};
use wmproxy_ops::cli;

/// wmproxy client: publishes local services on a wmproxy server, and forwards local ports
/// through it.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Config file (TOML). See config/examples/client.toml.
    #[arg(long, short, conflicts_with = "server")]
    config: Option<PathBuf>,
    /// Runtime worker threads, 1 to 1024 (default: half the cores, at least one).
    #[arg(long, env = "WMPROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(flatten)]
    quick: Quick,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Expose one TCP (or UDP) service without a config file.
#[derive(Debug, Args)]
struct Quick {
    /// Server address, host:port (UDP).
    #[arg(long, requires_all = ["fingerprint", "token", "local", "remote_port"])]
    server: Option<String>,
    /// The server's certificate fingerprint, as it prints at start.
    #[arg(long)]
    fingerprint: Option<String>,
    /// The token (or set WMPROXY_TOKEN, which keeps it out of the process list). A config file
    /// reads the variable with `token = { env = "WMPROXY_TOKEN" }`.
    #[arg(long, env = "WMPROXY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This client's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Local service to publish, host:port.
    #[arg(long)]
    local: Option<String>,
    /// Public port on the server (0: the server picks one).
    #[arg(long)]
    remote_port: Option<u16>,
    /// The local service is UDP (default TCP).
    #[arg(long)]
    udp: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a config file and exits: 0 if it is valid, 1 with the error if not.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the running client's status (tunnel state, services) from its control API.
    Status(Control),
    /// Makes the running client re-read its config file and publish its services again.
    Reload(Control),
    /// Stops the running client (it does not reconnect).
    Stop(Control),
    /// Writes a commented starter config for one server (never over an existing file), with
    /// what `wmproxy-server init` printed.
    Init(Init),
    /// Prints a shell completion script (e.g. `wmproxy-client completions bash >
    /// /etc/bash_completion.d/wmproxy-client`).
    Completions {
        /// The shell.
        shell: cli::Shell,
    },
    /// Prints the man page (roff; `wmproxy-client manpage | man -l -`).
    Manpage,
}

/// What `init` writes into the starter config.
#[derive(Debug, Args)]
struct Init {
    /// Where to write the config.
    #[arg(long, short, default_value = "wmproxy-client.toml")]
    config: PathBuf,
    /// The server, host:port.
    #[arg(long)]
    server: String,
    /// The server's certificate fingerprint.
    #[arg(long)]
    fingerprint: String,
    /// The token (or set WMPROXY_TOKEN).
    #[arg(long, env = "WMPROXY_TOKEN", hide_env_values = true)]
    token: String,
    /// This client's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
}

/// How to reach the control API: the `[control]` table of the client's config file.
#[derive(Debug, Args)]
struct Control {
    /// The running client's config file.
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (control, method, path) = match &cli.command {
        Some(Command::Check { config }) => {
            let loaded = wmproxy_config::load_client(config);
            for warning in loaded.iter().flat_map(|c| &c.warnings) {
                eprintln!("{}: warning: {warning}", config.display());
            }
            return cli::report_check(config, loaded);
        }
        Some(Command::Status(c)) => (c, Method::GET, "/status"),
        Some(Command::Reload(c)) => (c, Method::POST, "/reload"),
        Some(Command::Stop(c)) => (c, Method::POST, "/stop"),
        Some(Command::Init(init)) => {
            return match write_starter(init) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Completions { shell }) => return cli::print_generated(Cli::command(), Some(*shell)),
        Some(Command::Manpage) => return cli::print_generated(Cli::command(), None),
        None => return start(&cli),
    };
    let api = wmproxy_config::load_client(&control.config).map(|c| {
        c.control.map(|api| (api.addr(wmproxy_config::control::CLIENT_CONTROL_BIND), api.token.expose().to_owned()))
    });
    cli::control_subcommand(&control.config, api, method, path)
}

/// `init`: checks what it was given, then writes the starter config.
fn write_starter(init: &Init) -> Result<()> {
    split_host_port(&init.server).map_err(anyhow::Error::msg).context("--server")?;
    parse_fingerprint(&init.fingerprint).map_err(anyhow::Error::msg).context("--fingerprint")?;
    if init.token.len() < 8 {
        bail!("--token: a token is at least 8 characters long");
    }
    let name = Name::new(&init.name.clone().unwrap_or_else(host_name)).context("--name")?;
    let starter = wmproxy_client::starter::Starter {
        server: &init.server,
        fingerprint: &init.fingerprint,
        token: &init.token,
        name: name.as_str(),
    };
    wmproxy_client::starter::init(&init.config, &starter)?;
    println!("wrote {} (it holds the token: readable by you only)", init.config.display());
    println!("add services to it, then start the client:");
    println!("  wmproxy-client --config {}", init.config.display());
    Ok(())
}

fn start(cli: &Cli) -> ExitCode {
    let config = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    cli::init_logging();
    cli::run(cli.threads.map(usize::from), run(config, cli.config.clone()))
}

fn load(cli: &Cli) -> Result<ClientConfig> {
    if let Some(path) = &cli.config {
        if cli.quick.token.is_some() {
            // Left in the environment for the quick mode, or given by mistake: say where it goes.
            eprintln!(
                "note: --token and WMPROXY_TOKEN are for running without --config; a config file reads \
                 the variable with token = {{ env = \"WMPROXY_TOKEN\" }}"
            );
        }
        let mut config = wmproxy_config::load_client(path)?;
        if config.tcp_proxy.is_none() {
            config.tcp_proxy = proxy_from_env()?;
        }
        return Ok(config);
    }
    let q = &cli.quick;
    let (Some(server), Some(fingerprint), Some(token), Some(local), Some(remote_port)) =
        (&q.server, &q.fingerprint, &q.token, &q.local, q.remote_port)
    else {
        bail!("give --config FILE, or --server, --fingerprint, --token, --local and --remote-port (see --help)");
    };
    split_host_port(server).map_err(anyhow::Error::msg).context("--server")?;
    let local = Target::new(local).context("--local")?;
    let fingerprint = parse_fingerprint(fingerprint).map_err(anyhow::Error::msg).context("--fingerprint")?;
    if token.len() < 8 {
        bail!("--token: a token is at least 8 characters long");
    }
    let name = Name::new(&q.name.clone().unwrap_or_else(host_name)).context("--name")?;
    let (exposure, kind_name) = if q.udp {
        (Exposure::Udp { publish: Publish::Own(remote_port), bandwidth_limit: None }, "udp")
    } else {
        (
            Exposure::Tcp {
                publish: Publish::Own(remote_port),
                proxy_protocol: None,
                bandwidth_limit: None,
                idle_timeout_secs: None,
            },
            "tcp",
        )
    };
    let server = wmproxy_config::ServerEntry {
        addr: server.clone(),
        tcp_addr: server.clone(),
        server_name: "wmproxy".into(),
        trust: ServerTrust::Fingerprint(fingerprint),
        token: Secret::new(token.clone()),
    };
    Ok(ClientConfig {
        servers: vec![server],
        mode: wmproxy_config::ServersMode::default(),
        egress: wmproxy_config::EgressChoice::default(),
        transport: wmproxy_config::Transport::Auto,
        tcp_proxy: proxy_from_env()?,
        name,
        services: vec![Service { name: Name::new(kind_name)?, local_addr: local, access_log: true, exposure }],
        forwards: Vec::new(),
        proxies: Vec::new(),
        visitors: Vec::new(),
        server_proxies_egress: wmproxy_config::EgressPolicy::default(),
        warnings: Vec::new(),
        limits: ClientLimits::default(),
        control: None,
    })
}

/// The proxy of the TCP transport from the environment, as curl reads it: `HTTPS_PROXY` (or
/// `https_proxy`), else `ALL_PROXY` (or `all_proxy`). `proxy_url` in the config wins.
fn proxy_from_env() -> Result<Option<TcpProxy>> {
    for var in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        if let Some(url) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            return Ok(Some(TcpProxy::parse(&url).map_err(anyhow::Error::msg).context(var)?));
        }
    }
    Ok(None)
}

/// This machine's name, reduced to the characters a client name allows.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(wmproxy_wire::MAX_NAME_LEN)
        .collect();
    if name.is_empty() { "client".into() } else { name }
}

async fn run(config: ClientConfig, path: Option<PathBuf>) -> Result<()> {
    let mut client = Client::new(config).await?;
    if let Some(path) = path {
        client.set_config_path(path);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wmproxy_ops::shutdown::on_signal(shutdown.clone()));
    let reloader = client.reloader();
    // A refused reload is logged and changes nothing.
    tokio::spawn(wmproxy_ops::shutdown::on_hangup(move || {
        let _ = reloader.reload();
        std::future::ready(())
    }));
    client.run(shutdown).await?;
    Ok(())
}
