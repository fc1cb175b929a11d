//! A small network in namespaces, for tests that need what loopback lacks: NAT, loss, a
//! narrow or slow path (issue 14). This is its first part: the topology, NAT, loss, rate, MTU,
//! cleanup, and [`InNetns`], a runtime inside a namespace, which runs a real server, client,
//! backend or user there in-process. The delay line comes next.
//!
//! ```text
//!  public (198.18.0.1) ──wan── nat (198.18.0.2 | 10.77.0.1, masquerade) ──lan── home (10.77.0.2)
//! ```
//!
//! - Every bed has its own namespaces (`wp<pid>x<n>-public`, `-nat`, `-home`), created with both
//!   ends of each veth pair placed at once, so interface names never meet in the host's
//!   namespace. No namespace has a route to the host's interfaces: the public side knows only
//!   198.18.0.0/24 (the benchmarking range), the home side only its NAT.
//! - [`Netbed`] removes its namespaces when dropped, also when a test fails.
//! - It needs root, `ip` and `tc` (iproute2), `nft` (nftables) and `conntrack`; [`skip`] says
//!   what is missing, so that a test can skip with that message rather than pass silently, and
//!   fails instead where [`REQUIRE`] is set (CI).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// The public host's address.
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The NAT's outside address: what the public host sees of the home host.
pub const NAT_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The NAT's inside address, the home host's gateway.
pub const NAT_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The home host's (private) address.
pub const HOME: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// How the NAT maps the home host's flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mapping {
    /// Keeps the source port when it can (most home routers).
    #[default]
    PortPreserving,
    /// A random source port for each new mapping (some carrier NATs).
    Random,
}

/// One bed: three namespaces and the links between them.
#[derive(Debug)]
pub struct Netbed {
    prefix: String,
}

static BEDS: AtomicU32 = AtomicU32::new(0);

impl Netbed {
    /// Why a bed cannot be built here, if it cannot: not root, or a tool missing.
    pub fn unavailable() -> Option<String> {
        // Probed once per test binary: tests run side by side, and their probes must not meet.
        static WHY: OnceLock<Option<String>> = OnceLock::new();
        WHY.get_or_init(probe).clone()
    }

    /// Builds a bed whose NAT maps as `mapping`.
    pub fn start(mapping: Mapping) -> Result<Self> {
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let bed = Self { prefix: format!("wp{}x{n}", std::process::id()) };
        for ns in [bed.public(), bed.nat(), bed.home()] {
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            bed.ip(&ns, &["link", "set", "lo", "up"])?;
        }
        let (public, nat, home) = (bed.public(), bed.nat(), bed.home());
        run(Command::new("ip")
            .args(["link", "add", "wan0", "netns", &nat, "type", "veth"])
            .args(["peer", "name", "eth0", "netns", &public]))?;
        run(Command::new("ip")
            .args(["link", "add", "lan0", "netns", &nat, "type", "veth"])
            .args(["peer", "name", "eth0", "netns", &home]))?;
        for (ns, dev, addr) in [
            (&public, "eth0", format!("{PUBLIC}/24")),
            (&nat, "wan0", format!("{NAT_WAN}/24")),
            (&nat, "lan0", format!("{NAT_LAN}/24")),
            (&home, "eth0", format!("{HOME}/24")),
        ] {
            bed.ip(ns, &["addr", "add", &addr, "dev", dev])?;
            bed.ip(ns, &["link", "set", dev, "up"])?;
        }
        bed.ip(&home, &["route", "add", "default", "via", &NAT_LAN.to_string()])?;
        bed.exec(&nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let masquerade = match mapping {
            Mapping::PortPreserving => "masquerade",
            Mapping::Random => "masquerade random",
        };
        let rules = format!(
            "table ip wpnat {{\n chain post {{ type nat hook postrouting priority 100; oifname \"wan0\" {masquerade}; }}\n}}\n\
             table inet wpshape {{\n counter forwarded {{ }}\n\
             chain count {{ type filter hook forward priority -10; counter name \"forwarded\"; }}\n\
             chain forward {{ type filter hook forward priority 0; }}\n}}\n"
        );
        bed.nft(&rules)?;
        Ok(bed)
    }

    /// The public host's namespace.
    pub fn public(&self) -> String {
        format!("{}-public", self.prefix)
    }

    /// The NAT router's namespace.
    pub fn nat(&self) -> String {
        format!("{}-nat", self.prefix)
    }

    /// The home host's namespace.
    pub fn home(&self) -> String {
        format!("{}-home", self.prefix)
    }

    /// Runs `args` in namespace `ns`; fails with its stderr when it fails.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// The command `args` in namespace `ns`, to spawn (a server, a client, a load tool).
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(args);
        command
    }

    /// Drops this share of the packets the NAT forwards, either way, in thousandths (`0`: none,
    /// `1000`: all, a blackhole). Replaces the previous setting.
    pub fn set_loss(&self, per_mille: u32) -> Result<()> {
        let mut rules = "flush chain inet wpshape forward\n".to_owned();
        match per_mille {
            0 => {}
            1000.. => rules += "add rule inet wpshape forward drop\n",
            n => rules += &format!("add rule inet wpshape forward numgen random mod 1000 < {n} drop\n"),
        }
        self.nft(&rules)
    }

    /// Limits the NAT's links to `mbit` Mbit/s each way (a token bucket on both interfaces).
    pub fn set_rate(&self, mbit: u32) -> Result<()> {
        for dev in ["wan0", "lan0"] {
            let rate = format!("{mbit}mbit");
            let args = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate];
            self.exec(&self.nat(), &[&args[..], &["burst", "256kb", "latency", "100ms"]].concat())?;
        }
        Ok(())
    }

    /// Sets the MTU of every link of the bed.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        for (ns, dev) in [(self.public(), "eth0"), (self.nat(), "wan0"), (self.nat(), "lan0"), (self.home(), "eth0")] {
            self.ip(&ns, &["link", "set", dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Sets how long the NAT keeps an idle UDP mapping.
    pub fn set_udp_timeout(&self, secs: u32) -> Result<()> {
        let setting = format!("net.netfilter.nf_conntrack_udp_timeout={secs}");
        self.exec(&self.nat(), &["sysctl", "-qw", &setting])?;
        Ok(())
    }

    /// Forgets every mapping of the NAT: the next packet of each flow gets a new one (with
    /// [`Mapping::Random`], on another port), as a router that rebooted or rebound would.
    pub fn flush_mappings(&self) -> Result<()> {
        self.exec(&self.nat(), &["conntrack", "-F"]).map(|_| ())
    }

    /// Packets and bytes the NAT has forwarded so far, both ways (before any loss).
    pub fn forwarded(&self) -> Result<(u64, u64)> {
        let out = self.exec(&self.nat(), &["nft", "list", "counter", "inet", "wpshape", "forwarded"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let after = |word: &str| -> Result<u64> {
            let at = text.find(word).with_context(|| format!("no `{word}` in {text}"))? + word.len();
            let digits: String = text[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
            Ok(digits.parse()?)
        };
        Ok((after("packets")?, after("bytes")?))
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", ns]).args(args)).map(|_| ())
    }

    fn nft(&self, rules: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.prefix, BEDS.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, rules)?;
        let done = self.exec(&self.nat(), &["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        done.map(|_| ())
    }
}

impl Drop for Netbed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of every veth pair, and with it the peer.
        for ns in [self.home(), self.nat(), self.public()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Why no bed can be built here, if none can: not root, a tool missing, or namespaces
/// forbidden (a container may forbid them even to root).
fn probe() -> Option<String> {
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        return Some("the network test bed needs root (network namespaces)".to_owned());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2"), ("conntrack", "conntrack")] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("the network test bed needs `{tool}` (apt-get install {package})"));
        }
    }
    let probe = format!("wp{}probe", std::process::id());
    if let Err(e) = run(Command::new("ip").args(["netns", "add", &probe])) {
        return Some(format!("cannot create a network namespace here: {e}"));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    None
}

/// Runs `command`; fails with its stderr when it exits non-zero.
fn run(command: &mut Command) -> Result<Output> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A tokio runtime whose thread lives in one of a bed's namespaces: every socket its tasks
/// open (a server's endpoint and ports, a client's, a backend's, a user's) belongs to that
/// namespace. Spawn work on it through [`InNetns::handle`]; dropping it stops the runtime.
#[derive(Debug)]
pub struct InNetns {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InNetns {
    /// A runtime in namespace `ns` (a name of [`Netbed::public`], [`Netbed::nat`],
    /// [`Netbed::home`]).
    pub fn enter(ns: &str) -> Result<Self> {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("netns-{ns}")).spawn(move || {
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns")
                .and_then(|()| Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?));
            match entered {
                Ok(runtime) => {
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
        let handle = handle.recv().context("the namespace thread ended")??;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn the namespace's work.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl InNetns {
    /// Starts `work` in this namespace at once (not when the result is first awaited: work
    /// such as a transfer goes on while the test does something else), and waits for it.
    pub fn run<T: Send + 'static, W: Future<Output = T> + Send + 'static>(
        &self,
        work: W,
    ) -> impl Future<Output = Result<T>> + use<T, W> {
        let task = self.handle.spawn(work);
        async move { Ok(task.await?) }
    }

    /// `GET path` of the control API at `api`, which listens in this namespace: the body of a
    /// `200` answer.
    pub async fn get(&self, api: SocketAddr, path: &'static str) -> Result<String> {
        let asked = self.run(crate::control_call(api, Some(crate::CONTROL_TOKEN), "GET", path, ""));
        let (status, body) = asked.await??;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }
}

/// Set (to anything) where the bed must run: a test then fails, instead of skipping, when no
/// bed can be built. `.ci/run` sets it, so CI never passes without running these tests.
pub const REQUIRE: &str = "WMPROXY_REQUIRE_NETBED";

/// Whether a test should skip for want of a bed: `true` after printing `SKIPPED:` and why; an
/// error instead where [`REQUIRE`] is set.
pub fn skip() -> Result<bool> {
    let Some(why) = Netbed::unavailable() else { return Ok(false) };
    if std::env::var_os(REQUIRE).is_some() {
        bail!("{REQUIRE} is set, but {why}");
    }
    println!("SKIPPED: {why}");
    Ok(true)
}

/// A bed whose NAT maps as `mapping`, with runtimes on its public and home hosts; `None`,
/// after printing `SKIPPED:` and why, where no bed can be built. (Bind the three in this
/// order, so that the runtimes stop before the bed goes.)
pub fn start_or_skip(mapping: Mapping) -> Result<Option<(Netbed, InNetns, InNetns)>> {
    if skip()? {
        return Ok(None);
    }
    let bed = Netbed::start(mapping)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    Ok(Some((bed, public, home)))
}

/// A test server on the bed's public host (`public`, an [`InNetns`] of [`Netbed::public`]):
/// its tunnel endpoint and public ports on [`PUBLIC`].
pub async fn public_server(public: &InNetns) -> Result<crate::TestServer> {
    public
        .run(crate::TestServer::start(|f| {
            f.bind = (PUBLIC, 0).into();
            f.public_bind = PUBLIC.into();
        }))
        .await?
}
