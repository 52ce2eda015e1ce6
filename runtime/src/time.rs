//! Timers on the current worker's event loop.
//!
//! Sleeps and intervals are compio's. The deadlines are ours: compio's `timeout` is an
//! `async fn` that moves the future it guards into a `select!`, so its state holds the
//! future twice (the argument and the fused copy), and a caller that writes `let f = …;
//! timeout(d, f).await` holds it a third time. A request's future nests three deadlines
//! (route, per try, connect), and the waypoint measured 20 KB per request, copied into its
//! box on every request. [`Timeout`] holds the future once, in place, next to the sleep.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use compio::time::{Interval, interval, sleep, sleep_until};

/// The deadline passed before the future finished; the future has been dropped with the
/// [`Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// A future under an optional deadline: `Ok` with its output if it finishes first,
    /// `Err(Elapsed)` once the deadline passes. Without a deadline it is the future itself,
    /// plus one branch per poll.
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F, S> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<S>,
    }
}

impl<F: Future, S: Future<Output = ()>> Future for Timeout<F, S> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The future first: an answer that is ready wins over a deadline that is too.
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    }
}

/// `future`, given at most `duration` from its first poll.
pub fn timeout<F: IntoFuture>(
    duration: Duration,
    future: F,
) -> Timeout<F::IntoFuture, impl Future<Output = ()>> {
    timeout_if(Some(duration), future)
}

/// `future`, given until `deadline`.
pub fn timeout_at<F: IntoFuture>(
    deadline: Instant,
    future: F,
) -> Timeout<F::IntoFuture, impl Future<Output = ()>> {
    Timeout {
        future: future.into_future(),
        sleep: Some(sleep_until(deadline)),
    }
}

/// `future` under `duration` when there is one (a route's optional timeout), else never
/// `Elapsed`. One type for both, so a caller needs no branch and no second copy.
pub fn timeout_if<F: IntoFuture>(
    duration: Option<Duration>,
    future: F,
) -> Timeout<F::IntoFuture, impl Future<Output = ()>> {
    Timeout {
        future: future.into_future(),
        sleep: duration.map(sleep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DriverChoice;

    #[test]
    fn the_future_or_the_deadline() {
        crate::block_on(DriverChoice::Auto, async {
            let quick = timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(quick, Ok(7));
            let slow = timeout(Duration::from_millis(10), sleep(Duration::from_secs(5))).await;
            assert_eq!(slow, Err(Elapsed));
            let never = timeout_if(None, sleep(Duration::from_millis(20))).await;
            assert_eq!(never, Ok(()));
            let at = timeout_at(Instant::now(), sleep(Duration::from_secs(5))).await;
            assert_eq!(at, Err(Elapsed));
        })
        .unwrap();
    }

    #[test]
    fn holds_the_future_once() {
        let big = async {
            let buf = [0u8; 4096];
            std::future::ready(()).await;
            buf.len()
        };
        let guarded = timeout(Duration::from_secs(1), big);
        // The sleep is small; the 4 KiB future is not copied.
        assert!(std::mem::size_of_val(&guarded) < 4096 + 512);
    }
}
