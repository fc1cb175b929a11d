//! The server's dashboard: the page's own script ([`PAGE`]; the page itself and the script both
//! ends share are [`wmproxy_ops::dashboard`]'s), and what only the page reads: recent events
//! ([`events`]) and the traffic history ([`history`]).

pub(crate) mod events;
pub(crate) mod history;

/// The server's page.
pub(crate) const PAGE: wmproxy_ops::dashboard::Page =
    wmproxy_ops::dashboard::Page { title: "wmproxy server", script: include_str!("page.js") };
