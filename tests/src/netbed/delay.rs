//! The delay line: this kernel has no `netem`, so delay is made in userspace. Two TAP devices
//! in the bed's wire namespace, one on each half of its switch; each frame read from one is
//! written to the other once its delay has passed. Each direction is a reader thread (TAP →
//! queue, stamped on arrival) and a writer thread (queue → the other TAP, at stamp + delay),
//! so the line keeps order and never holds a frame longer than asked.
//!
//! It adds no loss of its own: when its queue is full the reader waits rather than drops, and
//! the TAPs get a long kernel queue; [`Counts`] shows what it carried and lost, and
//! `tests/tests/netbed.rs` checks that it lost nothing and delayed by what it was told. What it
//! costs (latency and throughput at zero delay) is printed by `wmproxy-bench -- --netbed`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Frames queued per direction: 16,384 full-size frames (24 MiB) hold 1 Gbit/s for 190 ms of
/// one-way delay; beyond it the reader waits and the TAP's own queue fills.
const QUEUE_FRAMES: usize = 16 * 1024;

/// How often idle threads look at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Frames the line has carried, both ways, and frames it failed to deliver (writes the kernel
/// refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames written to the far side.
    pub carried: u64,
    /// Frames the far side's write refused.
    pub lost: u64,
}

/// A running delay line; dropping it stops its threads and closes its TAPs (which removes
/// them).
#[derive(Debug)]
pub struct DelayLine {
    one_way: Arc<AtomicU64>,
    carried: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLine {
    /// Creates TAPs named `taps` in namespace `ns` (down; the caller wires and raises them)
    /// and starts carrying frames between them, `one_way` late in each direction.
    pub fn start(ns: &str, taps: [&str; 2], one_way: Duration) -> Result<Self> {
        let [a, b] = create_taps(ns, taps)?;
        let mut line = Self {
            one_way: Arc::new(AtomicU64::new(micros(one_way))),
            carried: Arc::default(),
            lost: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let (a_reader, a_writer) = a.split();
        let (b_reader, b_writer) = b.split();
        for (from, mut to, name) in [(a_reader, b_writer, taps[0]), (b_reader, a_writer, taps[1])] {
            let (queue, queued) = std::sync::mpsc::sync_channel(QUEUE_FRAMES);
            let stop = Arc::clone(&line.stop);
            line.threads.push(spawn(format!("delay-{name}-in"), move || read(&from, &queue, &stop))?);
            let (one_way, carried, lost) =
                (Arc::clone(&line.one_way), Arc::clone(&line.carried), Arc::clone(&line.lost));
            let stop = Arc::clone(&line.stop);
            line.threads.push(spawn(format!("delay-{name}-out"), move || {
                write(&queued, &mut to, &one_way, &carried, &lost, &stop)
            })?);
        }
        Ok(line)
    }

    /// Sets the delay of each direction (frames already queued keep their arrival stamp and
    /// leave at stamp + the new delay).
    pub fn set_one_way(&self, one_way: Duration) {
        self.one_way.store(micros(one_way), Ordering::Relaxed);
    }

    /// What the line has carried and lost so far.
    pub fn counts(&self) -> Counts {
        Counts { carried: self.carried.load(Ordering::Relaxed), lost: self.lost.load(Ordering::Relaxed) }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn spawn(name: String, work: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(work).context("starting a delay line thread")
}

/// Creates the TAPs from a thread inside `ns` (a TAP is born in its creator's namespace); the
/// devices work from any thread afterwards.
fn create_taps(ns: &str, names: [&str; 2]) -> Result<[tun::Device; 2]> {
    let namespace = super::runtime::Namespace::open(ns)?;
    let names = names.map(str::to_owned);
    let creating = std::thread::spawn(move || -> Result<[tun::Device; 2]> {
        namespace.enter()?;
        let tap = |name: &str| -> Result<tun::Device> {
            let mut config = tun::Configuration::default();
            config.tun_name(name).layer(tun::Layer::L2);
            tun::create(&config).with_context(|| format!("creating TAP {name}"))
        };
        Ok([tap(&names[0])?, tap(&names[1])?])
    });
    creating.join().map_err(|_| anyhow::anyhow!("the TAP-creating thread panicked"))?
}

/// Reads frames from a TAP into the queue, stamped with their arrival, until stopped.
fn read(from: &tun::Reader, queue: &SyncSender<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match from.recv_timeout(&mut buf, TICK) {
            Ok(n) => {
                // A full queue makes this wait (no loss); a gone writer ends the line.
                if queue.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// Writes queued frames to the far TAP, each at its arrival stamp plus the delay.
fn write(
    queued: &Receiver<(Instant, Vec<u8>)>,
    to: &mut tun::Writer,
    one_way: &AtomicU64,
    carried: &AtomicU64,
    lost: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let (arrived, frame) = match queued.recv_timeout(TICK) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let due = arrived + Duration::from_micros(one_way.load(Ordering::Relaxed));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let counter = if to.write(&frame).is_ok() { carried } else { lost };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
