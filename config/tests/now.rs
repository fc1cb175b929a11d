//! `GET /now` reads back as a config (issue 19, item 7): every example, written back as its
//! file with the secrets filled in, loads into an equal config.

use std::path::Path;

use wmproxy_config::now::MASKED;

/// Every secret in the examples is `change-me-…`; one value for all of them lets the masked
/// ones be filled back in.
const SECRET: &str = "the-one-secret-123";

fn example(name: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"change-me-") {
        out.push_str(&rest[..at]);
        let end = rest[at + 1..].find('"').map_or(rest.len(), |e| at + 2 + e);
        out.push_str(&format!("\"{SECRET}\""));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `table` as TOML text with every masked secret filled in.
fn filled(table: toml::Table) -> String {
    fn fill(v: &mut toml::Value) {
        match v {
            toml::Value::String(s) if s == MASKED => *s = SECRET.to_owned(),
            toml::Value::Array(items) => items.iter_mut().for_each(fill),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| fill(v)),
            _ => {}
        }
    }
    let mut value = toml::Value::Table(table);
    fill(&mut value);
    toml::to_string(&value).expect("a table is TOML")
}

#[test]
fn every_example_reads_back_equal() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        let text = example(&name);
        if name.starts_with("server") {
            let config = wmproxy_config::parse_server(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = filled(config.to_file());
            let again =
                wmproxy_config::parse_server(&back).unwrap_or_else(|e| panic!("{name} written back: {e}\n{back}"));
            assert_eq!(again, config, "{name} written back:\n{back}");
        } else {
            let config = wmproxy_config::parse_client(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = filled(config.to_file());
            let again =
                wmproxy_config::parse_client(&back).unwrap_or_else(|e| panic!("{name} written back: {e}\n{back}"));
            assert_eq!(again, config, "{name} written back:\n{back}");
            assert!(!back.contains("remote_port = 0"), "{back}");
            assert!(back.contains("server_fingerprint = \"3b:8e:11"), "colon-hex: {back}");
        }
        seen += 1;
    }
    assert!(seen >= 2, "the examples were read");
}
