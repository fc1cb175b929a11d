//! Process signals → a cancellation token, for both binaries.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first Ctrl-C (SIGINT) or, on Unix, SIGTERM, which starts a
/// graceful stop (a drain). A second one during the drain exits the process at once (status
/// 130), as most daemons do. Run it in a spawned task.
pub async fn on_signal(shutdown: CancellationToken) {
    stop_signal().await;
    shutdown.cancel();
    stop_signal().await;
    tracing::warn!("second stop signal: exiting now, without waiting for the drain");
    std::process::exit(130);
}

/// Waits for one SIGINT or SIGTERM (on other systems, Ctrl-C).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs `reload` on each SIGHUP, for the life of the process (on other systems, never). Run it
/// in a spawned task.
pub async fn on_hangup<F: std::future::Future<Output = ()>>(mut reload: impl FnMut() -> F) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through the control API");
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            reload().await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = &mut reload;
        std::future::pending::<()>().await;
    }
}
