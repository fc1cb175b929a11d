//! One flow's shared state ([`Flow`]) and the per-tunnel table of flows by id
//! ([`FlowTable`]), with the task that delivers incoming datagrams and sweeps idle flows.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quinn::SendDatagramError;

use crate::conn::Conn;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::stats::UdpStats;
use crate::bandwidth::Bandwidth;
use crate::relay::Meter;
use wmproxy_wire::udp;

/// Packets a flow may have queued toward its stream.
pub const STREAM_QUEUE_PACKETS: usize = 64;

/// Bytes all flows of one tunnel may have queued toward their streams together. Beyond it,
/// stream-path packets are dropped and counted.
pub const STREAM_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Where packets that come out of the tunnel go.
#[derive(Debug)]
pub enum Sink {
    /// A listening socket shared by many flows; packets go to the flow's user.
    Peer {
        /// The listening socket.
        socket: Arc<UdpSocket>,
        /// The user's address.
        peer: SocketAddr,
    },
    /// A socket of the flow's own, connected to its target.
    Connected(Arc<UdpSocket>),
    /// A SOCKS5 UDP relay socket: packets go to the user with this header in front.
    Prefixed {
        /// The relay socket.
        socket: Arc<UdpSocket>,
        /// The user's address.
        peer: SocketAddr,
        /// The SOCKS5 UDP reply header.
        prefix: Arc<[u8]>,
    },
}

impl Sink {
    fn try_send(&self, payload: &[u8]) -> io::Result<usize> {
        match self {
            Self::Peer { socket, peer } => socket.try_send_to(payload, *peer),
            Self::Connected(socket) => socket.try_send(payload),
            Self::Prefixed { socket, peer, prefix } => socket.try_send_to(&[&prefix[..], payload].concat(), *peer),
        }
    }

    /// Sends, waiting for socket buffer space.
    pub async fn send(&self, payload: &[u8]) -> io::Result<usize> {
        match self {
            Self::Peer { socket, peer } => socket.send_to(payload, *peer).await,
            Self::Connected(socket) => socket.send(payload).await,
            Self::Prefixed { socket, peer, prefix } => socket.send_to(&[&prefix[..], payload].concat(), *peer).await,
        }
    }
}

/// A packet queued for a flow stream. Holds its share of the tunnel's byte budget until
/// dropped.
#[derive(Debug)]
pub struct Queued {
    /// The UDP payload.
    pub payload: Bytes,
    budget: Arc<AtomicUsize>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.payload.len(), Ordering::Relaxed);
    }
}

/// The state of one flow that the tasks touching it share: its id, whether datagrams may be
/// used yet, when it last carried a packet, and where its packets go.
#[derive(Debug)]
pub struct Flow {
    /// The stream id; valid once `datagrams` is set, or once the flow is in a table.
    id: AtomicU64,
    /// The peer knows this flow: packets may go as datagrams.
    datagrams: AtomicBool,
    created: Instant,
    /// Milliseconds after `created` of the last packet either way.
    last_active_ms: AtomicU64,
    sink: Sink,
    to_stream: mpsc::Sender<Queued>,
    /// Cancelled when the flow ends (or to end it).
    done: CancellationToken,
    stats: Arc<UdpStats>,
    budget: Arc<AtomicUsize>,
    /// The service's bandwidth on this end: packets over it are dropped.
    limit: std::sync::OnceLock<Arc<Bandwidth>>,
    /// Counts the flow's bytes as they pass (a forward's listener), if set.
    meter: std::sync::OnceLock<Arc<dyn Meter>>,
}

impl Flow {
    /// A new flow of `table`'s tunnel, and the receiver of its stream-path packets (for the
    /// flow's task). Datagrams are off until [`Flow::confirm`].
    pub fn new(sink: Sink, table: &FlowTable) -> (Arc<Self>, mpsc::Receiver<Queued>) {
        Self::ending_with(sink, table, None)
    }

    /// As [`Flow::new`], and the flow also ends when `parent` is cancelled (for example when
    /// its backend stops being healthy).
    pub fn ending_with(
        sink: Sink,
        table: &FlowTable,
        parent: Option<&CancellationToken>,
    ) -> (Arc<Self>, mpsc::Receiver<Queued>) {
        let (to_stream, rx) = mpsc::channel(STREAM_QUEUE_PACKETS);
        let flow = Arc::new(Self {
            id: AtomicU64::new(u64::MAX),
            datagrams: AtomicBool::new(false),
            created: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            sink,
            to_stream,
            done: parent.map_or_else(CancellationToken::new, CancellationToken::child_token),
            stats: table.stats.clone(),
            budget: table.queued_bytes.clone(),
            limit: std::sync::OnceLock::new(),
            meter: std::sync::OnceLock::new(),
        });
        (flow, rx)
    }

    /// Limits what this flow sends into the tunnel to `limit` (shared with the service's other
    /// flows and connections on this end). Set once, before the first packet.
    pub fn limit_to(&self, limit: Arc<Bandwidth>) {
        let _ = self.limit.set(limit);
    }

    /// Records the flow's id (its stream's id).
    pub fn set_id(&self, id: u64) {
        self.id.store(id, Ordering::Relaxed);
    }

    /// The peer has the flow in its table: packets may travel as datagrams from now on.
    pub fn confirm(&self) {
        self.datagrams.store(true, Ordering::Release);
    }

    /// The token cancelled when the flow ends.
    pub fn done(&self) -> &CancellationToken {
        &self.done
    }

    /// Where the flow's packets from the tunnel go.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Counts the flow's bytes in `meter` from now on: what its user sends as `tcp_to_quic`,
    /// what is delivered to it as `quic_to_tcp` (the names of the TCP relay's directions).
    pub fn metered(&self, meter: Arc<dyn Meter>) {
        let _ = self.meter.set(meter);
    }

    /// Counts `len` bytes delivered to the flow's user.
    pub(crate) fn delivered(&self, len: usize) {
        if let Some(meter) = self.meter.get() {
            meter.passed(0, len as u64);
        }
    }

    /// Marks the flow active now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the flow has gone without a packet, as of `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        let since_created = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.created.checked_add(since_created).map_or(Duration::ZERO, |last| now.saturating_duration_since(last))
    }

    /// Sends a packet from the flow's socket into the tunnel: as a datagram when the flow is
    /// confirmed and the packet fits, else on the flow stream (see [`wmproxy_wire::udp`]).
    /// Never waits; a packet that cannot be sent now is dropped and counted.
    pub fn send(&self, conn: &Conn, payload: &[u8]) {
        self.touch();
        if let Some(limit) = self.limit.get()
            && !limit.try_take(payload.len())
        {
            return UdpStats::bump(&self.stats.dropped_bandwidth);
        }
        if let Some(meter) = self.meter.get() {
            meter.passed(payload.len() as u64, 0);
        }
        if self.datagrams.load(Ordering::Acquire) {
            let id = self.id.load(Ordering::Relaxed);
            let Ok(mut datagram) = udp::datagram_with_header(id, payload.len()) else {
                return;
            };
            let header_len = datagram.len();
            datagram.extend_from_slice(payload);
            let datagram = datagram.freeze();
            match conn.send_datagram(datagram.clone()) {
                Ok(()) => return UdpStats::bump(&self.stats.datagrams_sent),
                Err(SendDatagramError::ConnectionLost(_)) => return,
                // Too large for the path, or no datagrams on this tunnel: the stream carries it.
                Err(_) => return self.queue(datagram.slice(header_len..)),
            }
        }
        self.queue(Bytes::copy_from_slice(payload));
    }

    fn queue(&self, payload: Bytes) {
        let len = payload.len();
        if self.budget.fetch_add(len, Ordering::Relaxed) + len > STREAM_QUEUE_BYTES {
            self.budget.fetch_sub(len, Ordering::Relaxed);
            return UdpStats::bump(&self.stats.dropped_queue_full);
        }
        let queued = Queued { payload, budget: self.budget.clone() };
        if self.to_stream.try_send(queued).is_err() {
            UdpStats::bump(&self.stats.dropped_queue_full);
        }
    }

    /// Delivers a packet that came out of the tunnel as a datagram. Never waits.
    pub fn deliver(&self, payload: &[u8]) {
        self.touch();
        match self.sink.try_send(payload) {
            Ok(_) => {
                self.delivered(payload.len());
                UdpStats::bump(&self.stats.datagrams_received);
            }
            Err(e) => {
                debug!(error = %e, "dropping a packet the local socket would not take");
                UdpStats::bump(&self.stats.dropped_socket);
            }
        }
    }
}

/// The open flows of one tunnel, by id. The lock is held only for single map operations.
#[derive(Debug)]
pub struct FlowTable {
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
    stats: Arc<UdpStats>,
    /// Bytes queued toward flow streams, all flows together (see [`STREAM_QUEUE_BYTES`]).
    queued_bytes: Arc<AtomicUsize>,
}

impl FlowTable {
    /// An empty table counting into `stats`.
    pub fn new(stats: Arc<UdpStats>) -> Arc<Self> {
        Arc::new(Self { flows: Mutex::default(), stats, queued_bytes: Arc::default() })
    }

    /// The counters this table reports to.
    pub fn stats(&self) -> &Arc<UdpStats> {
        &self.stats
    }

    /// Adds a flow under `id` (its stream's id, which is never reused on a connection).
    pub fn insert(&self, id: u64, flow: Arc<Flow>) {
        flow.set_id(id);
        flow.touch();
        if self.lock().insert(id, flow).is_none() {
            UdpStats::bump(&self.stats.active_flows);
            UdpStats::bump(&self.stats.flows_opened);
        }
    }

    /// Removes the flow `id`, if present.
    pub fn remove(&self, id: u64) {
        if self.lock().remove(&id).is_some() {
            self.stats.active_flows.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The flow `id`.
    pub fn get(&self, id: u64) -> Option<Arc<Flow>> {
        self.lock().get(&id).cloned()
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every flow idle for `idle` or longer: removes it and cancels its task. Returns how
    /// many.
    pub fn sweep(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut flows = self.lock();
            let ids: Vec<u64> = flows.iter().filter(|(_, f)| f.idle_for(now) >= idle).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| flows.remove(&id)).collect()
        };
        for flow in &expired {
            self.stats.active_flows.fetch_sub(1, Ordering::Relaxed);
            UdpStats::bump(&self.stats.flows_expired);
            flow.done.cancel();
        }
        expired.len()
    }

    /// Ends every flow (the tunnel is going away).
    pub fn close_all(&self) {
        let flows: Vec<_> = self.lock().drain().map(|(_, f)| f).collect();
        for flow in flows {
            self.stats.active_flows.fetch_sub(1, Ordering::Relaxed);
            flow.done.cancel();
        }
    }

    /// Delivers the tunnel's incoming datagrams to their flows, and sweeps flows idle for
    /// `idle`, until the connection ends; then ends every flow.
    pub async fn run(self: Arc<Self>, conn: Conn, idle: Duration) {
        let mut sweep = tokio::time::interval(sweep_interval(idle));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                datagram = conn.read_datagram() => match datagram {
                    Ok(datagram) => self.dispatch(&datagram),
                    Err(_) => break,
                },
                _ = sweep.tick() => {
                    let n = self.sweep(idle);
                    if n > 0 {
                        debug!(expired = n, open = self.len(), "idle UDP flows closed");
                    }
                }
            }
        }
        self.close_all();
    }

    /// Hands one incoming datagram to its flow, or counts why it was dropped.
    pub fn dispatch(&self, datagram: &[u8]) {
        match udp::decode_datagram(datagram) {
            Ok((id, payload)) => match self.get(id) {
                Some(flow) => flow.deliver(payload),
                None => UdpStats::bump(&self.stats.dropped_unknown_flow),
            },
            Err(_) => UdpStats::bump(&self.stats.dropped_malformed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Flow>>> {
        // Single map operations cannot leave the map inconsistent: a poisoned lock is usable.
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often idle flows are looked for: a quarter of the timeout (a flow lives at most 25 %
/// past it), between 50 ms and 15 s.
pub fn sweep_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sink() -> Sink {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Sink::Connected(Arc::new(socket))
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_ends_only_flows_idle_past_the_timeout() {
        let stats = Arc::new(UdpStats::default());
        let table = FlowTable::new(stats.clone());
        let idle = Duration::from_secs(60);
        let (quiet, _rx1) = Flow::new(sink().await, &table);
        let (busy, _rx2) = Flow::new(sink().await, &table);
        table.insert(1, quiet.clone());
        table.insert(5, busy.clone());
        assert_eq!(stats.snapshot().active_flows, 2);

        tokio::time::advance(Duration::from_secs(59)).await;
        busy.touch();
        assert_eq!(table.sweep(idle), 0, "nothing is idle for 60 s yet");

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(table.sweep(idle), 1);
        assert!(quiet.done().is_cancelled());
        assert!(!busy.done().is_cancelled());
        assert!(table.get(1).is_none() && table.get(5).is_some());

        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(table.sweep(idle), 1);
        let s = stats.snapshot();
        assert_eq!((s.active_flows, s.flows_opened, s.flows_expired), (0, 2, 2));
        assert!(table.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_task_returns_the_table_to_empty() {
        let table = FlowTable::new(Arc::default());
        let idle = Duration::from_secs(60);
        let (flow, _rx) = Flow::new(sink().await, &table);
        table.insert(1, flow.clone());
        let mut ticks = tokio::time::interval(sweep_interval(idle));
        // Drive the same loop `run` does, without a connection.
        let start = Instant::now();
        while !table.is_empty() {
            ticks.tick().await;
            table.sweep(idle);
        }
        let took = start.elapsed();
        assert!(took >= idle && took <= idle + sweep_interval(idle), "{took:?}");
        assert!(flow.done().is_cancelled());
    }

    #[tokio::test]
    async fn malformed_and_unknown_datagrams_are_counted() {
        let stats = Arc::new(UdpStats::default());
        let table = FlowTable::new(stats.clone());
        let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(backend.local_addr().unwrap()).await.unwrap();
        socket.writable().await.unwrap();
        let (flow, _rx) = Flow::new(Sink::Connected(Arc::new(socket)), &table);
        table.insert(9, flow);

        table.dispatch(&[]);
        table.dispatch(&[0x40]);
        table.dispatch(&[7, 1, 2]);
        table.dispatch(&[9, b'h', b'i']);
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), backend.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"hi");
        let s = stats.snapshot();
        assert_eq!((s.dropped_malformed, s.dropped_unknown_flow, s.datagrams_received), (2, 1, 1));
    }

    #[tokio::test]
    async fn the_stream_queue_is_bounded_by_packets_per_flow_and_bytes_per_tunnel() {
        let stats = Arc::new(UdpStats::default());
        let table = FlowTable::new(stats.clone());
        let (small, _small_rx) = Flow::new(sink().await, &table);
        for _ in 0..STREAM_QUEUE_PACKETS + 3 {
            small.queue(Bytes::from_static(b"x"));
        }
        assert_eq!(stats.snapshot().dropped_queue_full, 3, "per-flow packet limit");

        let (a, mut a_rx) = Flow::new(sink().await, &table);
        let (b, mut b_rx) = Flow::new(sink().await, &table);
        let big = Bytes::from(vec![0u8; 60_000]);
        for _ in 0..40 {
            a.queue(big.clone());
            b.queue(big.clone());
        }
        let fits = (STREAM_QUEUE_BYTES - STREAM_QUEUE_PACKETS) / big.len();
        assert_eq!(stats.snapshot().dropped_queue_full, 3 + (80 - fits) as u64, "per-tunnel byte budget");
        // Taking packets out releases their budget.
        while let Ok(q) = a_rx.try_recv() {
            drop(q);
        }
        while let Ok(q) = b_rx.try_recv() {
            drop(q);
        }
        assert_eq!(table.queued_bytes.load(Ordering::Relaxed), STREAM_QUEUE_PACKETS);
    }
}
