//! A small network in namespaces, for tests and benches that need what loopback lacks: NAT,
//! loss, delay, a narrow or slow path (issue 14).
//!
//! ```text
//!  public (198.18.0.1) ── wire ─┬─ nat  (198.18.0.2 | 10.77.0.1, masquerade) ── home  (10.77.0.2)
//!                              └─ nat2 (198.18.0.3 | 10.78.0.1, masquerade) ── home2 (10.78.0.2)
//! ```
//!
//! A bed with two homes on one LAN ([`Netbed::start_shared_lan`]) has no second NAT: the second
//! home sits beside the first, at [`HOME_MATE`], behind the same NAT (which does not hairpin:
//! the two reach each other only at their private addresses).
//!
//! - The wire is a namespace holding the public segment's switch (a bridge). Once a test asks
//!   for delay ([`Netbed::set_delay`]), the switch is cut in two, public side and NAT side, and
//!   a [`delay`] line carries every frame between the halves, late by the delay asked for.
//!   Traffic between the two NATs stays on the NAT side, undelayed.
//! - The second home ([`Netbed::start_two_homes`]) is for work on several clients and on
//!   direct client-to-client connections; most tests use one. What only beds with two homes
//!   do (a shared LAN, a cut between the NATs, a delay line per NAT) is in `homes.rs`. More public hosts
//!   ([`Netbed::start_with_publics`], at [`EXTRA_PUBLIC`]) are for a client of several servers.
//! - Every bed has its own namespaces (`wp<pid>x<n>-public`, `-wire`, `-nat`, `-home`, …),
//!   created with both ends of each veth pair placed at once, so interface names never meet in
//!   the host's namespace. No namespace has a route to the host's interfaces: the public side
//!   knows only 198.18.0.0/24 (the benchmarking range), each home side only its NAT.
//! - [`Netbed`] removes its namespaces when dropped, also when a test fails.
//! - It needs root, `ip` and `tc` (iproute2), `nft` (nftables), `conntrack` and
//!   `/dev/net/tun`; [`skip`] says what is missing, so that a test can skip with that message
//!   rather than pass silently, and fails instead where [`REQUIRE`] is set (CI).
//! - [`http_proxy::HttpProxy`] runs a real HTTP proxy (tinyproxy, from Debian) in one of the
//!   namespaces, for the TCP transport through a corporate proxy.
//! - [`InNetns`] (in `runtime.rs`) is a runtime inside one of the namespaces, which runs a real
//!   server, client, backend or user there in-process.

pub mod delay;
mod homes;
pub mod http_proxy;
mod runtime;

pub use runtime::{
    InNetns, REQUIRE, public_server, public_server_with, publics_or_skip, server_at, skip, start_or_skip,
    two_homes_or_skip,
};

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The public host's address.
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The addresses of the public hosts after the first ([`Netbed::start_with_publics`]), on the
/// same segment.
pub const EXTRA_PUBLIC: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 12)];
/// The NAT's outside address: what the public host sees of the home host.
pub const NAT_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The NAT's inside address, the home host's gateway.
pub const NAT_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The home host's (private) address.
pub const HOME: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The second NAT's outside address (beds with two homes).
pub const NAT2_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The second NAT's inside address, the second home's gateway.
pub const NAT2_LAN: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The second home host's (private) address.
pub const HOME2: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The second home host's address on a shared LAN ([`Netbed::start_shared_lan`]).
pub const HOME_MATE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// How the NAT maps the home host's flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mapping {
    /// Keeps the source port when it can (most home routers).
    #[default]
    PortPreserving,
    /// A random source port for each new mapping (some carrier NATs).
    Random,
}

/// One bed: its namespaces and the links between them.
#[derive(Debug)]
pub struct Netbed {
    prefix: String,
    /// How many homes (and NATs): 1 or 2.
    homes: usize,
    /// How many public hosts after the first: up to [`EXTRA_PUBLIC`]'s length.
    publics: usize,
    /// A second home on the first home's LAN (namespace [`Netbed::home2`]).
    mate: bool,
    /// The delay line, once [`Self::set_delay`] started it.
    line: Mutex<Option<delay::DelayLine>>,
    /// The first NAT's own line, with [`Self::separate_homes`].
    extra_line: Mutex<Option<delay::DelayLine>>,
}

static BEDS: AtomicU32 = AtomicU32::new(0);

impl Netbed {
    /// Why a bed cannot be built here, if it cannot: not root, or a tool missing.
    pub fn unavailable() -> Option<String> {
        // Probed once per test binary: tests run side by side, and their probes must not meet.
        static WHY: OnceLock<Option<String>> = OnceLock::new();
        WHY.get_or_init(probe).clone()
    }

    /// Builds a bed with one home, whose NAT maps as `mapping`.
    pub fn start(mapping: Mapping) -> Result<Self> {
        Self::build(&[mapping], 0)
    }

    /// Builds a bed with two homes behind two NATs, mapping as `first` and `second`.
    pub fn start_two_homes(first: Mapping, second: Mapping) -> Result<Self> {
        Self::build(&[first, second], 0)
    }

    /// Builds a bed with one home and `1 + extra` public hosts: [`PUBLIC`], then
    /// [`EXTRA_PUBLIC`] (namespaces [`Netbed::public_n`]), all on the public segment.
    pub fn start_with_publics(mapping: Mapping, extra: usize) -> Result<Self> {
        anyhow::ensure!(extra <= EXTRA_PUBLIC.len(), "at most {} extra public hosts", EXTRA_PUBLIC.len());
        Self::build(&[mapping], extra)
    }

    fn build(mappings: &[Mapping], publics: usize) -> Result<Self> {
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wp{}x{n}", std::process::id());
        let (line, extra_line) = (Mutex::default(), Mutex::default());
        let bed = Self { prefix, homes: mappings.len(), publics, mate: false, line, extra_line };
        let (public, wire) = (bed.public(), bed.wire());
        for ns in [&public, &wire] {
            bed.add_namespace(ns)?;
        }
        bed.ip(&wire, &["link", "add", "br0", "type", "bridge"])?;
        bed.ip(&wire, &["link", "set", "br0", "up"])?;
        bed.link(&wire, "pub0", &public, "eth0", &format!("{PUBLIC}/24"))?;
        bed.ip(&wire, &["link", "set", "pub0", "master", "br0"])?;
        for (i, addr) in EXTRA_PUBLIC.iter().enumerate().take(publics) {
            let (ns, port) = (bed.public_n(i + 1), format!("pub{}", i + 1));
            bed.add_namespace(&ns)?;
            bed.link(&wire, &port, &ns, "eth0", &format!("{addr}/24"))?;
            bed.ip(&wire, &["link", "set", &port, "master", "br0"])?;
        }
        let sides = [(NAT_WAN, NAT_LAN, HOME), (NAT2_WAN, NAT2_LAN, HOME2)];
        for (i, (&mapping, (wan, lan, host))) in mappings.iter().zip(sides).enumerate() {
            let (nat, home) = (bed.nat_n(i), bed.home_n(i));
            for ns in [&nat, &home] {
                bed.add_namespace(ns)?;
            }
            let port = format!("nat{i}");
            bed.link(&wire, &port, &nat, "wan0", &format!("{wan}/24"))?;
            bed.ip(&wire, &["link", "set", &port, "master", "br0"])?;
            bed.link(&nat, "lan0", &home, "eth0", &format!("{host}/24"))?;
            bed.ip(&nat, &["addr", "add", &format!("{lan}/24"), "dev", "lan0"])?;
            bed.ip(&home, &["route", "add", "default", "via", &lan.to_string()])?;
            bed.exec(&nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let masquerade = match mapping {
                Mapping::PortPreserving => "masquerade",
                Mapping::Random => "masquerade random",
            };
            // As a home router's firewall, the NAT drops what arrives unasked from outside for
            // itself. Dropped before conntrack confirms it, such a packet leaves no entry behind
            // (a host that answered with an ICMP error would keep one, and that entry would
            // take the port the home's next mapping towards the sender wants).
            let rules = format!(
                "table ip wpnat {{\n chain post {{ type nat hook postrouting priority 100; oifname \"wan0\" {masquerade}; }}\n\
                 chain input {{ type filter hook input priority 0; iifname \"wan0\" ct state new drop; }}\n}}\n\
                 table inet wpshape {{\n counter forwarded {{ }}\n\
                 chain count {{ type filter hook forward priority -10; counter name \"forwarded\"; }}\n\
                 chain forward {{ type filter hook forward priority 0; }}\n}}\n"
            );
            bed.nft(&nat, &rules)?;
        }
        Ok(bed)
    }

    /// The public host's namespace.
    pub fn public(&self) -> String {
        format!("{}-public", self.prefix)
    }

    /// Public host `i`'s namespace: [`Netbed::public`] for 0, then the extra ones at
    /// [`EXTRA_PUBLIC`]`[i - 1]`.
    pub fn public_n(&self, i: usize) -> String {
        if i == 0 { self.public() } else { format!("{}-public{}", self.prefix, i + 1) }
    }

    /// The wire's namespace: the switch between the public host and the NATs, and the delay
    /// line.
    pub fn wire(&self) -> String {
        format!("{}-wire", self.prefix)
    }

    /// The NAT router's namespace.
    pub fn nat(&self) -> String {
        self.nat_n(0)
    }

    /// The home host's namespace.
    pub fn home(&self) -> String {
        self.home_n(0)
    }

    /// The second NAT router's namespace (beds with two homes).
    pub fn nat2(&self) -> String {
        self.nat_n(1)
    }

    /// The second home host's namespace (beds with two homes, or two homes on one LAN).
    pub fn home2(&self) -> String {
        self.home_n(1)
    }

    fn nat_n(&self, i: usize) -> String {
        if i == 0 { format!("{}-nat", self.prefix) } else { format!("{}-nat{}", self.prefix, i + 1) }
    }

    fn home_n(&self, i: usize) -> String {
        if i == 0 { format!("{}-home", self.prefix) } else { format!("{}-home{}", self.prefix, i + 1) }
    }

    /// Every namespace of the bed, public host first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.public(), self.wire()];
        all.extend((1..=self.publics).map(|i| self.public_n(i)));
        for i in 0..self.homes {
            all.extend([self.nat_n(i), self.home_n(i)]);
        }
        if self.mate {
            all.push(self.home2());
        }
        all
    }

    /// The NATs' namespaces: one per home.
    fn nats(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.homes).map(|i| self.nat_n(i))
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

    /// Drops this share of the packets each NAT forwards, either way, in thousandths (`0`:
    /// none, `1000`: all, a blackhole). Replaces the previous setting.
    pub fn set_loss(&self, per_mille: u32) -> Result<()> {
        let mut rules = "flush chain inet wpshape forward\n".to_owned();
        match per_mille {
            0 => {}
            1000.. => rules += "add rule inet wpshape forward drop\n",
            n => rules += &format!("add rule inet wpshape forward numgen random mod 1000 < {n} drop\n"),
        }
        self.nats().try_for_each(|nat| self.nft(&nat, &rules))
    }

    /// Drops every UDP packet the (first) NAT would forward, either way (`true`), as a
    /// network that lets only TCP out does; or stops dropping them (`false`).
    pub fn block_udp(&self, blocked: bool) -> Result<()> {
        let rules = if blocked {
            "table inet wpblock {\n chain forward { type filter hook forward priority -20; meta l4proto udp drop; }\n}\n"
        } else {
            "delete table inet wpblock\n"
        };
        self.nft(&self.nat(), rules)
    }

    /// A network that lets only TCP to port 443 out, and only through a proxy: the (first) NAT
    /// forwards nothing from home but TCP to port 443, and on the home host only processes
    /// that are not root's (the proxy drops to `nobody`) may send to the public side.
    pub fn only_tcp_443_through_a_proxy(&self) -> Result<()> {
        let nat = "table inet wponly {\n chain forward { type filter hook forward priority -20; \
                   iifname \"lan0\" tcp dport 443 accept; iifname \"lan0\" drop; }\n}\n";
        self.nft(&self.nat(), nat)?;
        let home = format!(
            "table inet wponly {{\n chain out {{ type filter hook output priority 0; \
             ip daddr {PUBLIC}/24 meta skuid 0 drop; }}\n}}\n"
        );
        self.nft(&self.home(), &home)
    }

    /// Limits each NAT's links to `mbit` Mbit/s each way (a token bucket on both interfaces,
    /// queueing up to 100 ms: the path's bottleneck and its buffer).
    pub fn set_rate(&self, mbit: u32) -> Result<()> {
        let rate = format!("{mbit}mbit");
        for nat in self.nats() {
            for dev in ["wan0", "lan0"] {
                let args = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate];
                self.exec(&nat, &[&args[..], &["burst", "256kb", "latency", "100ms"]].concat())?;
            }
        }
        Ok(())
    }

    /// Delays every frame between the public host and the NATs by half of `rtt` each way, on
    /// a [`delay::DelayLine`] that the first call starts. (Zero keeps the line, with its own
    /// small cost: see the bench.)
    pub fn set_delay(&self, rtt: Duration) -> Result<()> {
        let mut line = self.line.lock().map_err(|_| anyhow::anyhow!("the delay line's lock is poisoned"))?;
        if let Some(line) = line.as_ref() {
            line.set_one_way(rtt / 2);
            return Ok(());
        }
        // The line joins two switches: public side (br0: pub0, tap0) and NAT side (br1:
        // tap1, the NATs' ports). It runs before the NATs' ports move over, so nothing is cut.
        let wire = self.wire();
        let started = delay::DelayLine::start(&wire, ["tap0", "tap1"], rtt / 2)?;
        self.ip(&wire, &["link", "add", "br1", "type", "bridge"])?;
        for (dev, bridge) in [("tap0", "br0"), ("tap1", "br1")] {
            self.ip(&wire, &["link", "set", dev, "txqueuelen", "10000"])?;
            self.ip(&wire, &["link", "set", dev, "master", bridge])?;
            self.ip(&wire, &["link", "set", dev, "up"])?;
        }
        self.ip(&wire, &["link", "set", "br1", "up"])?;
        for i in 0..self.homes {
            self.ip(&wire, &["link", "set", &format!("nat{i}"), "master", "br1"])?;
        }
        *line = Some(started);
        Ok(())
    }

    /// Sets the MTU of every link of the bed.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        let mut links = vec![(self.public(), "eth0".to_owned()), (self.wire(), "pub0".to_owned())];
        for i in 1..=self.publics {
            links.extend([(self.public_n(i), "eth0".to_owned()), (self.wire(), format!("pub{i}"))]);
        }
        for i in 0..self.homes {
            let (nat, home) = (self.nat_n(i), self.home_n(i));
            links.extend([(self.wire(), format!("nat{i}")), (nat.clone(), "wan0".into()), (nat, "lan0".into())]);
            links.push((home, "eth0".into()));
        }
        if self.line.lock().is_ok_and(|line| line.is_some()) {
            links.extend([(self.wire(), "tap0".into()), (self.wire(), "tap1".into())]);
        }
        links.iter().try_for_each(|(ns, dev)| self.ip(ns, &["link", "set", dev, "mtu", &mtu]))
    }

    /// Cuts public host `i` (see [`Netbed::public_n`]) off the segment (`true`), as a server
    /// that crashed or lost its network: nothing it had open says goodbye; or connects it again.
    pub fn cut_public(&self, i: usize, cut: bool) -> Result<()> {
        self.ip(&self.public_n(i), &["link", "set", "eth0", if cut { "down" } else { "up" }])
    }

    /// Sets how long the NATs keep an idle UDP mapping.
    pub fn set_udp_timeout(&self, secs: u32) -> Result<()> {
        let setting = format!("net.netfilter.nf_conntrack_udp_timeout={secs}");
        self.nats().try_for_each(|nat| self.exec(&nat, &["sysctl", "-qw", &setting]).map(|_| ()))
    }

    /// Moves the (first) home host from address `from` to `to` (both in 10.77.0.0/24), as a
    /// laptop that changed networks: the new address comes first, then the old one goes and
    /// the default route follows the new one.
    pub fn renumber_home(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<()> {
        let home = self.home();
        // Else deleting the first address of the subnet deletes the others with it.
        self.exec(&home, &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"])?;
        self.ip(&home, &["addr", "add", &format!("{to}/24"), "dev", "eth0"])?;
        self.ip(&home, &["addr", "del", &format!("{from}/24"), "dev", "eth0"])?;
        self.ip(&home, &["route", "replace", "default", "via", &NAT_LAN.to_string(), "src", &to.to_string()])
    }

    /// Makes the NATs forget every mapping: the next packet of each flow gets a new one (with
    /// [`Mapping::Random`], on another port), as a router that rebooted or rebound would.
    pub fn flush_mappings(&self) -> Result<()> {
        self.nats().try_for_each(|nat| self.exec(&nat, &["conntrack", "-F"]).map(|_| ()))
    }

    /// Packets and bytes the (first) NAT has forwarded so far, both ways (before any loss).
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

    /// Frames the delay line has carried and dropped so far (see [`delay::Counts`]); zero
    /// before [`Self::set_delay`].
    pub fn delay_counts(&self) -> delay::Counts {
        self.line.lock().ok().and_then(|line| line.as_ref().map(delay::DelayLine::counts)).unwrap_or_default()
    }

    fn add_namespace(&self, ns: &str) -> Result<()> {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.ip(ns, &["link", "set", "lo", "up"])
    }

    /// A veth pair from `a`'s `a_dev` to `b`'s `b_dev`, both up; `b_dev` gets `b_addr`.
    fn link(&self, a: &str, a_dev: &str, b: &str, b_dev: &str, b_addr: &str) -> Result<()> {
        run(Command::new("ip")
            .args(["link", "add", a_dev, "netns", a, "type", "veth"])
            .args(["peer", "name", b_dev, "netns", b]))?;
        self.ip(b, &["addr", "add", b_addr, "dev", b_dev])?;
        self.ip(a, &["link", "set", a_dev, "up"])?;
        self.ip(b, &["link", "set", b_dev, "up"])
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", ns]).args(args)).map(|_| ())
    }

    fn nft(&self, ns: &str, rules: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.prefix, BEDS.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, rules)?;
        let done = self.exec(ns, &["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        done.map(|_| ())
    }
}

impl Drop for Netbed {
    fn drop(&mut self) {
        // The line first: its threads hold the taps. Deleting a namespace deletes its end of
        // every veth pair, and with it the peer.
        if let Ok(line) = self.line.get_mut() {
            line.take();
        }
        if let Ok(line) = self.extra_line.get_mut() {
            line.take();
        }
        for ns in self.namespaces().iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
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
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some(
            "the network test bed needs /dev/net/tun (the kernel's TUN/TAP driver) for its delay line".to_owned(),
        );
    }
    let probe = format!("wp{}probe", std::process::id());
    if let Err(e) = run(Command::new("ip").args(["netns", "add", &probe])) {
        return Some(format!("cannot create a network namespace here: {e}"));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    None
}

/// A lock that a panic elsewhere leaves usable (its value is replaced whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `command`; fails with its stderr when it exits non-zero.
fn run(command: &mut Command) -> Result<Output> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}
