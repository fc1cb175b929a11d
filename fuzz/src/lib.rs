//! What the fuzz targets share: one runtime per process for the targets that drive async
//! parsers. Its clock is paused, so a parser's own timeouts pass at once instead of stalling
//! a run.

use std::sync::OnceLock;

/// A current-thread runtime with a paused clock, made once.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("a runtime")
    })
}
