//! Pure decoder tests: no sockets. Every message round-trips, every truncation asks for more
//! bytes, and garbage is an error, never a panic.
#![allow(clippy::unwrap_used)] // an unwrap here is an assertion

use std::net::SocketAddr;

use wmproxy_wire::private::MAX_CANDIDATES;
use wmproxy_wire::{
    self as wire, AuthToken, BasicAuth, ControlReply, ControlRequest, FrameError, GroupKey, GroupMembership,
    HealthSpec, Hello, HelloReply, HttpSpec, MAX_FRAME_LEN, OpenResult, OpenStream, Proof, RegisterOutcome,
    RejectReason, ResumeSecret, ServiceKind, ServiceResult, ServiceSpec, TunnelLimits, WireMessage, auth, frame,
};
use wmproxy_wire::{Candidates, Name, PeerInfo, PrivateSpec, Target, Verifier};

fn n(name: &str) -> Name {
    Name::new(name).unwrap()
}

fn t(target: &str) -> Target {
    Target::new(target).unwrap()
}

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

fn hello() -> Hello {
    Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        client_name: n("home"),
        proof: Proof([7; 32]),
        resume: Some(ResumeSecret([9; 32])),
        servers: 3,
    }
}

fn register() -> ControlRequest {
    ControlRequest::Register {
        services: vec![
            ServiceSpec {
                name: n("ssh"),
                kind: ServiceKind::Tcp,
                remote_port: 6000,
                group: None,
                http: None,
                bandwidth_limit: Some(1 << 20),
                private: None,
            },
            ServiceSpec {
                name: n("dns"),
                kind: ServiceKind::Udp,
                remote_port: 6053,
                group: None,
                http: None,
                bandwidth_limit: None,
                private: None,
            },
            ServiceSpec {
                name: n("web"),
                kind: ServiceKind::Http,
                remote_port: 0,
                group: None,
                http: Some(HttpSpec {
                    custom_domains: vec!["example.com".into(), "*.example.org".into()],
                    subdomain: Some("blog".into()),
                    locations: vec!["/api".into()],
                    host_header_rewrite: None,
                    basic_auth: Some(BasicAuth { user: "u".into(), password: "p".into() }),
                }),
                bandwidth_limit: None,
                private: None,
            },
            ServiceSpec {
                name: n("web-2"),
                kind: ServiceKind::Tcp,
                remote_port: 0,
                group: Some(GroupMembership {
                    group: n("web"),
                    key: GroupKey("k".into()),
                    weight: 5,
                    drain: false,
                    health: Some(HealthSpec { rise: 2, fall: 3, start_healthy: false }),
                }),
                http: None,
                bandwidth_limit: None,
                private: None,
            },
            ServiceSpec {
                name: n("db"),
                kind: ServiceKind::Tcp,
                remote_port: 0,
                group: None,
                http: None,
                bandwidth_limit: None,
                private: Some(PrivateSpec {
                    verifier: Some(Verifier::derive(b"a secret", "home", "db")),
                    allow: vec![n("office")],
                }),
            },
        ],
    }
}

fn registered() -> ControlReply {
    ControlReply::Registered {
        results: vec![
            ServiceResult { name: n("ssh"), outcome: RegisterOutcome::Ok { port: 6000 } },
            ServiceResult { name: n("web"), outcome: RegisterOutcome::PortNotAllowed { allowed: "6000-6010".into() } },
            ServiceResult { name: n("x"), outcome: RegisterOutcome::Invalid("dup".into()) },
            ServiceResult { name: n("dns"), outcome: RegisterOutcome::DatagramsUnsupported },
            ServiceResult { name: n("web-2"), outcome: RegisterOutcome::Joined { port: 80 } },
            ServiceResult { name: n("web-3"), outcome: RegisterOutcome::UnknownGroup },
            ServiceResult { name: n("web-4"), outcome: RegisterOutcome::WrongGroupKey },
            ServiceResult { name: n("web-5"), outcome: RegisterOutcome::DomainNotAllowed("x.org".into()) },
            ServiceResult { name: n("web-6"), outcome: RegisterOutcome::RouteTaken("x.org/api".into()) },
            ServiceResult { name: n("web-7"), outcome: RegisterOutcome::HostTaken("x.org".into()) },
            ServiceResult { name: n("db"), outcome: RegisterOutcome::Private },
        ],
    }
}

/// Every prefix shorter than the frame is "need more"; the whole frame decodes to `msg` and
/// reports its exact length even with more bytes behind it.
fn check_round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(msg: T) {
    let bytes = frame::encode_to_vec(&msg).unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(frame::decode::<T>(&bytes[..cut]).unwrap(), None, "prefix of {cut} bytes");
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"payload that follows");
    let (decoded, used) = frame::decode::<T>(&longer).unwrap().unwrap();
    assert_eq!(decoded, msg);
    assert_eq!(used, bytes.len());
}

#[test]
fn every_message_round_trips_and_truncation_needs_more() {
    check_round_trip(hello());
    check_round_trip(Hello { resume: None, ..hello() });
    check_round_trip(HelloReply::Welcome {
        protocol_version: 1,
        resume: ResumeSecret([3; 32]),
        limits: TunnelLimits { streams: 65_536, udp_flows: 0 },
    });
    check_round_trip(HelloReply::Reject(RejectReason::VersionMismatch { server: 1, client: 2 }));
    check_round_trip(HelloReply::Reject(RejectReason::BadCredentials));
    check_round_trip(HelloReply::Reject(RejectReason::Throttled { retry_after_secs: 30 }));
    check_round_trip(HelloReply::Reject(RejectReason::ServerFull));
    check_round_trip(HelloReply::Reject(RejectReason::Invalid("name".into())));
    check_round_trip(HelloReply::Reject(RejectReason::NameInUse));
    check_round_trip(HelloReply::Reject(RejectReason::SharedTokenFull { max: 64 }));
    check_round_trip(register());
    check_round_trip(registered());
    check_round_trip(ControlReply::Withdrawn {
        results: vec![ServiceResult {
            name: n("ssh"),
            outcome: RegisterOutcome::PortNotAllowed { allowed: "6000-6010".into() },
        }],
    });
    check_round_trip(ControlRequest::Health { service: n("web-2"), ok: true, latency_us: 1234 });
    check_round_trip(OpenStream::Expose { service: n("ssh"), peer_addr: peer() });
    check_round_trip(OpenStream::Connect { target: t("example.com:443"), peer_addr: "[::1]:9".parse().unwrap() });
    check_round_trip(OpenStream::UdpExpose { service: n("dns"), peer_addr: peer() });
    check_round_trip(OpenStream::UdpConnect { target: t("9.9.9.9:53"), peer_addr: peer() });
    check_round_trip(OpenStream::ProxyConnect { target: t("intranet.example:80"), peer_addr: peer() });
    check_round_trip(OpenStream::ProxyUdpConnect { target: t("10.0.0.53:53"), peer_addr: peer() });
    check_round_trip(OpenStream::Ping);
    check_round_trip(OpenStream::Visit {
        client: n("home"),
        service: n("ssh"),
        verifier: Some(Verifier::derive(b"a secret", "home", "ssh")),
        peer_addr: peer(),
    });
    check_round_trip(OpenStream::Visit { client: n("home"), service: n("ssh"), verifier: None, peer_addr: peer() });
    check_round_trip(OpenStream::UdpVisit { client: n("home"), service: n("dns"), verifier: None, peer_addr: peer() });
    let candidates = Candidates::new([peer(), "10.0.0.2:7000".parse().unwrap(), "[2001:db8::1]:9".parse().unwrap()]);
    check_round_trip(OpenStream::Rendezvous {
        client: n("home"),
        service: n("ssh"),
        kind: ServiceKind::Udp,
        verifier: None,
        fingerprint: [3; 32],
        locals: candidates.clone(),
    });
    check_round_trip(OpenStream::Punch {
        visitor: n("office"),
        service: n("ssh"),
        fingerprint: [4; 32],
        candidates: candidates.clone(),
    });
    check_round_trip(PeerInfo { fingerprint: [5; 32], candidates });
    for r in [
        OpenResult::Ok,
        OpenResult::Refused,
        OpenResult::Unreachable,
        OpenResult::NotAllowed,
        OpenResult::Timeout,
        OpenResult::UnknownService,
        OpenResult::Busy,
        OpenResult::Reset,
        OpenResult::Offline,
        OpenResult::Forbidden,
    ] {
        check_round_trip(r);
    }
}

#[test]
fn oversized_length_is_rejected_before_reading_the_body() {
    let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(frame::decode::<Hello>(&len), Err(FrameError::TooLong { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN }));
    assert!(matches!(frame::decode::<Hello>(&[0xff; 4]), Err(FrameError::TooLong { .. })));
    assert_eq!(frame::decode::<Hello>(&[0, 0, 0, 0]), Err(FrameError::Empty));
}

#[test]
fn unknown_variant_is_malformed() {
    // Variant index 200 of OpenResult does not exist.
    let bytes = [0, 0, 0, 1, 200];
    assert!(matches!(frame::decode::<OpenResult>(&bytes), Err(FrameError::Malformed(_))));
    let bytes = [0, 0, 0, 1, 99];
    assert!(matches!(frame::decode::<OpenStream>(&bytes), Err(FrameError::Malformed(_))));
}

#[test]
fn trailing_bytes_in_a_body_are_an_error() {
    let mut bytes = frame::encode_to_vec(&OpenResult::Ok).unwrap();
    bytes.push(0);
    bytes[3] += 1;
    assert_eq!(frame::decode::<OpenResult>(&bytes), Err(FrameError::TrailingBytes(1)));
}

#[test]
fn huge_claimed_string_length_does_not_allocate_or_panic() {
    // OpenStream::Expose whose service name claims u64::MAX bytes.
    let mut body = vec![0u8, 253];
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    assert!(matches!(frame::decode::<OpenStream>(&bytes), Err(FrameError::Malformed(_))));
}

#[test]
fn garbage_never_panics() {
    // A deterministic spread of inputs: every length up to 64 with several fill patterns, with
    // and without a valid-looking header. Decoding must return, whatever it returns.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..64usize {
        for _ in 0..64 {
            let mut buf = Vec::with_capacity(len + 4);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(seed as u8);
            }
            let _ = frame::decode::<Hello>(&buf);
            let _ = frame::decode::<HelloReply>(&buf);
            let _ = frame::decode::<ControlRequest>(&buf);
            let _ = frame::decode::<ControlReply>(&buf);
            let _ = frame::decode::<OpenStream>(&buf);
            let _ = frame::decode::<OpenResult>(&buf);
            let _ = frame::decode::<OpenResult>(&buf[4..]);
        }
    }
}

#[test]
fn encoding_over_the_cap_fails_cleanly() {
    let services = (0..5000)
        .map(|i| ServiceSpec {
            name: n(&format!("service-number-{i:08}")),
            kind: ServiceKind::Tcp,
            remote_port: 1,
            group: None,
            http: None,
            bandwidth_limit: None,
            private: None,
        })
        .collect();
    let mut out = vec![1, 2, 3];
    let err = frame::encode(&ControlRequest::Register { services }, &mut out).unwrap_err();
    assert!(matches!(err, FrameError::TooLong { .. }));
    assert_eq!(out, [1, 2, 3], "a failed encode leaves the buffer untouched");
}

#[test]
fn protocol_version_can_be_read_from_any_hello() {
    let mut other = hello();
    other.protocol_version = 99;
    let bytes = frame::encode_to_vec(&other).unwrap();
    assert_eq!(frame::peek_protocol_version(&bytes[4..]).unwrap(), 99);
    assert!(frame::peek_protocol_version(&[]).is_err());
}

#[test]
fn proof_depends_on_token_and_exporter_and_secrets_are_masked() {
    let token = AuthToken::new("s3cret");
    let proof = auth::prove(&token, b"exporter-a");
    assert!(auth::verify(&token, b"exporter-a", &proof));
    assert!(!auth::verify(&token, b"exporter-b", &proof), "bound to the TLS session");
    assert!(!auth::verify(&AuthToken::new("other"), b"exporter-a", &proof));
    assert!(!format!("{token:?}").contains("s3cret"));
    assert_eq!(format!("{proof:?}"), "Proof(MASKED)");
}

#[test]
fn names_and_targets_are_checked_while_decoding() {
    // The same layout as `OpenStream`, with plain strings: what a hostile peer can send.
    #[derive(serde::Serialize)]
    enum Raw {
        Expose { service: String, peer_addr: SocketAddr },
        Connect { target: String, peer_addr: SocketAddr },
    }
    impl WireMessage for Raw {}
    impl<'de> serde::Deserialize<'de> for Raw {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(serde::de::Error::custom("encode only"))
        }
    }
    let decoded = |raw: Raw| frame::decode::<OpenStream>(&frame::encode_to_vec(&raw).unwrap());
    let good = decoded(Raw::Connect { target: "example.com:443".into(), peer_addr: peer() });
    assert!(matches!(good, Ok(Some((OpenStream::Connect { .. }, _)))), "{good:?}");
    for raw in [
        Raw::Expose { service: "no spaces".into(), peer_addr: peer() },
        Raw::Expose { service: String::new(), peer_addr: peer() },
        Raw::Connect { target: "example.com".into(), peer_addr: peer() },
        Raw::Connect { target: "example.com:0".into(), peer_addr: peer() },
        Raw::Connect { target: format!("{}:1", "a".repeat(300)), peer_addr: peer() },
    ] {
        let err = decoded(raw).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
    }
}

#[test]
fn candidate_lists_are_capped_when_made_and_when_decoded() {
    let many: Vec<SocketAddr> = (0..40u16).map(|p| SocketAddr::from(([10, 0, 0, 1], 1000 + p))).collect();
    assert_eq!(Candidates::new(many.clone()).addrs().len(), MAX_CANDIDATES);
    // A repeat counts once.
    assert_eq!(Candidates::new([many[0], many[0], many[1]]).addrs(), &many[..2]);
    // On the wire, a longer list is malformed, not truncated.
    #[derive(serde::Serialize)]
    struct Raw {
        fingerprint: [u8; 32],
        candidates: Vec<SocketAddr>,
    }
    let framed = |candidates: &[SocketAddr]| {
        let raw = Raw { fingerprint: [0; 32], candidates: candidates.to_vec() };
        let body = bincode::serde::encode_to_vec(raw, bincode::config::standard()).unwrap();
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend(body);
        framed
    };
    assert!(frame::decode::<PeerInfo>(&framed(&many[..MAX_CANDIDATES])).is_ok());
    assert!(frame::decode::<PeerInfo>(&framed(&many)).is_err());
}
