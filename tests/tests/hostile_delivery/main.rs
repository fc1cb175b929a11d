//! Nothing lost, nothing faked (issue 13, items 10 and 11).
//!
//! - `aborts`: a reset on one side reaches the other as a reset, as on a direct connection; a
//!   clean close stays a clean end of data; a connection cut when a drain grace is over ends as
//!   an abort.
//! - `drain`: a stop of either end in the middle of a transfer delivers every byte handed over
//!   before it.

mod aborts;
mod drain;
