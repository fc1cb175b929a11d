//! Metric labels are bounded: a service's label sets live as long as it is published, and a
//! client has a bounded number of them.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use tokio::net::TcpStream;
use wmproxy_server::MAX_LABELED_PER_CLIENT;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{TestServer, init_tracing};
use wmproxy_wire::{MAX_SERVICES, RegisterOutcome};

use super::{Tenant, tcp};

const FAMILIES: [&str; 4] = [
    "wmproxy_streams_opened_total",
    "wmproxy_streams_active",
    "wmproxy_service_bytes_in_total",
    "wmproxy_service_bytes_out_total",
];

/// The `service` labels `client` has in each per-service family, sorted; one list per family.
async fn label_sets(server: &TestServer, client: &str) -> Result<Vec<Vec<String>>> {
    let scraped = scrape(server).await?;
    Ok(FAMILIES
        .iter()
        .map(|family| {
            let mut services: Vec<String> = scraped
                .samples
                .iter()
                .filter(|s| s.metric == *family && s.labels.get("client") == Some(client))
                .filter_map(|s| s.labels.get("service").map(str::to_owned))
                .collect();
            services.sort();
            services
        })
        .collect())
}

/// Connects to `port` (the server counts the connection when it accepts it).
async fn connect(port: u16) -> Result<TcpStream> {
    Ok(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?)
}

fn port(outcome: &RegisterOutcome) -> u16 {
    match outcome {
        RegisterOutcome::Ok { port } => *port,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_services_label_sets_go_and_a_client_has_a_bounded_number() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let mut tenant = Tenant::join(&server, "churn").await?;

    // A service used once, then replaced by another name: its label sets go with it.
    let outcomes = tenant.register(vec![tcp("first", 0)]).await?;
    let _user = connect(port(&outcomes[0])).await?;
    wmproxy_tests::eventually_async("the connection counted", async || {
        let opened = sample(&scrape(&server).await?, FAMILIES[0], &[("client", "churn"), ("service", "first")]);
        Ok(opened == Some(1.0))
    })
    .await?;
    tenant.register(vec![tcp("second", 0)]).await?;
    let sets = label_sets(&server, "churn").await?;
    ensure!(sets.iter().all(|s| s == &["second"]), "{sets:?}");

    // As many services as a registration may hold: the first MAX_LABELED_PER_CLIENT have label
    // sets of their own, the rest share "(other)".
    let names: Vec<String> = (0..MAX_SERVICES).map(|i| format!("s{i:03}")).collect();
    let outcomes = tenant.register(names.iter().map(|n| tcp(n, 0)).collect()).await?;
    ensure!(outcomes.iter().all(|o| port(o) != 0), "{outcomes:?}");
    let _user = connect(port(&outcomes[MAX_SERVICES - 1])).await?;
    let mut expected: Vec<String> = names[..MAX_LABELED_PER_CLIENT].to_vec();
    expected.insert(0, "(other)".into());
    wmproxy_tests::eventually_async("the other connection counted", async || {
        let other = sample(&scrape(&server).await?, FAMILIES[0], &[("client", "churn"), ("service", "(other)")]);
        Ok(other == Some(1.0))
    })
    .await?;
    let sets = label_sets(&server, "churn").await?;
    ensure!(sets.iter().all(|s| s == &expected), "{} label sets: {sets:?}", sets[0].len());

    // The session ends: nothing of it is left.
    drop(tenant);
    wmproxy_tests::eventually_async("the label sets gone", async || {
        Ok(label_sets(&server, "churn").await?.iter().all(Vec::is_empty))
    })
    .await?;
    Ok(())
}
