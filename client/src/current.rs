//! [`CurrentTunnel`]: the client's one handle for "the tunnel up now", which the reconnect loops
//! replace. Forwards and proxies hold it as their [`Upstream`]: each connection or flow asks it
//! for a tunnel of the moment, and gets [`OpenError::TunnelGone`] while none is up, or
//! [`OpenError::Busy`] past the server's per-client stream limit.
//!
//! With several servers, each reconnect loop has its slot (`mode = "all"`: one per server), and
//! `egress` picks among the tunnels up: the first slot's (`first`), or round robin over those
//! whose round-trip time is near the lowest (`balanced`). A server that died without closing
//! (a crash, a host cut off) keeps its tunnel up until QUIC's idle timeout (30 s); meanwhile a
//! proxy connection whose answer is slow pings that tunnel, and one that does not answer is
//! passed over for a while (`SUSPECT_FOR`) and the connection tried on another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use wmproxy_config::EgressChoice;
use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::relay::{Limits, Meter, RelayStats};
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Tunnel, Upstream};
use wmproxy_wire::{OpenStream, Target};

/// `balanced` spreads new connections over the tunnels whose round-trip time is within this
/// much of the lowest (or a quarter of it, if that is more): servers at about the same distance
/// share the load; a far one is left for when the near ones are gone.
const BALANCE_BAND: Duration = Duration::from_millis(5);

/// With another tunnel up, a proxy connection whose answer has not come after this long asks
/// its tunnel whether the server is there at all (a ping stream, which any live server
/// answers), for up to [`PING_WITHIN`]. The answer itself may take longer: the server may be
/// dialing a slow target.
const PING_AFTER: Duration = Duration::from_millis(500);
/// How long the ping of [`PING_AFTER`] may take.
const PING_WITHIN: Duration = Duration::from_secs(1);
/// How long a tunnel that did not answer a ping is passed over while another is up.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// A tunnel that did not answer a ping, and until when it is passed over.
type Suspect = (std::sync::Weak<Tunnel>, Instant);

/// The tunnels up now, one slot per reconnect loop.
type Slots = Vec<Option<Arc<Tunnel>>>;

/// The tunnels up now, if any. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CurrentTunnel {
    now: watch::Receiver<Slots>,
    /// Which one a new connection takes.
    egress: EgressChoice,
    /// `balanced`'s turn.
    turn: Arc<AtomicUsize>,
    /// Tunnels that did not answer a ping, and until when they are passed over.
    suspects: Arc<Mutex<Vec<Suspect>>>,
    /// Time for a stream's answer.
    open_timeout: Duration,
}

/// Installs and withdraws one reconnect loop's tunnel.
#[derive(Debug, Clone)]
pub(crate) struct Installer {
    slots: Arc<watch::Sender<Slots>>,
    slot: usize,
}

impl Installer {
    /// Puts `tunnel` in this loop's slot (`None`: withdraws it).
    pub fn send_replace(&self, tunnel: Option<Arc<Tunnel>>) {
        self.slots.send_modify(|slots| {
            if let Some(s) = slots.get_mut(self.slot) {
                *s = tunnel;
            }
        });
    }
}

impl CurrentTunnel {
    /// No tunnel yet; each of the `loops` [`Installer`]s puts its tunnel in place.
    pub(crate) fn new(loops: usize, egress: EgressChoice, open_timeout: Duration) -> (Vec<Installer>, Self) {
        let (slots, now) = watch::channel(vec![None; loops]);
        let slots = Arc::new(slots);
        let installers = (0..loops).map(|slot| Installer { slots: slots.clone(), slot }).collect();
        (installers, Self { now, egress, turn: Arc::default(), suspects: Arc::default(), open_timeout })
    }

    /// The tunnel a new connection takes now.
    pub fn get(&self) -> Option<Arc<Tunnel>> {
        self.pick(None)
    }

    /// The tunnel a new connection takes now, other than `besides` (one that just failed).
    /// A tunnel whose connection has closed is skipped even before its loop withdraws it.
    fn pick(&self, besides: Option<&Arc<Tunnel>>) -> Option<Arc<Tunnel>> {
        let suspects = self.suspects_now();
        let slots = self.now.borrow();
        let open = |t: &&Arc<Tunnel>| besides.is_none_or(|b| !Arc::ptr_eq(t, b)) && t.conn().close_reason().is_none();
        let trusted = |t: &&Arc<Tunnel>| !suspects.contains(&Arc::as_ptr(t));
        // Suspects only when there is nothing else.
        let any_trusted = slots.iter().flatten().any(|t| open(&t) && trusted(&t));
        let mut up = slots.iter().flatten().filter(|t| open(t) && (!any_trusted || trusted(t)));
        match self.egress {
            EgressChoice::First => up.next().cloned(),
            EgressChoice::Balanced => {
                // One reading of each RTT (they move), at most one per server.
                let rtts: Vec<(&Arc<Tunnel>, Duration)> = up.map(|t| (t, t.conn().rtt())).collect();
                let lowest = rtts.iter().map(|(_, rtt)| *rtt).min()?;
                let band = lowest + BALANCE_BAND.max(lowest / 4);
                let near = rtts.iter().filter(|(_, rtt)| *rtt <= band);
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                near.clone().nth(turn % near.count()).map(|(t, _)| Arc::clone(t))
            }
        }
    }

    /// The tunnels passed over now (failed a ping less than [`SUSPECT_FOR`] ago); the list is
    /// pruned of expired and gone entries on the way.
    fn suspects_now(&self) -> Vec<*const Tunnel> {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        suspects.retain(|(t, until)| *until > now && t.strong_count() > 0);
        suspects.iter().map(|(t, _)| t.as_ptr()).collect()
    }

    /// Passes `tunnel` over for [`SUSPECT_FOR`] (while another is up). Bounded: one entry per
    /// tunnel, and a client has at most one per server.
    fn suspect(&self, tunnel: &Arc<Tunnel>) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.retain(|(t, _)| t.strong_count() > 0 && !std::ptr::eq(t.as_ptr(), Arc::as_ptr(tunnel)));
        suspects.push((Arc::downgrade(tunnel), Instant::now() + SUSPECT_FOR));
    }

    /// Every slot's tunnel, in slot order (`/status`).
    pub(crate) fn slots(&self) -> Slots {
        self.now.borrow().clone()
    }

    /// Carries one local connection of `peer` to `target` through the tunnel up now: the bytes
    /// are pipelined behind the header, and relayed until both directions end, counted in
    /// `meter` as they pass.
    pub async fn carry(
        &self,
        tcp: TcpStream,
        (peer, target): (SocketAddr, Target),
        meter: &dyn Meter,
    ) -> Result<RelayStats, OpenError> {
        self.carry_as(tcp, OpenStream::Connect { target, peer_addr: peer }, meter).await
    }

    /// [`Self::carry`] with any client-opened `header` (a visitor's `Visit`).
    pub async fn carry_as(
        &self,
        tcp: TcpStream,
        header: OpenStream,
        meter: &dyn Meter,
    ) -> Result<RelayStats, OpenError> {
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let limits = Limits { meter: Some(meter), ..Limits::default() };
        tunnel.open_and_relay(&header, tcp, (self.open_timeout, &limits)).await
    }
}

impl CurrentTunnel {
    /// [`Tunnel::open_held`], and while another tunnel is up, a ping of `tunnel` when its answer
    /// is slow ([`PING_AFTER`]): a tunnel whose server does not answer the ping either is
    /// passed over for a while and the open given up (`TunnelGone`: try another).
    async fn open_watched(&self, tunnel: &Arc<Tunnel>, header: &OpenStream) -> Result<Opened<()>, OpenError> {
        let open = tunnel.open_held(header, self.open_timeout, ());
        let mut open = std::pin::pin!(open);
        tokio::select! {
            opened = &mut open => return opened,
            () = tokio::time::sleep(PING_AFTER) => {}
        }
        if self.pick(Some(tunnel)).is_none() {
            return open.await;
        }
        tokio::select! {
            opened = &mut open => opened,
            alive = wmproxy_tunnel::probe::probe(tunnel.conn(), PING_WITHIN) => {
                if alive {
                    open.await
                } else {
                    tracing::warn!("a tunnel's server does not answer; passing it over for new connections");
                    self.suspect(tunnel);
                    Err(OpenError::TunnelGone)
                }
            }
        }
    }
}

impl Upstream for CurrentTunnel {
    type By = ();

    /// Nothing of the user's has been sent when the answer comes, so a stream that fails
    /// because its tunnel went away (a server stopping, say) is tried once more on another
    /// tunnel, if one is up.
    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<()>, OpenError> {
        let header = OpenStream::Connect { target: ask.target()?, peer_addr: peer };
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let first = self.open_watched(&tunnel, &header).await;
        match first {
            Err(
                OpenError::Failed(DataStreamError::Connection(_) | DataStreamError::Stream(_)) | OpenError::TunnelGone,
            ) => match self.pick(Some(&tunnel)) {
                Some(other) => other.open_held(&header, self.open_timeout, ()).await,
                None => first,
            },
            other => other,
        }
    }

    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let header = OpenStream::UdpConnect { target: ask.target()?, peer_addr: peer };
        let permit = tunnel.flow_permit().ok_or(OpenError::Busy)?;
        Ok(FlowRoute { tunnel, header, ends_with: None, hold: vec![Box::new(permit)], limit: None })
    }
}
