//! The process plumbing both wmproxy binaries share: nothing here is on the network path.
//!
//! # Layout
//! - [`cli`]: what both `main`s share: logging, the `check` report, the control subcommands,
//!   running the async main with its error as the exit status.
//! - [`control`]: the loopback control API (bearer token, JSON) and the CLI's calls to it.
//!   Each end implements [`control::ControlApi`] for its own endpoints, which it lists in
//!   [`routes`]' terms.
//! - [`dashboard`]: the web page each control port serves at `/` (embedded files).
//! - [`metrics`]: Prometheus glue both ends expose (the UDP counters).
//! - [`shutdown`]: process signals to a cancellation token (SIGINT, SIGTERM), and SIGHUP to a
//!   reload.
//!
//! Data flow: a signal or a control request comes in here and leaves as a call on the end's
//! own handle (cancel its token, reload it, read its status).
#![forbid(unsafe_code)]

pub mod cli;
pub mod control;
pub mod dashboard;
pub mod metrics;
pub mod routes;
pub mod shutdown;
