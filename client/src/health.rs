//! Active health checks of grouped services, run here where the backends live; each result is
//! reported to the server on the control stream (`ControlRequest::Health`), which applies
//! `rise` and `fall`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};
use wmproxy_config::{CheckType, HealthCheck, Service};
use wmproxy_wire::{ControlRequest, Name};

/// The last result of each running check, for the control API's status and the dashboard.
/// One entry per grouped service with a check; [`Checks::sync`] removes those it stops, and
/// dropping [`Checks`] (its tunnel ended) removes all of its own.
#[derive(Debug, Default)]
pub struct CheckResults(Mutex<HashMap<Name, LastCheck>>);

/// A check's last result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastCheck {
    /// The service checked.
    pub service: String,
    /// What was checked.
    pub addr: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// How long it took, milliseconds.
    pub latency_ms: f64,
    /// Checks run so far.
    pub checks: u64,
}

impl CheckResults {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Name, LastCheck>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `result` as `service`'s last, unless its check was stopped (`stopped`): the
    /// check's end removes its entry, and the test is made under the same lock, so a result
    /// that arrives after the end is not kept.
    fn record(
        &self,
        (service, addr): (&Name, &str),
        result: &Result<(), String>,
        latency: std::time::Duration,
        stopped: &CancellationToken,
    ) {
        let mut results = self.lock();
        if stopped.is_cancelled() {
            return;
        }
        let checks = results.get(service).map_or(0, |last| last.checks) + 1;
        let last = LastCheck {
            service: service.to_string(),
            addr: addr.to_owned(),
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
            latency_ms: latency.as_secs_f64() * 1_000.0,
            checks,
        };
        results.insert(service.clone(), last);
    }

    /// Every check's last result, by service name.
    pub fn list(&self) -> Vec<LastCheck> {
        let mut list: Vec<LastCheck> = self.lock().values().cloned().collect();
        list.sort_by(|a, b| a.service.cmp(&b.service));
        list
    }
}

/// Runs `check` against `addr` every interval until `stop`, sending each result on `reports`
/// and keeping the last in `results`. A full report queue drops the result (the next one
/// follows an interval later).
pub async fn run(
    (service, addr): (Name, String),
    check: HealthCheck,
    (reports, results): (mpsc::Sender<ControlRequest>, Arc<CheckResults>),
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(check.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(check.timeout(), probe(&addr, &check)).await.unwrap_or(Err("timed out".into()));
        let latency = started.elapsed();
        if let Err(why) = &result {
            debug!(%service, %why, "health check failed");
        }
        results.record((&service, &addr), &result, latency, &stop);
        let report = ControlRequest::Health {
            service: service.clone(),
            ok: result.is_ok(),
            latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
        };
        if reports.try_send(report).is_err() && reports.is_closed() {
            break;
        }
    }
}

/// One check: `Ok` when the backend passes.
pub async fn probe(addr: &str, check: &HealthCheck) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    match check.kind {
        CheckType::Tcp => Ok(()),
        CheckType::Http => {
            let status = http_get(tcp, check.host.as_deref().unwrap_or(addr), &check.path).await?;
            if check.accepts(status) { Ok(()) } else { Err(format!("status {status}")) }
        }
    }
}

/// `GET path` with `Host: host` over `tcp`; the response status.
async fn http_get(tcp: TcpStream, host: &str, path: &str) -> Result<u16, String> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("http: {e}"))?;
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "wmproxy-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    // The connection must be driven for the response to arrive; it may also finish first (the
    // server closes after answering), and then the response is already there or never comes.
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        _ = &mut conn => response.await,
    };
    response.map(|r| r.status().as_u16()).map_err(|e| format!("http: {e}"))
}

/// Health reports that may wait for the control stream; beyond it results are dropped.
pub const REPORT_QUEUE: usize = 64;

/// Writes queued control messages (health reports) to the control stream until the queue
/// closes or the stream fails.
pub async fn write_reports(mut send: wmproxy_tunnel::SendStream, mut reports: mpsc::Receiver<ControlRequest>) {
    while let Some(report) = reports.recv().await {
        if let Err(e) = wmproxy_tunnel::stream::write_frame(&mut send, &report).await {
            debug!(error = %e, "control stream closed; health reports stop");
            break;
        }
    }
    // Ends our side of the control stream: the server takes it as the client leaving.
    let _ = send.finish();
}

/// The health checks a tunnel runs, one per grouped service that has one; [`Checks::sync`]
/// follows the services after a reload. Dropping it stops them all.
#[derive(Debug)]
pub struct Checks {
    running: HashMap<Name, (String, HealthCheck, CancellationToken)>,
    reports: mpsc::Sender<ControlRequest>,
    results: Arc<CheckResults>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Checks {
    /// No checks yet; they report on `reports`, keep their last results in `results` and stop
    /// with `stop`.
    pub fn new(
        (reports, results): (mpsc::Sender<ControlRequest>, Arc<CheckResults>),
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self { running: HashMap::new(), reports, results, tracker, stop }
    }

    /// Stops the checks of services that are gone or whose check (or address) changed, and
    /// starts the missing ones.
    pub fn sync(&mut self, services: &[Service]) {
        let wanted: HashMap<&Name, (String, &HealthCheck)> = services
            .iter()
            .filter_map(|s| {
                let check = s.exposure.group()?.health_check.as_ref()?;
                Some((&s.name, (check.addr.clone().unwrap_or_else(|| s.local_addr.to_string()), check)))
            })
            .collect();
        self.running.retain(|name, (addr, check, stop)| {
            let keep = wanted.get(name).is_some_and(|(a, c)| a == addr && *c == check);
            if !keep {
                stop.cancel();
            }
            keep
        });
        self.results.lock().retain(|name, _| wanted.contains_key(name));
        for (name, (addr, check)) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let stop = self.stop.child_token();
            let to = (self.reports.clone(), self.results.clone());
            let task = run((name.clone(), addr.clone()), check.clone(), to, stop.clone());
            self.tracker.spawn(task.instrument(info_span!("health_check", service = %name)));
            self.running.insert(name.clone(), (addr, check.clone(), stop));
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop.cancel();
        self.results.lock().retain(|name, _| !self.running.contains_key(name));
    }
}
