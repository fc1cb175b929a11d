//! Process signals → a cancellation token, for both binaries.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on Ctrl-C (SIGINT) or, on Unix, SIGTERM. Run it in a spawned task.
pub async fn on_signal(shutdown: CancellationToken) {
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
    shutdown.cancel();
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
