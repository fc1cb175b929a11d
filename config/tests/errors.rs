//! What a new operator reads when a file is wrong (issue 19, item 10): every missing key at
//! once, at the file level; a list written as a table; and, for a value of the wrong form,
//! which key it is, what it is for and what it takes.

use wmproxy_config::{parse_client, parse_server};

const CLIENT_HEAD: &str = "server_addr = \"127.0.0.1:7835\"\n\
    server_fingerprint = \"3b8e11072c559a40f162d80e7cb3219458aa0fc63de27118b95f04cd66e013a7\"\n\
    name = \"home\"\ntoken = \"home-token-123\"\n";

fn client_error(src: &str) -> String {
    parse_client(src).expect_err("refused").to_string()
}

fn server_error(src: &str) -> String {
    parse_server(src).expect_err("refused").to_string()
}

#[test]
fn an_empty_client_file_lists_every_missing_key_at_once() {
    let e = client_error("");
    for key in ["`server_addr`", "`name`", "`token`", "`server_fingerprint` (or `ca_file`, or `system_roots`)"] {
        assert!(e.contains(key), "{key} missing from: {e}");
    }
    assert!(e.starts_with("the client config is missing required keys"), "{e}");
    assert!(!e.contains("TOML parse error") && !e.contains("line 1"), "not at a line: {e}");
}

#[test]
fn entries_missing_keys_are_listed_together_with_their_lines() {
    let e = server_error("token = \"shared-token-1\"\n\n[[clients]]\nname = \"home\"\n");
    assert!(
        e.contains("line 3, [[clients]] #1: `token`") && e.contains("line 3, [[clients]] #1: `allow_ports`"),
        "{e}"
    );
    assert!(e.contains("no default"), "{e}");
}

#[test]
fn a_missing_top_level_token_is_reported_for_the_file_not_at_the_control_table() {
    let e = server_error("bind = \"0.0.0.0:7835\"\n\n[control]\ntoken = \"control-token-1\"\n");
    assert!(e.contains("missing required keys") && e.contains("`token` (or `clients`)"), "{e}");
    assert!(e.contains("the `token` under [control] is that table's own"), "{e}");
    assert!(!e.contains("line 3"), "{e}");
}

#[test]
fn a_list_written_as_a_table_says_to_use_double_brackets() {
    let e = client_error(&format!("{CLIENT_HEAD}\n[services]\nname = \"web\"\nlocal_addr = \"127.0.0.1:80\"\n"));
    assert!(e.contains("write each entry under its own [[services]] header (an array of tables)"), "{e}");
    assert!(e.contains("line 6"), "{e}");
}

#[test]
fn a_value_of_the_wrong_form_names_its_key_meaning_and_range() {
    let e = client_error(&format!(
        "{CLIENT_HEAD}\n[[services]]\nname = \"web\"\nlocal_addr = \"127.0.0.1:80\"\nremote_port = \"8080x\"\n"
    ));
    assert!(e.contains("line 9") && e.contains("`services[0].remote_port` is the service's public port"), "{e}");
    assert!(e.contains("0-65535"), "{e}");
    let e = server_error("token = \"shared-token-1\"\nallow_ports = \"6000\"\n");
    assert!(e.contains("`allow_ports` is the ports that may be used: a list"), "{e}");
}

#[test]
fn remote_port_on_an_http_service_is_refused_with_why() {
    let e = client_error(&format!(
        "{CLIENT_HEAD}\n[[services]]\nname = \"web\"\ntype = \"http\"\nlocal_addr = \"127.0.0.1:80\"\n\
         custom_domains = [\"a.example.com\"]\nremote_port = 8080\n"
    ));
    assert!(e.contains("line 11") && e.contains("unknown field `remote_port`"), "{e}");
    assert!(e.contains("an HTTP service is reached by custom_domains or subdomain on the vhost port"), "{e}");
}

#[test]
fn a_short_group_key_is_called_a_group_key() {
    let e =
        server_error("token = \"shared-token-1\"\n\n[[groups]]\nname = \"web\"\nkey = \"short\"\nremote_port = 8000\n");
    assert!(e.contains("line 5") && e.contains("`groups[0].key` is the group's key"), "{e}");
    assert!(!e.contains("a token must"), "{e}");
}

#[test]
fn egress_networks_take_a_bare_address_as_that_one_address() {
    let config =
        parse_server("token = \"shared-token-1\"\n[egress]\nallow = [\"127.0.0.1\", \"::1\", \"10.0.0.0/8\"]\n")
            .expect("bare addresses are networks of one");
    let permits = |ip: &str| config.egress.permits(ip.parse().expect("an address"), |_| false);
    assert!(permits("127.0.0.1") && permits("::1") && permits("10.1.2.3"));
    assert!(!permits("127.0.0.2"), "a bare address is one address, not a network");
    let e = server_error("token = \"shared-token-1\"\n[egress]\ndeny = [\"10.0.0\"]\n");
    assert!(e.contains("`10.0.0` is not a network") && e.contains("CIDR form"), "{e}");
}

#[test]
fn a_keep_alive_at_or_past_the_idle_timeout_is_refused() {
    let e = client_error(&format!("{CLIENT_HEAD}[limits]\nkeep_alive_secs = 30\n"));
    assert!(e.contains("limits.keep_alive_secs") && e.contains("at most 25 seconds"), "{e}");
    let config = parse_client(&format!("{CLIENT_HEAD}[limits]\nkeep_alive_secs = 5\n")).expect("in range");
    assert_eq!(config.limits.keep_alive(), std::time::Duration::from_secs(5));
}

#[test]
fn the_congestion_controller_is_one_of_the_named_ones() {
    let e = client_error(&format!("{CLIENT_HEAD}[limits]\ncongestion = \"fast\"\n"));
    assert!(e.contains("congestion") && e.contains("`bbr`") && e.contains("`cubic`"), "{e}");
    let e = server_error("token = \"shared-token-1\"\n[limits]\ncongestion = 3\n");
    assert!(e.contains("congestion"), "{e}");
    let config = parse_client(&format!("{CLIENT_HEAD}[limits]\ncongestion = \"cubic\"\n")).expect("a name");
    assert_eq!(config.limits.congestion, wmproxy_config::Congestion::Cubic);
    let config = parse_client(CLIENT_HEAD).expect("the default");
    assert_eq!(config.limits.congestion, wmproxy_config::Congestion::Bbr);
}

/// A secret written as a table of the wrong shape is an error with its line, never a panic
/// (an empty table once made toml's map panic; `/adapt` and reloads parse untrusted files).
#[test]
fn a_secret_table_of_the_wrong_shape_is_an_error() {
    for (token, said) in [
        ("{}", "a secret table is"),
        ("{ file = 5 }", "invalid type"),
        ("{ file = \"a\", env = \"B\" }", "one key"),
        ("{ path = \"a\" }", "unknown secret source"),
    ] {
        let e = client_error(&CLIENT_HEAD.replace("token = \"home-token-123\"", &format!("token = {token}")));
        assert!(e.contains(said) && e.contains("line 4"), "{token}: {e}");
    }
}
