//! CPU time read from `/proc`, for figures of CPU-seconds per GiB moved.
//!
//! On a machine whose every run is CPU-bound, CPU per GiB is the figure that says where a run's
//! time goes: a run that is CPU-bound on `c` cores moves at most `c / cost` GiB per second.

use anyhow::{Context, Result};

/// CPU seconds (user + system) the calling thread has used.
pub fn thread() -> Result<f64> {
    ticks_of("/proc/thread-self/stat")
}

/// CPU seconds (user + system) this process has used, all its threads.
pub fn process() -> Result<f64> {
    ticks_of("/proc/self/stat")
}

/// utime + stime of a `stat` file, in seconds.
fn ticks_of(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').context("the stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i - 3).context("a stat field")?.parse::<f64>()?) };
    let hz = 100.0; // USER_HZ on Linux
    Ok((ticks(14)? + ticks(15)?) / hz)
}
