//! The TCP transport's link stream (datagrams and close frames): the decoder never panics,
//! never claims more bytes than it was given, and what it accepts encodes back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wmproxy_wire::link::{self, LinkFrame, MAX_CLOSE_REASON};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = link::decode(rest) {
        assert!(used <= rest.len() && used >= link::LINK_HEADER_LEN);
        let mut again = Vec::new();
        match frame {
            LinkFrame::Datagram(datagram) => link::encode_datagram(&mut again, datagram).expect("a decoded datagram encodes"),
            LinkFrame::Close { code, reason } => {
                assert!(reason.len() <= MAX_CLOSE_REASON);
                if let Ok(reason) = std::str::from_utf8(reason) {
                    link::encode_close(&mut again, code, reason);
                } else {
                    again.extend_from_slice(&rest[..used]);
                }
            }
        }
        assert_eq!(again, &rest[..used]);
        rest = &rest[used..];
    }
});
