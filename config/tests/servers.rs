//! Several servers (issue 17): `[[servers]]` entries with their own trust and token, the
//! single-server keys as one entry, `mode` and `egress`, and what is refused.

use wmproxy_config::{EgressChoice, ServerTrust, ServersMode, parse_client};

const FP_A: &str = "3b8e11072c559a40f162d80e7cb3219458aa0fc63de27118b95f04cd66e013a7";
const FP_B: &str = "a1045ce837902b6fd418c3770ae5923d6b21f08c45b91ed7036a58cf94e27b10";

fn several(extra_top: &str, second: &str) -> String {
    format!(
        "name = \"home\"\ntoken = \"top-level-token\"\n{extra_top}\n\
         [[servers]]\naddr = \"192.0.2.1:7835\"\nserver_fingerprint = \"{FP_A}\"\n\n\
         [[servers]]\naddr = \"192.0.2.2:7835\"\n{second}\n"
    )
}

#[test]
fn entries_take_their_own_trust_and_token_or_the_files() {
    let text = several(
        &format!("server_fingerprint = \"{FP_B}\"\nmode = \"failover\"\negress = \"balanced\""),
        "token = \"second-servers-token\"\ntcp_addr = \"192.0.2.2:443\"",
    );
    let config = parse_client(&text).expect("loads");
    assert_eq!(config.mode, ServersMode::Failover);
    assert_eq!(config.egress, EgressChoice::Balanced);
    let [a, b] = config.servers.as_slice() else { panic!("two servers: {:?}", config.servers) };
    assert!(matches!(a.trust, ServerTrust::Fingerprint(fp) if fp[0] == 0x3b), "its own");
    assert!(matches!(b.trust, ServerTrust::Fingerprint(fp) if fp[0] == 0xa1), "the file's");
    assert_eq!((a.token.expose(), b.token.expose()), ("top-level-token", "second-servers-token"));
    assert_eq!((a.tcp_addr.as_str(), b.tcp_addr.as_str()), ("192.0.2.1:7835", "192.0.2.2:443"));
    assert_eq!((a.server_name.as_str(), b.server_name.as_str()), ("192.0.2.1", "192.0.2.2"));
}

#[test]
fn the_single_server_keys_are_one_entry_and_all_and_first_are_the_defaults() {
    let text = format!(
        "server_addr = \"192.0.2.1:7835\"\nserver_fingerprint = \"{FP_A}\"\nname = \"home\"\ntoken = \"top-level-token\"\n"
    );
    let config = parse_client(&text).expect("loads");
    assert_eq!(config.servers.len(), 1);
    assert_eq!(config.servers[0].addr, "192.0.2.1:7835");
    assert_eq!((config.mode, config.egress), (ServersMode::All, EgressChoice::First));
}

#[test]
fn the_old_egress_table_still_reads_beside_the_new_egress_key() {
    let text = several("[egress]\nallow = [\"10.0.0.0/8\"]\n", &format!("server_fingerprint = \"{FP_B}\""));
    let config = parse_client(&text).expect("the deprecated table loads");
    assert_eq!(config.egress, EgressChoice::First);
    assert!(config.warnings.iter().any(|w| w.contains("deprecated")), "{:?}", config.warnings);
}

#[test]
fn mistakes_are_refused_naming_the_entry() {
    let cases = [
        // No trust anywhere for the second entry.
        (several("", ""), "servers[1].server_fingerprint"),
        // Two trust options in one entry.
        (
            several("", &format!("server_fingerprint = \"{FP_B}\"\nsystem_roots = true")),
            "servers[1].server_fingerprint",
        ),
        // The same server twice.
        (several("", &format!("server_fingerprint = \"{FP_B}\"")).replace("192.0.2.2", "192.0.2.1"), "servers[1].addr"),
        // Both ways of naming the server.
        (several("server_addr = \"192.0.2.9:7835\"", &format!("server_fingerprint = \"{FP_B}\"")), "server_addr"),
        // A bad address.
        (
            several("", &format!("server_fingerprint = \"{FP_B}\"")).replace("192.0.2.2:7835", "no-port"),
            "servers[1].addr",
        ),
        // An unknown mode.
        (several("mode = \"some\"", &format!("server_fingerprint = \"{FP_B}\"")), "mode"),
        (several("egress = \"nearest\"", &format!("server_fingerprint = \"{FP_B}\"")), "egress"),
    ];
    for (text, key) in cases {
        let err = parse_client(&text).expect_err(&text).to_string();
        assert!(err.contains(key), "{key} not named in: {err}\n--- for:\n{text}");
    }
    let no_token =
        several("", &format!("server_fingerprint = \"{FP_B}\"")).replace("token = \"top-level-token\"\n", "");
    let err = parse_client(&no_token).expect_err("no token").to_string();
    assert!(err.contains("servers[0].token") && err.contains("line"), "{err}");
    let many: String = (0..17)
        .map(|i| format!("[[servers]]\naddr = \"192.0.2.{i}:7835\"\nserver_fingerprint = \"{FP_A}\"\n"))
        .collect();
    let err =
        parse_client(&format!("name = \"home\"\ntoken = \"top-level-token\"\n{many}")).expect_err("17").to_string();
    assert!(err.contains("at most 16 servers"), "{err}");
}
