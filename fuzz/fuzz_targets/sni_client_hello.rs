//! The HTTPS port's peek at a TLS ClientHello (rustls's Acceptor over the first bytes, at
//! most 16 KiB), which routes the connection by its SNI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wmproxy_fuzz::runtime().block_on(async {
        let mut io = data;
        if let Some(Some(sni)) = wmproxy_server::fuzzing::client_hello(&mut io).await {
            assert!(!sni.is_empty());
        }
    });
});
