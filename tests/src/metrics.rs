//! Reading a test server's `/metrics` the way Prometheus does.

use anyhow::{Context, Result, ensure};

use crate::TestServer;

/// The server's `/metrics`, parsed.
pub async fn scrape(server: &TestServer) -> Result<prometheus_parse::Scrape> {
    let (status, text) = server.control("GET", "/metrics", "").await?;
    ensure!(status == 200, "{status} {text}");
    parse(&text)
}

/// `/metrics` text, parsed.
pub fn parse(text: &str) -> Result<prometheus_parse::Scrape> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("a Prometheus text parser reads /metrics")
}

/// The value of `name` with `labels` in a parsed scrape, if present.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find_map(|s| {
        let matches = s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
        match (matches, &s.value) {
            (true, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => Some(*v),
            (true, prometheus_parse::Value::Untyped(v)) => Some(*v),
            _ => None,
        }
    })
}
