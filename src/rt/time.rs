//! Sleeps and timeouts: deadlines in an ordered map on this thread. The runtime's ring wait
//! ends at the earliest, and each turn wakes the sleeps whose deadline has passed.
//!
//! Few timers live here: the worker's timeout sweeper (`crate::timer`), its once-a-second
//! tick and the odd back-off. Per-operation timeouts go through `crate::timer`, which costs
//! no map entry.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    static TIMERS: RefCell<BTreeMap<(Instant, u64), Waker>> = const { RefCell::new(BTreeMap::new()) };
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

/// The earliest deadline a sleep waits for.
pub(super) fn next() -> Option<Instant> {
    TIMERS.with(|t| t.borrow().keys().next().map(|(at, _)| *at))
}

/// Wakes the sleeps whose deadline has passed.
pub(super) fn fire() {
    let woken: Vec<Waker> = TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut woken = Vec::new();
        while let Some(entry) = t.first_entry() {
            if entry.key().0 > now {
                break;
            }
            woken.push(entry.remove());
        }
        woken
    });
    woken.into_iter().for_each(Waker::wake);
}

/// Forgets every sleep (the runtime is ending).
pub(super) fn clear() {
    TIMERS.with(|t| t.borrow_mut().clear());
}

/// A deadline far enough away to count as never.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

/// Completes `d` from now.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now().checked_add(d).unwrap_or_else(far))
}

/// A future that completes at its deadline; it holds a place in the map only while polled
/// and pending.
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Sleep {
    /// Moves the deadline; the sleep waits anew from its next poll.
    pub fn reset(&mut self, deadline: Instant) {
        self.forget();
        self.deadline = deadline;
    }

    fn forget(&mut self) {
        if let Some(key) = self.key.take() {
            TIMERS.with(|t| t.borrow_mut().remove(&key));
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.forget();
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let seq = SEQ.with(|s| s.replace(s.get().wrapping_add(1)));
                let key = (self.deadline, seq);
                self.key = Some(key);
                key
            }
        };
        TIMERS.with(|t| {
            let mut t = t.borrow_mut();
            match t.get_mut(&key) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => {
                    t.insert(key, cx.waker().clone());
                }
            }
        });
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.forget();
    }
}

/// `f` did not complete within its time.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `f` for at most `d`; on [`Elapsed`] it has been dropped.
pub async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    let mut f = std::pin::pin!(f);
    let mut sleep = sleep(d);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::{spawn, start};
    use std::rc::Rc;

    #[test]
    fn sleeps_end_in_deadline_order_and_not_early() {
        let order = start(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let begin = Instant::now();
            for ms in [30u64, 10, 20] {
                let order = Rc::clone(&order);
                spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    assert!(begin.elapsed() >= Duration::from_millis(ms));
                    order.borrow_mut().push(ms);
                });
            }
            sleep(Duration::from_millis(60)).await;
            let v = order.borrow().clone();
            v
        })
        .unwrap();
        assert_eq!(order, vec![10, 20, 30]);
    }

    #[test]
    fn a_timeout_cuts_a_slow_future_and_passes_a_quick_one() {
        let (slow, quick) = start(async {
            let slow = timeout(Duration::from_millis(10), std::future::pending::<()>()).await;
            let quick = timeout(Duration::from_secs(5), async { 3 }).await;
            (slow, quick)
        })
        .unwrap();
        assert_eq!(slow, Err(Elapsed));
        assert_eq!(quick, Ok(3));
    }

    #[test]
    fn a_reset_or_dropped_sleep_leaves_no_deadline_behind() {
        let left = start(async {
            let mut s = sleep(Duration::from_secs(60));
            assert!(futures_poll_once(&mut s).is_pending());
            s.reset(Instant::now() + Duration::from_millis(5));
            (&mut s).await;
            let mut t = sleep(Duration::from_secs(60));
            assert!(futures_poll_once(&mut t).is_pending());
            drop(t);
            next()
        })
        .unwrap();
        assert_eq!(left, None);
    }

    fn futures_poll_once(s: &mut Sleep) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(s).poll(&mut cx)
    }

    #[test]
    fn a_sleep_longer_than_the_clock_can_say_never_ends() {
        let s = sleep(Duration::MAX);
        assert!(s.deadline > Instant::now() + Duration::from_secs(86_400));
    }
}
