//! Setting up both ends of a TCP-transport connection, and the tasks that run it: the HTTP/2
//! connection itself, the opener's offers, the offerer's routing of requests, the keepalive
//! and the link stream. Every task ends when the connection's state says stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::{Ping, PingPong, Reason};
use quinn::ConnectionError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::link::{self, Closing, DATAGRAM_QUEUE};
use super::state::State;
use super::stream::{TcpRecv, TcpSend};
use super::{Inner, MAX_FRAME, MAX_HEADERS, MAX_OFFERS, TcpConn, TcpSettings};

/// Request paths: a stream the opener opens, an offer, the link stream.
pub(super) const STREAM: &str = "http://wmproxy/stream";
const OFFER: &str = "http://wmproxy/offer";
const LINK: &str = "http://wmproxy/link";

/// Streams an offerer's HTTP/2 layer lets the opener have open at once: the most a server
/// config may set per client, and the offers and link stream. The tunnel's own limit is
/// enforced below it, by permits ([`TcpConn::allow_streams`]).
const MAX_REQUESTS: u32 = 1_000_000 + MAX_OFFERS as u32 + 1;

/// A parked request of the opener, which the offerer answers to open a stream.
#[derive(Debug)]
pub(super) struct Offer {
    pub body: h2::RecvStream,
    pub respond: h2::server::SendResponse<Bytes>,
}

/// What the opener's driver is told.
#[derive(Debug)]
pub(super) enum Command {
    /// The peer authenticated: full windows and this many offers.
    OpenUp { settings: TcpSettings, offers: usize },
}

pub(super) fn request(uri: &'static str) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(uri);
    request
}

/// The server's end: it accepted `io` (TLS on TCP) from `remote`, whose TLS session exported
/// `secret`. Until [`TcpConn::open_up`], the peer gets a whole-connection window of
/// `pre_auth_window` bytes and one offer (for its control stream).
pub async fn opener<T>(
    io: T,
    (remote, secret): (SocketAddr, [u8; 32]),
    (settings, pre_auth_window): (TcpSettings, u32),
    tracker: &TaskTracker,
) -> Result<TcpConn, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (requests, mut connection) = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(pre_auth_window)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let state = Arc::new(State::default());
    spawn_keepalive(connection.ping_pong(), settings, &state, tracker);
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (offers_target, offers_rx) = watch::channel(1);
    tracker.spawn(drive_client(connection, commands_rx, offers_target, state.clone()).in_current_span());

    let (response, link_send) = requests.clone().send_request(request(LINK), false)?;
    let link = (TcpSend::new(link_send, state.clone()), TcpRecv::waiting(response, state.clone()));
    let (inbound_tx, inbound) = mpsc::unbounded_channel();
    tracker.spawn(keep_offers(requests.clone(), offers_rx, inbound_tx, state.clone()).in_current_span());
    let (_, offers) = mpsc::channel(1);
    let (conn, queues) = assemble(
        (Some(requests), Some(commands)),
        (offers, inbound),
        (Arc::new(Semaphore::new(0)), state),
        (remote, secret),
    );
    queues.start(link, tracker);
    Ok(conn)
}

/// The client's end: it connected `io` (TLS on TCP) to `remote`, whose TLS session exported
/// `secret`. The server's streams are refused until [`TcpConn::allow_streams`].
pub async fn offerer<T>(
    io: T,
    (remote, secret): (SocketAddr, [u8; 32]),
    settings: TcpSettings,
    tracker: &TaskTracker,
) -> Result<TcpConn, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_streams(MAX_REQUESTS)
        .handshake::<_, Bytes>(io)
        .await?;
    let state = Arc::new(State::default());
    spawn_keepalive(connection.ping_pong(), settings, &state, tracker);
    let (offers_tx, offers) = mpsc::channel(MAX_OFFERS);
    let (inbound_tx, inbound) = mpsc::unbounded_channel();
    let (link_tx, link_rx) = tokio::sync::oneshot::channel();
    let peer_streams = Arc::new(Semaphore::new(0));
    let routes =
        Routes { offers: offers_tx, inbound: inbound_tx, link: Some(link_tx), peer_streams: peer_streams.clone() };
    tracker.spawn(serve_requests(connection, routes, state.clone()).in_current_span());
    let (conn, queues) = assemble((None, None), (offers, inbound), (peer_streams, state.clone()), (remote, secret));
    let tracker_ = tracker.clone();
    tracker.spawn(
        async move {
            let closing = queues.closing.clone();
            tokio::select! {
                link = link_rx => if let Ok(link) = link {
                    queues.start(link, &tracker_);
                },
                // Closed before the opener's link stream came: there is no way to say why.
                _ = closing.asked() => state.stop(),
                () = state.stopped() => {}
            }
        }
        .in_current_span(),
    );
    Ok(conn)
}

/// The link stream's ends of the datagram queues, and what its writer needs to close.
struct LinkQueues {
    outgoing: mpsc::Receiver<Bytes>,
    incoming: mpsc::Sender<Bytes>,
    closing: Arc<Closing>,
    state: Arc<State>,
}

impl LinkQueues {
    fn start(self, (send, recv): (TcpSend, TcpRecv), tracker: &TaskTracker) {
        tracker.spawn(link::write(send, self.outgoing, self.closing, self.state.clone()).in_current_span());
        tracker.spawn(link::read(recv, self.incoming, self.state).in_current_span());
    }
}

fn assemble(
    (requests, commands): (Option<h2::client::SendRequest<Bytes>>, Option<mpsc::UnboundedSender<Command>>),
    (offers, inbound): (mpsc::Receiver<Offer>, mpsc::UnboundedReceiver<(TcpSend, TcpRecv)>),
    (peer_streams, state): (Arc<Semaphore>, Arc<State>),
    (remote, secret): (SocketAddr, [u8; 32]),
) -> (TcpConn, LinkQueues) {
    let (datagrams_out, outgoing) = mpsc::channel(DATAGRAM_QUEUE);
    let (incoming, datagrams_in) = mpsc::channel(DATAGRAM_QUEUE);
    let closing = Arc::new(Closing::default());
    let queues = LinkQueues { outgoing, incoming, closing: closing.clone(), state: state.clone() };
    let inner = Inner {
        requests,
        offers: Mutex::new(offers),
        inbound: Mutex::new(inbound),
        datagrams_out,
        datagrams_in: Mutex::new(datagrams_in),
        peer_streams,
        commands,
        closing,
        state,
        remote,
        secret: super::ExportedSecret(secret),
    };
    (TcpConn { inner: Arc::new(inner) }, queues)
}

/// Runs the opener's HTTP/2 connection and applies its commands, until it ends or is stopped.
async fn drive_client<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    offers_target: watch::Sender<usize>,
    state: Arc<State>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            () = state.stopped() => return,
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "TCP transport connection failed");
                }
                state.end(ConnectionError::Reset);
                return;
            }
            Some(command) = commands.recv() => match command {
                Command::OpenUp { settings, offers } => {
                    connection.set_target_window_size(settings.connection_window);
                    offers_target.send_replace(offers);
                }
            },
        }
    }
}

/// Keeps `target` offers outstanding at the offerer; an answered one is a stream it opened,
/// handed to `inbound`. An offerer that refuses offers (it has enough) is offered no more
/// than [`MAX_OFFERS`] times in all.
async fn keep_offers(
    requests: h2::client::SendRequest<Bytes>,
    mut target: watch::Receiver<usize>,
    inbound: mpsc::UnboundedSender<(TcpSend, TcpRecv)>,
    state: Arc<State>,
) {
    let mut out = FuturesUnordered::new();
    let mut refused = 0;
    loop {
        while out.len() < *target.borrow_and_update() && refused < MAX_OFFERS {
            let ready = tokio::select! {
                ready = requests.clone().ready() => ready,
                () = state.stopped() => return,
            };
            let Ok((response, send)) = ready.and_then(|mut r| r.send_request(request(OFFER), false)) else {
                return;
            };
            out.push(async move { (response.await, send) });
        }
        tokio::select! {
            () = state.stopped() => return,
            changed = target.changed() => if changed.is_err() {
                return;
            },
            Some((response, send)) = out.next(), if !out.is_empty() => match response {
                Ok(response) if response.status() == http::StatusCode::OK => {
                    let stream = (TcpSend::new(send, state.clone()), TcpRecv::open(response.into_body(), state.clone(), None));
                    let _ = inbound.send(stream);
                }
                _ => refused += 1,
            },
        }
    }
}

/// Where an offerer puts what the opener asks.
struct Routes {
    offers: mpsc::Sender<Offer>,
    inbound: mpsc::UnboundedSender<(TcpSend, TcpRecv)>,
    link: Option<tokio::sync::oneshot::Sender<(TcpSend, TcpRecv)>>,
    peer_streams: Arc<Semaphore>,
}

/// Runs the offerer's HTTP/2 connection: takes the opener's requests (streams within the
/// permits, offers up to [`MAX_OFFERS`], one link stream) and refuses the rest.
async fn serve_requests<T>(mut connection: h2::server::Connection<T, Bytes>, mut routes: Routes, state: Arc<State>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            () = state.stopped() => return,
            next = connection.accept() => next,
        };
        let Some(Ok((request, mut respond))) = next else {
            if let Some(Err(e)) = next {
                tracing::debug!(error = %e, "TCP transport connection failed");
            }
            state.end(ConnectionError::Reset);
            return;
        };
        // Compared in place, not formatted: a request per stream is the hot path.
        let (head, body) = request.into_parts();
        let is = |uri: &str| head.uri == uri;
        if is(STREAM) {
            match routes.peer_streams.clone().try_acquire_owned() {
                Ok(permit) => {
                    if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                        let stream =
                            (TcpSend::new(send, state.clone()), TcpRecv::open(body, state.clone(), Some(permit)));
                        let _ = routes.inbound.send(stream);
                    }
                }
                Err(_) => respond.send_reset(Reason::REFUSED_STREAM),
            }
        } else if is(OFFER) {
            if let Err(full) = routes.offers.try_send(Offer { body, respond }) {
                full.into_inner().respond.send_reset(Reason::REFUSED_STREAM);
            }
        } else if let Some(link) = routes.link.take_if(|_| is(LINK)) {
            if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                let _ = link.send((TcpSend::new(send, state.clone()), TcpRecv::open(body, state.clone(), None)));
            }
        } else {
            respond.send_reset(Reason::REFUSED_STREAM);
        }
    }
}

/// Pings the peer every `keep_alive`, recording the round trip; a peer silent for
/// `idle_timeout` ends the connection (timed out).
fn spawn_keepalive(ping: Option<PingPong>, settings: TcpSettings, state: &Arc<State>, tracker: &TaskTracker) {
    let Some(mut ping) = ping else { return };
    let state = state.clone();
    let keepalive = async move {
        loop {
            let sent = Instant::now();
            let answered = tokio::select! {
                () = state.stopped() => return,
                answered = tokio::time::timeout(settings.idle_timeout, ping.ping(Ping::opaque())) => answered,
            };
            match answered {
                Ok(Ok(_)) => state.set_rtt(sent.elapsed()),
                // The connection failed; its driver says so.
                Ok(Err(_)) => return,
                Err(_) => {
                    state.end(ConnectionError::TimedOut);
                    return;
                }
            }
            tokio::select! {
                () = state.stopped() => return,
                () = tokio::time::sleep(settings.keep_alive) => {}
            }
        }
    };
    tracker.spawn(keepalive.in_current_span());
}
