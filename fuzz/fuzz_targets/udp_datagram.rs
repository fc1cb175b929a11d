//! UDP over the tunnel: datagram headers (a flow id as a varint) and the stream path's
//! length-prefixed packets. Decoders never panic, and what they accept encodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wmproxy_wire::udp;

fuzz_target!(|data: &[u8]| {
    if let Ok((flow, payload)) = udp::decode_datagram(data) {
        let mut again = udp::datagram_with_header(flow, payload.len()).expect("a decoded flow id encodes");
        again.extend_from_slice(payload);
        assert_eq!(udp::decode_datagram(&again).expect("decodes again"), (flow, payload));
    }
    if let Some((value, used)) = udp::decode_varint(data) {
        assert!(used <= data.len() && value <= udp::MAX_VARINT);
    }
    if let Some((packet, used)) = udp::decode_packet(data) {
        assert!(used <= data.len() && packet.len() <= udp::MAX_PACKET_LEN);
    }
    if let Some(header) = data.first_chunk::<{ udp::PACKET_HEADER_LEN }>() {
        let _ = udp::packet_len(*header);
    }
});
