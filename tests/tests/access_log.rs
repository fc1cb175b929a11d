//! The client's access log: one `wmproxy::access` event per finished connection to a service,
//! with the user's address, the backend, the bytes each way and the result; off for a service
//! with `access_log = false`. (Its own test binary: it installs a global subscriber.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{TestClient, TestServer, eventually, tcp_service};

type Events = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Keeps the fields of every access log event.
struct Capture(Events);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "wmproxy::access" {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(fields);
        }
    }
}

/// Sends `len` bytes through `port`, reads the echo, and returns the user's address.
async fn echo_through(port: u16, len: usize) -> Result<std::net::SocketAddr> {
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let me = user.local_addr()?;
    user.write_all(&pattern(len, 1)).await?;
    user.shutdown().await?;
    let mut back = Vec::new();
    user.read_to_end(&mut back).await?;
    ensure!(back.len() == len, "echo of {len} bytes came back as {}", back.len());
    Ok(me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finished_connection_is_logged_unless_its_service_opts_out() -> Result<()> {
    let events: Events = Arc::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture(events.clone())))?;
    let server = TestServer::start(|_| {}).await?;
    let echo = backend::echo().await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("logged", echo, 0));
    config.services.push(wmproxy_config::Service { access_log: false, ..tcp_service("quiet", echo, 0) });
    let mut client = TestClient::start(config).await?;
    let (logged, quiet) = (client.port_of("logged").await?, client.port_of("quiet").await?);

    echo_through(quiet, 5_000).await?;
    let first = echo_through(logged, 3_000).await?;
    let second = echo_through(logged, 7_000).await?;
    let count = || events.lock().unwrap_or_else(|p| p.into_inner()).len();
    eventually("two access log events", || count() >= 2).await?;

    let seen = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(seen.len() == 2 && seen.iter().all(|e| e["service"] == "logged"), "{seen:?}");
    for (user, len) in [(first, 3_000), (second, 7_000)] {
        let event = seen.iter().find(|e| e["user"] == user.to_string());
        let Some(event) = event else { anyhow::bail!("no event for {user}: {seen:?}") };
        ensure!(event["bytes_in"] == len.to_string() && event["bytes_out"] == len.to_string(), "{event:?}");
        ensure!(event["backend"] == echo.to_string() && event["result"] == "ok", "{event:?}");
        ensure!(event.contains_key("duration_ms"), "{event:?}");
    }
    Ok(())
}
