//! A request body with a deadline between its pieces (nginx's `client_body_timeout`): a user
//! who sends a request head and then trickles or stalls its body would otherwise hold the
//! service's stream (and its permit) for as long as it likes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no request body data within the body timeout")]
pub(crate) struct BodyTimedOut;

/// `inner`, failing with [`BodyTimedOut`] when no piece of it arrives within `timeout` of the
/// last (or of the start); `fired` is set then. The timer is made only when the body first has
/// to wait (a request without a body never needs one), and a piece that arrives only moves the
/// deadline: the timer is reset when it goes off early.
pub(crate) struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    fired: Arc<AtomicBool>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration, fired: Arc<AtomicBool>) -> Self {
        Self { inner, timeout, deadline: Instant::now() + timeout, sleep: None, fired }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = Instant::now() + this.timeout;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= this.deadline {
                this.fired.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
            }
            // Pieces came since the timer was set: wait for the moved deadline.
            sleep.as_mut().reset(this.deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
