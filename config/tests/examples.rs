//! The shipped examples (issue 19, items 7 and 13): every file under `config/examples/` loads,
//! and, written back as its file (what `GET /now` shows) with the secrets filled in, loads into
//! an equal config; and every copy of an example in the docs is the file itself.
//!
//! The docs include a file between `<!-- include PATH -->` and `<!-- end include -->`; run the
//! tests with `WMPROXY_BLESS=1` to write the files' current text into the docs.

use std::path::{Path, PathBuf};

use wmproxy_config::now::fill_secrets;

/// One value for every secret, so that the masked ones can be filled back in.
const SECRET: &str = "the-one-secret-123";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.toml` under `dir`, sorted.
fn examples(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(examples(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `text` with every secret (`"change-me-…"`, `{ file = … }`, `{ env = … }`) replaced by
/// [`SECRET`].
fn one_secret(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some((key, value)) = line.split_once(" = ") else { return line.to_owned() };
            let value = value.trim_start();
            let secret = value.starts_with("\"change-me-") || value.starts_with("{ file") || value.starts_with("{ env");
            if !secret {
                return line.to_owned();
            }
            let rest = if value.starts_with('{') {
                value.find('}').map(|e| &value[e + 1..])
            } else {
                value[1..].find('"').map(|e| &value[e + 2..])
            };
            format!("{key} = \"{SECRET}\"{}", rest.unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `table` as TOML text with every masked secret filled in.
fn filled(table: toml::Table) -> String {
    let mut value = toml::Value::Table(table);
    fill_secrets(&mut value, SECRET);
    toml::to_string(&value).expect("a table is TOML")
}

#[test]
fn every_example_loads_and_reads_back_equal() {
    let all = examples(&root().join("config/examples"));
    assert!(all.len() >= 8, "the examples were found: {all:?}");
    for path in all {
        let name = path.display().to_string();
        let text = one_secret(&std::fs::read_to_string(&path).expect("readable"));
        let is_server = path.file_name().is_some_and(|f| f.to_string_lossy().contains("server"));
        if is_server {
            let config = wmproxy_config::parse_server(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = filled(config.to_file());
            let again =
                wmproxy_config::parse_server(&back).unwrap_or_else(|e| panic!("{name} written back: {e}\n{back}"));
            assert_eq!(again, config, "{name} written back:\n{back}");
        } else {
            let config = wmproxy_config::parse_client(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(config.warnings.is_empty(), "{name}: {:?}", config.warnings);
            let back = filled(config.to_file());
            let again =
                wmproxy_config::parse_client(&back).unwrap_or_else(|e| panic!("{name} written back: {e}\n{back}"));
            assert_eq!(again, config, "{name} written back:\n{back}");
            assert!(!back.contains("remote_port = 0"), "{back}");
            assert!(back.contains("server_fingerprint = \"3b:8e:11"), "colon-hex: {back}");
        }
    }
}

/// The complete examples cover every kind of service, forward, group and proxy.
#[test]
fn the_complete_examples_show_every_kind() {
    let client = std::fs::read_to_string(root().join("config/examples/client.toml")).expect("client example");
    let client = wmproxy_config::parse_client(&one_secret(&client)).expect("loads");
    let kinds: std::collections::BTreeSet<_> =
        client.services.iter().map(|s| format!("{:?}", s.exposure.kind())).collect();
    assert_eq!(kinds.len(), 5, "tcp, udp, http, https, ws: {kinds:?}");
    assert!(client.services.iter().any(|s| s.exposure.group().is_some()), "a group member");
    let forwards: std::collections::BTreeSet<_> = client
        .forwards
        .iter()
        .map(|f| format!("{:?}", f.kind).split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(forwards.len(), 3, "tcp, udp, ws forwards: {forwards:?}");
    assert_eq!(client.proxies.len(), 2, "a socks5 and an http proxy");
    let server = std::fs::read_to_string(root().join("config/examples/server.toml")).expect("server example");
    let server = wmproxy_config::parse_server(&one_secret(&server)).expect("loads");
    let groups: std::collections::BTreeSet<_> =
        server.groups.iter().map(|g| format!("{:?}", g.kind.service_kind())).collect();
    assert_eq!(groups.len(), 4, "tcp, udp, http, https groups");
    assert_eq!(server.proxies.len(), 2, "a socks5 and an http proxy");
    assert!(server.shared.as_ref().is_some_and(|s| !s.allow_domains.is_empty()), "top-level allow_domains");
    assert!(server.vhost.http_bind.is_some() && server.vhost.subdomain_host.is_some());
}

/// Every `<!-- include PATH -->` block of the README and the docs is PATH's text, verbatim.
#[test]
fn the_docs_show_the_shipped_examples() {
    let bless = std::env::var_os("WMPROXY_BLESS").is_some();
    let mut docs = vec![root().join("README.md")];
    docs.extend(std::fs::read_dir(root().join("docs")).expect("docs/").filter_map(|e| {
        let path = e.ok()?.path();
        path.extension().is_some_and(|x| x == "md").then_some(path)
    }));
    let mut included = 0;
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("readable");
        let (synced, count) = sync(&text);
        included += count;
        if synced != text {
            assert!(
                bless,
                "{} shows an example that is not the shipped file: run WMPROXY_BLESS=1 cargo test -p wmproxy-config --test examples",
                doc.display()
            );
            std::fs::write(&doc, synced).expect("writable");
        }
    }
    assert!(included >= 4, "the complete examples and the recipes are included ({included})");
}

/// `text` with every include block holding its file's current text, and how many there are.
fn sync(text: &str) -> (String, usize) {
    const START: &str = "<!-- include ";
    const END: &str = "<!-- end include -->";
    let (mut out, mut rest, mut count) = (String::new(), text, 0);
    while let Some(at) = rest.find(START) {
        let header_end = rest[at..].find("-->").map(|e| at + e + 3).expect("an include marker ends with -->");
        let path = rest[at + START.len()..header_end - 3].trim();
        let body_end = rest[header_end..].find(END).map(|e| header_end + e).expect("an include has an end marker");
        let file = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        out.push_str(&rest[..header_end]);
        out.push_str(&format!("\n\n```toml\n{}\n```\n\n", file.trim_end()));
        rest = &rest[body_end..];
        count += 1;
    }
    out.push_str(rest);
    (out, count)
}
