//! `[limits] congestion`, either end: the congestion controller of what that end sends
//! through its tunnels (quinn offers these three). The choice and its figures are in
//! `bench/README.md` (the `--netbed` grid: loss and delay).

use serde::{Deserialize, Serialize};

/// A QUIC congestion controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Congestion {
    /// CUBIC (RFC 9438, quinn's): backs off on every loss, the common choice of TCP stacks.
    #[serde(rename = "cubic")]
    Cubic,
    /// NewReno (RFC 9002's example, quinn's): backs off on every loss, regrows slowly.
    #[serde(rename = "newreno")]
    NewReno,
    /// wmproxy's BBR-style controller: a window of twice the measured bandwidth-delay
    /// product; random loss does not slow it. The default: at 1 % loss it carried 4–19 times
    /// what CUBIC carried on the bench's grid (`bench/README.md`), and kept a smaller queue
    /// than quinn's BBR.
    #[default]
    #[serde(rename = "bbr")]
    Bbr,
    /// quinn's own BBR, experimental in quinn: kept for comparison.
    #[serde(rename = "quinn-bbr")]
    QuinnBbr,
}
