//! Direct connections between clients: the server's part is the rendezvous. A visitor's
//! `Rendezvous` stream is admitted as a visit would be ([`Visits::admit`]); the server then
//! opens a `Punch` stream to the service's client, telling it who will connect (the visitor's
//! certificate fingerprint) and from where, and answers the visitor with the service client's
//! fingerprint and addresses. No data of the direct connection passes through the server.
//!
//! The addresses each side gets ([`candidates`]): the peer's address as the server sees it
//! (its NAT's mapping for the tunnel), the next two ports (where a NAT that allocates ports in
//! sequence puts the mapping toward a new destination), then the peer's own interface
//! addresses (for two clients behind the same NAT). Both tunnels must be QUIC: a direct
//! connection leaves from the tunnel's UDP socket, so that it goes out through the NAT mapping
//! the server has seen.

use std::net::SocketAddr;

use tracing::{Span, debug, info};
use wmproxy_tunnel::conn::TransportKind;
use wmproxy_tunnel::datastream;
use wmproxy_tunnel::stream::read_frame;
use wmproxy_tunnel::{RecvStream, SendStream};
use wmproxy_wire::{Candidates, OpenResult, OpenStream, PeerInfo};

use crate::sessions::Session;
use crate::visit::{Visit, Visits};

/// How many ports after the one the server sees are offered as candidates.
const PREDICTED_PORTS: u16 = 2;

/// A rendezvous as its header asks it.
#[derive(Debug)]
pub(crate) struct Rendezvous {
    pub visit: Visit,
    pub fingerprint: [u8; 32],
    pub locals: Candidates,
}

impl Visits {
    /// Serves one `Rendezvous` stream of `visitor`'s client.
    pub async fn rendezvous(&self, (send, recv): (SendStream, RecvStream), visitor: &Session, r: Rendezvous) {
        Span::current().record("target", format!("{}/{}", r.visit.client, r.visit.service));
        let Ok(_permit) = visitor.forwards.clone().try_acquire_owned() else {
            debug!("stream limit of the visiting client reached; refusing a rendezvous");
            return datastream::refuse(send, OpenResult::Busy).await;
        };
        let owner = match self.admit(visitor, &r.visit) {
            Ok((owner, _)) => owner,
            Err(refused) => return datastream::refuse(send, refused).await,
        };
        let quic = |s: &Session| s.tunnel.conn().kind() == TransportKind::Quic;
        if !quic(visitor) || !quic(&owner) {
            debug!("a rendezvous needs both tunnels on QUIC");
            return datastream::refuse(send, OpenResult::NotAllowed).await;
        }
        let punch = OpenStream::Punch {
            visitor: visitor.name.clone(),
            service: r.visit.service.clone(),
            fingerprint: r.fingerprint,
            candidates: candidates(visitor.tunnel.conn().remote_address(), &r.locals),
        };
        let asked = async {
            let mut opened = owner.tunnel.open_held(&punch, self.open_timeout, ()).await?;
            let info = read_frame::<PeerInfo, _>(&mut opened.recv).await.map_err(datastream::DataStreamError::from)?;
            Ok::<_, wmproxy_tunnel::OpenError>(info)
        };
        let info = match tokio::time::timeout(self.open_timeout, asked).await {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                debug!(error = %e, "the service's client refused or failed the punch");
                return datastream::refuse(send, crate::visit::answer_for(&e)).await;
            }
            Err(_) => return datastream::refuse(send, OpenResult::Timeout).await,
        };
        let answer = PeerInfo {
            fingerprint: info.fingerprint,
            candidates: candidates(owner.tunnel.conn().remote_address(), &info.candidates),
        };
        if let Err(e) = datastream::reply(send, recv, &answer).await {
            debug!(error = %e, "the visitor left before the rendezvous was answered");
            return;
        }
        self.metrics.visitors.rendezvous(&visitor.name, &r.visit.client, &r.visit.service);
        info!(visitor = %visitor.name, "rendezvous arranged for a direct connection");
    }
}

/// What a peer seen at `seen`, with interface addresses `locals`, is offered to the other side
/// as: see the module's documentation.
fn candidates(seen: SocketAddr, locals: &Candidates) -> Candidates {
    let seen = SocketAddr::new(seen.ip().to_canonical(), seen.port());
    let predicted =
        (1..=PREDICTED_PORTS).filter_map(|i| seen.port().checked_add(i)).map(|p| SocketAddr::new(seen.ip(), p));
    Candidates::new(std::iter::once(seen).chain(predicted).chain(locals.addrs().iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_address_comes_first_then_the_next_ports_then_the_locals() {
        let locals = Candidates::new(["10.0.0.2:7000".parse().expect("addr")]);
        let got = candidates("[::ffff:198.18.0.2]:40000".parse().expect("addr"), &locals);
        let want: Vec<SocketAddr> = ["198.18.0.2:40000", "198.18.0.2:40001", "198.18.0.2:40002", "10.0.0.2:7000"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(got.addrs(), &want[..]);
        // No port past 65535.
        assert_eq!(candidates("198.18.0.2:65535".parse().expect("addr"), &Candidates::default()).addrs().len(), 1);
    }
}
