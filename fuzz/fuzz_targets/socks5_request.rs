//! A SOCKS5 user's greeting, username/password authentication and request, as the proxies
//! read them (fast-socks5 under wmproxy's settings). The first byte chooses whether the proxy
//! wants credentials.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let credentials = (choice & 1 == 1).then_some(("user", "secret-password"));
    wmproxy_fuzz::runtime().block_on(async {
        let (mut user, proxy) = tokio::io::duplex(64 * 1024);
        let _ = user.write_all(bytes).await;
        let _ = user.shutdown().await;
        let request = wmproxy_frontend::fuzzing::socks5_request(proxy, credentials);
        let _ = tokio::time::timeout(Duration::from_secs(5), request).await;
    });
});
