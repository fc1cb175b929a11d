//! Every message the tunnel decodes from the wire (a rendezvous's `PeerInfo` too): a decoder never panics, never claims more
//! bytes than it was given, and whatever it accepts encodes and decodes back to itself.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use wmproxy_wire::{
    ControlReply, ControlRequest, Hello, HelloReply, OpenResult, OpenStream, PeerInfo, WireMessage, frame, hello,
};

fn round_trip<T: WireMessage + PartialEq + Debug>(data: &[u8]) {
    if let Ok(Some((message, used))) = frame::decode::<T>(data) {
        assert!(used <= data.len(), "decode used {used} of {} bytes", data.len());
        let encoded = frame::encode_to_vec(&message).expect("a decoded message encodes");
        let decoded = frame::decode::<T>(&encoded).expect("decodes again").expect("whole");
        assert_eq!(decoded, (message, encoded.len()));
    }
    let _ = frame::decode_body::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Hello>(data);
    round_trip::<HelloReply>(data);
    round_trip::<ControlRequest>(data);
    round_trip::<ControlReply>(data);
    round_trip::<OpenStream>(data);
    round_trip::<OpenResult>(data);
    round_trip::<PeerInfo>(data);
    let _ = hello::judge(data);
    let _ = frame::peek_protocol_version(data);
    if let Some(header) = data.first_chunk::<{ wmproxy_wire::FRAME_HEADER_LEN }>() {
        let _ = frame::body_len(*header);
    }
});
