//! [`InNetns`], a runtime inside one of a bed's namespaces, and the shortcuts tests start
//! beds with.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};

use super::{Mapping, Netbed, PUBLIC};

/// A tokio runtime whose thread lives in one of a bed's namespaces: every socket its tasks
/// open (a server's endpoint and ports, a client's, a backend's, a user's) belongs to that
/// namespace. Spawn work on it through [`InNetns::handle`]; dropping it stops the runtime.
#[derive(Debug)]
pub struct InNetns {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One of a bed's namespaces, opened; [`Namespace::enter`] moves the calling thread into it
/// (every socket or device the thread creates afterwards is born there).
#[derive(Debug)]
pub(super) struct Namespace(std::fs::File);

impl Namespace {
    /// Opens namespace `ns` (a name of [`Netbed::public`], …).
    pub(super) fn open(ns: &str) -> Result<Self> {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
        Ok(Self(file))
    }

    /// Moves the calling thread into this namespace.
    pub(super) fn enter(&self) -> Result<()> {
        nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")
    }
}

impl InNetns {
    /// A runtime in namespace `ns` (a name of [`Netbed::public`], [`Netbed::nat`],
    /// [`Netbed::home`]).
    pub fn enter(ns: &str) -> Result<Self> {
        let namespace = Namespace::open(ns)?;
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(format!("netns-{ns}")).spawn(move || {
            let entered = namespace
                .enter()
                .and_then(|()| Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?));
            match entered {
                Ok(runtime) => {
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
        let handle = handle.recv().context("the namespace thread ended")??;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn the namespace's work.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl InNetns {
    /// Starts `work` in this namespace at once (not when the result is first awaited: work
    /// such as a transfer goes on while the test does something else), and waits for it.
    pub fn run<T: Send + 'static, W: Future<Output = T> + Send + 'static>(
        &self,
        work: W,
    ) -> impl Future<Output = Result<T>> + use<T, W> {
        let task = self.handle.spawn(work);
        async move { Ok(task.await?) }
    }

    /// A user in this namespace sends `len` bytes (a pattern seeded `seed`) to the TCP echo at
    /// the public host's `port` and fails unless they come back unchanged.
    pub async fn echo_through(&self, port: u16, len: usize, seed: u64) -> Result<()> {
        let message = crate::backend::pattern(len, seed);
        let sent = message.clone();
        let back = self.run(async move { crate::backend::round_trip((PUBLIC, port).into(), &sent).await });
        anyhow::ensure!(back.await?? == message, "the echo through port {port} came back altered");
        Ok(())
    }

    /// `GET path` of the control API at `api`, which listens in this namespace: the body of a
    /// `200` answer.
    pub async fn get(&self, api: SocketAddr, path: &'static str) -> Result<String> {
        let asked = self.run(crate::control_call(api, Some(crate::CONTROL_TOKEN), "GET", path, ""));
        let (status, body) = asked.await??;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }
}

/// Set (to anything) where the bed must run: a test then fails, instead of skipping, when no
/// bed can be built. `.ci/run` sets it, so CI never passes without running these tests.
pub const REQUIRE: &str = "WMPROXY_REQUIRE_NETBED";

/// Whether a test should skip for want of a bed: `true` after printing `SKIPPED:` and why; an
/// error instead where [`REQUIRE`] is set.
pub fn skip() -> Result<bool> {
    let Some(why) = Netbed::unavailable() else { return Ok(false) };
    if std::env::var_os(REQUIRE).is_some() {
        bail!("{REQUIRE} is set, but {why}");
    }
    println!("SKIPPED: {why}");
    Ok(true)
}

/// A bed whose NAT maps as `mapping`, with runtimes on its public and home hosts; `None`,
/// after printing `SKIPPED:` and why, where no bed can be built. (Bind the three in this
/// order, so that the runtimes stop before the bed goes.)
pub fn start_or_skip(mapping: Mapping) -> Result<Option<(Netbed, InNetns, InNetns)>> {
    if skip()? {
        return Ok(None);
    }
    let bed = Netbed::start(mapping)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    Ok(Some((bed, public, home)))
}

/// A test server on the bed's public host (`public`, an [`InNetns`] of [`Netbed::public`]):
/// its tunnel endpoint and public ports on [`PUBLIC`].
pub async fn public_server(public: &InNetns) -> Result<crate::TestServer> {
    public_server_with(public, |_| {}).await
}

/// [`public_server`], its config adjusted by `adjust` (after the bed's addresses are set).
pub async fn public_server_with(
    public: &InNetns,
    adjust: impl FnOnce(&mut wmproxy_config::server::ServerFile) + Send + 'static,
) -> Result<crate::TestServer> {
    server_at(public, PUBLIC, adjust).await
}

/// A bed with one home (its NAT mapping as `mapping`) and `1 + extra` public hosts, with
/// runtimes on every public host and the home; `None`, after printing `SKIPPED:` and why, where
/// no bed can be built. (Bind them in this order, so that the runtimes stop before the bed goes.)
pub fn publics_or_skip(mapping: Mapping, extra: usize) -> Result<Option<(Netbed, Vec<InNetns>, InNetns)>> {
    if skip()? {
        return Ok(None);
    }
    let bed = Netbed::start_with_publics(mapping, extra)?;
    let publics = (0..=extra).map(|i| InNetns::enter(&bed.public_n(i))).collect::<Result<Vec<_>>>()?;
    let home = InNetns::enter(&bed.home())?;
    Ok(Some((bed, publics, home)))
}

/// A test server on public host `ip` (`public`, an [`InNetns`] of that host's namespace): its
/// tunnel endpoint and public ports on `ip`; its config adjusted by `adjust`.
pub async fn server_at(
    public: &InNetns,
    ip: std::net::Ipv4Addr,
    adjust: impl FnOnce(&mut wmproxy_config::server::ServerFile) + Send + 'static,
) -> Result<crate::TestServer> {
    public
        .run(crate::TestServer::start(move |f| {
            f.bind = (ip, 0).into();
            f.tcp_bind = Some(toml::Spanned::new(0..0, format!("{ip}:0")));
            f.public_bind = ip.into();
            adjust(f);
        }))
        .await?
}

/// A bed with two homes behind two NATs (mapping as `first` and `second`), with runtimes on
/// its public host and both homes: the start of tests of several clients and of direct
/// client-to-client connections. `None`, after printing `SKIPPED:` and why, where no bed can
/// be built. (Bind them in this order, so that the runtimes stop before the bed goes.)
pub fn two_homes_or_skip(first: Mapping, second: Mapping) -> Result<Option<(Netbed, InNetns, [InNetns; 2])>> {
    if skip()? {
        return Ok(None);
    }
    let bed = Netbed::start_two_homes(first, second)?;
    let public = InNetns::enter(&bed.public())?;
    let homes = [InNetns::enter(&bed.home())?, InNetns::enter(&bed.home2())?];
    Ok(Some((bed, public, homes)))
}
