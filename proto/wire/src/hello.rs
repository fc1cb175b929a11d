//! The judgement of a Hello, as pure functions: the server's ([`judge`]) and the client's
//! reading of the answer ([`read_reply`]). The proof is checked apart ([`crate::auth::verify`]),
//! because the token to check it against is the server's business.

use crate::PROTOCOL_VERSION;
use crate::auth::ResumeSecret;
use crate::frame;
use crate::message::{Hello, HelloReply, RejectReason, TunnelLimits};

/// Judges the body of the first frame of a control stream. The version is read first, so a
/// peer speaking another version is told both versions rather than "malformed"; then the
/// message is decoded, which checks the client's name.
pub fn judge(body: &[u8]) -> Result<Hello, RejectReason> {
    let version = frame::peek_protocol_version(body).map_err(|e| RejectReason::Invalid(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(RejectReason::VersionMismatch { server: PROTOCOL_VERSION, client: version });
    }
    frame::decode_body::<Hello>(body).map_err(|e| RejectReason::Invalid(e.to_string()))
}

/// What a client makes of the server's answer to a Hello that announced `sent_version`: the
/// resume secret of its new session and the tunnel's limits, or why not. A `Welcome` of
/// another version is a mismatch too.
pub fn read_reply(reply: HelloReply, sent_version: u32) -> Result<(ResumeSecret, TunnelLimits), RejectReason> {
    match reply {
        HelloReply::Welcome { protocol_version, resume, limits } if protocol_version == sent_version => {
            Ok((resume, limits))
        }
        HelloReply::Welcome { protocol_version, .. } => {
            Err(RejectReason::VersionMismatch { server: protocol_version, client: sent_version })
        }
        HelloReply::Reject(reason) => Err(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Name, Proof};

    fn body(version: u32, name: &str) -> Vec<u8> {
        // A Hello with any name, valid or not, encoded by hand: `Name` would refuse a bad one.
        #[derive(serde::Serialize)]
        struct Raw<'a>(u32, &'a str, Proof, Option<ResumeSecret>, u32);
        let mut framed = Vec::new();
        let raw = Raw(version, name, Proof([1; 32]), None, 1);
        let config = bincode::config::standard();
        framed.extend(bincode::serde::encode_to_vec(raw, config).unwrap_or_default());
        framed
    }

    #[test]
    fn a_hello_is_judged_by_version_then_name() {
        let hello = judge(&body(PROTOCOL_VERSION, "home"));
        assert_eq!(hello.map(|h| h.client_name), Ok(Name::new("home").unwrap_or_else(|e| panic!("{e}"))));
        let other = judge(&body(PROTOCOL_VERSION + 1, "not a name"));
        assert_eq!(
            other,
            Err(RejectReason::VersionMismatch { server: PROTOCOL_VERSION, client: PROTOCOL_VERSION + 1 })
        );
        assert!(
            matches!(judge(&body(PROTOCOL_VERSION, "my laptop")), Err(RejectReason::Invalid(m)) if m.contains("laptop"))
        );
        assert!(matches!(judge(&[]), Err(RejectReason::Invalid(_))));
    }

    #[test]
    fn a_welcome_of_another_version_is_a_mismatch() {
        let (resume, limits) = (ResumeSecret([7; 32]), TunnelLimits { streams: 10, udp_flows: 2 });
        assert_eq!(read_reply(HelloReply::Welcome { protocol_version: 1, resume, limits }, 1), Ok((resume, limits)));
        assert_eq!(
            read_reply(HelloReply::Welcome { protocol_version: 2, resume, limits }, 1),
            Err(RejectReason::VersionMismatch { server: 2, client: 1 })
        );
        assert_eq!(read_reply(HelloReply::Reject(RejectReason::ServerFull), 1), Err(RejectReason::ServerFull));
    }
}
