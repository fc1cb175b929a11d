//! Every number of a config file, fed any value: loading gives a config or an error that names
//! the key, never a panic; a config that loads has the number inside its documented range.
#![allow(clippy::unwrap_used)] // an unwrap here is an assertion

use proptest::prelude::*;
use std::ops::RangeInclusive;

use wmproxy_config::ranges as r;
use wmproxy_config::{ClientConfig, ServerConfig, parse_client, parse_server};

/// A server file with one group, one proxy and a vhost; `{}` is where the value goes.
const SERVER: &str = r#"
token = "long-enough-token"
[vhost]
http_bind = "127.0.0.1:0"
{vhost}
[limits]
{limits}
[[groups]]
name = "web"
key = "group-key"
remote_port = 7000
{group}
[[proxies]]
type = "socks5"
listen = "127.0.0.1:0"
via = "office"
{proxy}
"#;

/// A client file with one grouped service with an HTTP check and one proxy.
const CLIENT: &str = r#"
server_addr = "127.0.0.1:7835"
system_roots = true
name = "home"
token = "long-enough-token"
[limits]
{limits}
[[services]]
name = "web"
local_addr = "127.0.0.1:80"
group = "web"
group_key = "group-key"
{service}
[services.health_check]
type = "http"
{check}
[[proxies]]
type = "socks5"
listen = "127.0.0.1:0"
{proxy}
"#;

/// (where in the template, key, how to read the parsed value back, the documented range)
type Slot<C> = (&'static str, &'static str, fn(&C) -> u64, RangeInclusive<u64>);

const SERVER_SLOTS: &[Slot<ServerConfig>] = &[
    ("{limits}", "max_clients", |c| c.limits.max_clients.into(), r::MAX_CLIENTS),
    ("{limits}", "max_shared_clients", |c| c.limits.max_shared_clients.into(), r::MAX_CLIENTS),
    ("{limits}", "max_silent_connections", |c| c.limits.max_silent_connections.into(), r::MAX_CLIENTS),
    ("{limits}", "max_connections_per_user", |c| c.limits.max_connections_per_user.into(), r::MAX_STREAMS),
    ("{limits}", "max_unauthenticated", |c| c.limits.max_unauthenticated.into(), r::MAX_CLIENTS),
    (
        "{limits}",
        "max_unauthenticated_per_address",
        |c| c.limits.max_unauthenticated_per_address.into(),
        r::MAX_CLIENTS,
    ),
    ("{limits}", "auth_timeout_secs", |c| c.limits.auth_timeout_secs, r::TIMEOUT_SECS),
    ("{limits}", "max_streams_per_client", |c| c.limits.max_streams_per_client.into(), r::MAX_STREAMS),
    ("{limits}", "handshake_timeout_secs", |c| c.limits.handshake_timeout_secs, r::TIMEOUT_SECS),
    ("{limits}", "stream_open_timeout_secs", |c| c.limits.stream_open_timeout_secs, r::TIMEOUT_SECS),
    ("{limits}", "max_udp_flows", |c| c.limits.max_udp_flows.into(), r::MAX_STREAMS),
    ("{limits}", "max_udp_flows_per_client", |c| c.limits.max_udp_flows_per_client.into(), r::MAX_STREAMS),
    ("{limits}", "udp_flow_idle_timeout_secs", |c| c.limits.udp_flow_idle_timeout_secs, r::UDP_IDLE_SECS),
    ("{limits}", "drain_grace_secs", |c| c.limits.drain_grace_secs, r::DRAIN_GRACE_SECS),
    ("{vhost}", "header_read_timeout_secs", |c| c.vhost.header_read_timeout_secs, r::TIMEOUT_SECS),
    ("{vhost}", "body_timeout_secs", |c| c.vhost.body_timeout_secs, r::TIMEOUT_SECS),
    ("{vhost}", "max_header_bytes", |c| c.vhost.max_header_bytes as u64, r::MAX_HEADER_BYTES),
    ("{vhost}", "user_requests_per_minute", |c| c.vhost.user_requests_per_minute.into(), r::REQUESTS_PER_MINUTE),
    ("{vhost}", "user_request_burst", |c| c.vhost.user_request_burst.into(), r::REQUEST_BURST),
    ("{group}", "max_fails", |c| c.groups[0].max_fails.into(), r::MAX_FAILS),
    ("{group}", "fail_timeout_secs", |c| c.groups[0].fail_timeout_secs, r::FAIL_TIMEOUT_SECS),
    ("{group}", "retries", |c| c.groups[0].retries.into(), r::RETRIES),
    ("{proxy}", "handshake_timeout_secs", |c| c.proxies[0].proxy.handshake_timeout.as_secs(), r::TIMEOUT_SECS),
];

const CLIENT_SLOTS: &[Slot<ClientConfig>] = &[
    ("{limits}", "max_udp_flows", |c| c.limits.max_udp_flows.into(), r::MAX_STREAMS),
    ("{limits}", "udp_flow_idle_timeout_secs", |c| c.limits.udp_flow_idle_timeout_secs, r::UDP_IDLE_SECS),
    ("{service}", "weight", |c| c.services[0].exposure.group().unwrap().weight.into(), r::WEIGHT),
    ("{check}", "interval_ms", |c| check(c).interval_ms, r::CHECK_INTERVAL_MS),
    ("{check}", "timeout_ms", |c| check(c).timeout_ms, r::CHECK_TIMEOUT_MS),
    ("{check}", "rise", |c| check(c).rise.into(), r::RISE_FALL),
    ("{check}", "fall", |c| check(c).fall.into(), r::RISE_FALL),
    ("{check}", "expect_status", |c| check(c).expect_status.first().copied().unwrap_or(200).into(), r::HTTP_STATUS),
    ("{proxy}", "handshake_timeout_secs", |c| c.proxies[0].handshake_timeout.as_secs(), r::TIMEOUT_SECS),
];

fn check(c: &ClientConfig) -> &wmproxy_config::HealthCheck {
    c.services[0].exposure.group().unwrap().health_check.as_ref().unwrap()
}

/// The template with `key = value` in `slot` and every other slot empty.
fn fill(template: &str, slot: &str, line: &str) -> String {
    ["{limits}", "{vhost}", "{group}", "{proxy}", "{service}", "{check}"]
        .iter()
        .fold(template.to_owned(), |text, s| text.replace(s, if *s == slot { line } else { "" }))
}

fn value_line(key: &str, value: u64) -> String {
    if key == "expect_status" { format!("{key} = [{value}]") } else { format!("{key} = {value}") }
}

/// Values near every boundary that matters, and anywhere.
fn values() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=2u64,
        5..=20u64,
        95..=605u64,
        8_000..=8_300u64,
        (0..=40u32).prop_map(|bits| (1u64 << bits).saturating_sub(1)),
        (0..=40u32).prop_map(|bits| 1u64 << bits),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_server_number_loads_in_range_or_is_refused_by_name(slot in 0..SERVER_SLOTS.len(), value in values()) {
        let (place, key, read, range) = SERVER_SLOTS[slot].clone();
        let text = fill(SERVER, place, &value_line(key, value));
        match parse_server(&text) {
            Ok(config) => {
                prop_assert!(range.contains(&value), "{} = {} loaded, outside {:?}", key, value, range);
                prop_assert_eq!(read(&config), value, "{} = {} loaded as another value", key, value);
            }
            Err(e) => prop_assert!(e.to_string().contains(key), "{} = {}: the error does not name the key: {}", key, value, e),
        }
    }

    #[test]
    fn every_client_number_loads_in_range_or_is_refused_by_name(slot in 0..CLIENT_SLOTS.len(), value in values()) {
        let (place, key, read, range) = CLIENT_SLOTS[slot].clone();
        let text = fill(CLIENT, place, &value_line(key, value));
        match parse_client(&text) {
            Ok(config) => {
                prop_assert!(range.contains(&value), "{} = {} loaded, outside {:?}", key, value, range);
                prop_assert_eq!(read(&config), value, "{} = {} loaded as another value", key, value);
            }
            Err(e) => prop_assert!(e.to_string().contains(key), "{} = {}: the error does not name the key: {}", key, value, e),
        }
    }
}

#[test]
fn out_of_range_numbers_are_refused_with_key_and_line() {
    let text = fill(SERVER, "{vhost}", "max_header_bytes = 100");
    let err = parse_server(&text).unwrap_err().to_string();
    assert!(err.contains("max_header_bytes") && err.contains("line 5") && err.contains("8192"), "{err}");
    let text = fill(SERVER, "{limits}", "handshake_timeout_secs = 18446744073709551615");
    let err = parse_server(&text).unwrap_err().to_string();
    assert!(err.contains("limits.handshake_timeout_secs") && err.contains("line 7"), "{err}");
    let text = fill(SERVER, "{group}", "fail_timeout_secs = 99999999999");
    let err = parse_server(&text).unwrap_err().to_string();
    assert!(err.contains("groups.fail_timeout_secs") && err.contains("line 12"), "{err}");
    let text = fill(CLIENT, "{check}", "expect_status = [200, 600]");
    let err = parse_client(&text).unwrap_err().to_string();
    assert!(err.contains("expect_status") && err.contains("line 16"), "{err}");
}
