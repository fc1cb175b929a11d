//! Per-user limits (issue 13, items 7 and 8): one user cannot use up what the others need.
//!
//! - `caps`: connections per user over every public listener, and the vhost's request rate.
//! - `bandwidth`: a service's bandwidth, held by both ends.

mod bandwidth;
mod caps;
