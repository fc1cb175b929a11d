//! What only beds with two homes do: two homes on one LAN, a cut between the two NATs, a
//! delay line per NAT (so that the homes are as far apart as each is from the public host),
//! and a reference server on a NAT's own outside address.

use std::time::Duration;

use anyhow::Result;

use super::Mapping;
use super::{HOME_MATE, NAT_LAN, NAT_WAN, NAT2_WAN, Netbed, PUBLIC, delay, lock};

impl Netbed {
    /// Builds a bed with one NAT (mapping as `mapping`) and two homes on its LAN: [`super::HOME`] and
    /// [`HOME_MATE`] (namespaces [`Netbed::home`] and [`Netbed::home2`]).
    pub fn start_shared_lan(mapping: Mapping) -> Result<Self> {
        let mut bed = Self::build(&[mapping], 0)?;
        bed.mate = true;
        let (nat, mate) = (bed.nat(), bed.home2());
        bed.add_namespace(&mate)?;
        // The LAN becomes a switch (a bridge) holding the NAT's address, with both homes on it.
        bed.ip(&nat, &["link", "add", "brlan", "type", "bridge"])?;
        bed.ip(&nat, &["link", "set", "brlan", "up"])?;
        bed.ip(&nat, &["addr", "del", &format!("{NAT_LAN}/24"), "dev", "lan0"])?;
        bed.ip(&nat, &["link", "set", "lan0", "master", "brlan"])?;
        bed.ip(&nat, &["addr", "add", &format!("{NAT_LAN}/24"), "dev", "brlan"])?;
        bed.link(&nat, "lan1", &mate, "eth0", &format!("{HOME_MATE}/24"))?;
        bed.ip(&nat, &["link", "set", "lan1", "master", "brlan"])?;
        bed.ip(&mate, &["route", "add", "default", "via", &NAT_LAN.to_string()])?;
        Ok(bed)
    }

    /// Puts each NAT of a bed with two homes behind a delay line of its own, `one_way` each
    /// way, and limits each NAT's links to `mbit` Mbit/s ([`Self::set_rate`]): a home and the
    /// public host are then `2 × one_way` apart (round trip), and the two homes `4 × one_way`,
    /// the same as a home, the public host and the other home: a direct path between the homes
    /// and one relayed by the public host have the same round-trip time and bottleneck.
    pub fn separate_homes(&self, one_way: Duration, mbit: u32) -> Result<()> {
        anyhow::ensure!(self.homes == 2, "a bed with two homes");
        let mut line = self.line.lock().map_err(|_| anyhow::anyhow!("the delay line's lock is poisoned"))?;
        anyhow::ensure!(line.is_none(), "the bed has a delay line already");
        let wire = self.wire();
        let mut lines = Vec::new();
        for (i, (taps, bridge)) in [(["tap0", "tap1"], "br1"), (["tap2", "tap3"], "br2")].into_iter().enumerate() {
            lines.push(delay::DelayLine::start(&wire, taps, one_way)?);
            self.ip(&wire, &["link", "add", bridge, "type", "bridge"])?;
            for (dev, to) in [(taps[0], "br0"), (taps[1], bridge)] {
                self.ip(&wire, &["link", "set", dev, "txqueuelen", "10000"])?;
                self.ip(&wire, &["link", "set", dev, "master", to])?;
                self.ip(&wire, &["link", "set", dev, "up"])?;
            }
            self.ip(&wire, &["link", "set", bridge, "up"])?;
            self.ip(&wire, &["link", "set", &format!("nat{i}"), "master", bridge])?;
        }
        *line = lines.pop();
        *lock(&self.extra_line) = lines.pop();
        drop(line);
        self.set_rate(mbit)
    }

    /// Lets the (first) NAT accept TCP connections from outside to `port` on itself (its
    /// firewall drops them otherwise): for a reference server on the NAT's outside address.
    pub fn nat_accepts_tcp(&self, port: u16) -> Result<()> {
        self.nft(&self.nat(), &format!("insert rule ip wpnat input tcp dport {port} accept\n"))
    }

    /// Drops every packet between the two NATs (`true`), either way, as a path between two
    /// homes that broke while each still reaches the public host; or lets them pass again.
    pub fn cut_between_nats(&self, cut: bool) -> Result<()> {
        let rules = if cut {
            format!(
                "table inet wpcut {{\n chain forward {{ type filter hook forward priority -30; \
                 ip daddr {{ {NAT_WAN}, {NAT2_WAN} }} ip saddr != {PUBLIC} drop; \
                 ip saddr {{ {NAT_WAN}, {NAT2_WAN} }} drop; }}\n}}\n"
            )
        } else {
            "delete table inet wpcut\n".to_owned()
        };
        self.nats().try_for_each(|nat| self.nft(&nat, &rules))
    }
}
