//! An HTTP proxy user's bytes: request heads (absolute-form and CONNECT), Proxy-Authorization,
//! pipelined requests. Every target is refused, so nothing is dialed. The first byte chooses
//! whether the proxy wants credentials.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let credentials = (choice & 1 == 1).then_some(("user", "secret-password"));
    wmproxy_fuzz::runtime().block_on(async {
        let (user, proxy) = tokio::io::duplex(64 * 1024);
        let (mut from_proxy, mut to_proxy) = tokio::io::split(user);
        let send = async {
            let _ = to_proxy.write_all(bytes).await;
            let _ = to_proxy.shutdown().await;
        };
        // Answers are read as they come, so a long pipeline never blocks the proxy.
        let answers = async {
            let mut sink = Vec::new();
            let _ = from_proxy.read_to_end(&mut sink).await;
        };
        let serve = wmproxy_frontend::fuzzing::http_proxy(proxy, credentials);
        let all = async { tokio::join!(send, answers, serve) };
        let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
    });
});
