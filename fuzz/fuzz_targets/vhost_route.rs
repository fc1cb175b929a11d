//! The vhost's routing of a request: its `Host` header or URI authority, normalized, then the
//! host index (exact, wildcard suffixes) and the longest covering path. Input: a flags byte
//! (bit 0: the HTTPS side; bit 1: a Host header), then the Host header and the request target
//! separated by a zero byte.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wmproxy_server::fuzzing::RouteTable;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(RouteTable::default)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (host, uri) = text.split_once('\0').unwrap_or(("", text));
    let host = (flags & 2 == 2).then_some(host);
    if let Some(found) = table().find(host, uri, flags & 1 == 1) {
        assert!(found.contains('/'), "a route is a host and a location: {found}");
    }
});
