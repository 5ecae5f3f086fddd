//! A worker's I/O timeouts: one slot per connection and one sweeper task, instead of a
//! runtime timer per operation.
//!
//! Every socket operation of a connection is bounded by a timeout (SPEC §5: the gap between
//! two successive operations), so a 4 KiB range costs four or five of them. A tokio timer
//! per operation (measured when tailgate ran on tokio) reads the clock, enters the timer
//! wheel on the operation's first poll and leaves it when the operation ends — about 130 ns
//! each, although almost none ever fires.
//! Here an operation writes its deadline into its connection's slot (a coarse clock read
//! and a store, as nginx stamps its timers with its cached time) and the worker's sweeper
//! sleeps until the earliest deadline it knows of, wakes the connections whose deadline
//! has passed, and sleeps again: in steady traffic it wakes about once per timeout period.
//! A sweep reads every slot, so sweeps are at least [`RESOLUTION`] apart: thousands of idle
//! connections expiring one by one cost a sweep per 20 ms, not one each.
//!
//! Deadlines are nanoseconds of `CLOCK_MONOTONIC`. An operation reads the coarse variant
//! of that clock (a few ns; up to one kernel tick behind), so a timeout fires at most one
//! tick (≤ 4 ms) early and at most [`RESOLUTION`] late; the sweeper compares against the
//! precise clock.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};
use slab::Slab;

/// A deadline that is never reached: the slot's connection has no operation pending.
const NEVER: u64 = u64::MAX;

/// The least time between two sweeps (ns): a timeout fires at most this late.
const RESOLUTION: u64 = 20_000_000;

/// The operation did not complete within its timeout.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// One worker's timeout slots and the state of its sweeper.
pub struct Timers {
    slots: RefCell<Slab<Slot>>,
    /// No pending deadline is earlier than this (the sweeper's next wake-up).
    next: Cell<u64>,
    /// The sweeper's waker, to wake it when a deadline earlier than `next` is set.
    sweeper: RefCell<Option<Waker>>,
    #[cfg(test)]
    sweeps: Cell<u64>,
}

struct Slot {
    /// The pending operation's deadline, or [`NEVER`].
    deadline: u64,
    /// Set by the sweeper once `deadline` has passed; cleared with the next deadline.
    expired: bool,
    /// The connection task to wake when the deadline passes.
    waker: Option<Waker>,
}

/// A connection's timeout slot; freed when dropped.
pub struct Timer<'a> {
    timers: &'a Timers,
    key: usize,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers::new()
    }
}

impl Timers {
    pub fn new() -> Timers {
        Timers {
            slots: RefCell::new(Slab::new()),
            next: Cell::new(NEVER),
            sweeper: RefCell::new(None),
            #[cfg(test)]
            sweeps: Cell::new(0),
        }
    }

    /// A slot for one connection.
    pub fn timer(&self) -> Timer<'_> {
        let key = self.slots.borrow_mut().insert(Slot {
            deadline: NEVER,
            expired: false,
            waker: None,
        });
        Timer { timers: self, key }
    }

    /// Runs forever on the worker: wakes every connection whose deadline has passed. The
    /// worker's timeouts fire only while this runs.
    pub async fn sweep(&self) {
        let mut sleep = crate::rt::time::sleep(Duration::ZERO);
        let mut armed = NEVER;
        let mut last = 0u64;
        poll_fn(|cx| loop {
            {
                let mut w = self.sweeper.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            let now = precise_now();
            if now >= self.next.get() && now >= last.saturating_add(RESOLUTION) {
                self.next.set(self.expire(now));
                last = now;
                #[cfg(test)]
                self.sweeps.set(self.sweeps.get() + 1);
            }
            let next = self.next.get();
            if next == NEVER {
                armed = NEVER;
                return Poll::Pending;
            }
            // A sweep reads every slot: at most one per RESOLUTION, however many distinct
            // deadlines there are (thousands of idle connections expiring one by one).
            let target = next.max(last.saturating_add(RESOLUTION));
            if target != armed {
                armed = target;
                let wait = Duration::from_nanos(target.saturating_sub(now));
                sleep.reset(Instant::now().checked_add(wait).unwrap_or_else(far));
            }
            if Pin::new(&mut sleep).poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The sleep ended: sweep again (the loop reads the clock anew).
            armed = NEVER;
        })
        .await
    }

    /// Marks and wakes the slots whose deadline is at or before `now`; returns the earliest
    /// deadline still pending.
    fn expire(&self, now: u64) -> u64 {
        let mut earliest = NEVER;
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            if slot.expired || slot.deadline == NEVER {
                continue;
            }
            if slot.deadline <= now {
                slot.expired = true;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            } else {
                earliest = earliest.min(slot.deadline);
            }
        }
        earliest
    }

    /// Sets slot `key`'s deadline; wakes the sweeper if it would sleep past it.
    fn arm(&self, key: usize, deadline: u64) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            slot.deadline = deadline;
            slot.expired = false;
        }
        if deadline < self.next.get() {
            self.next.set(deadline);
            if let Some(w) = self.sweeper.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    fn disarm(&self, key: usize) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            slot.deadline = NEVER;
            slot.expired = false;
        }
    }

    /// Whether slot `key` has expired; if not, remembers the waker to wake when it does.
    fn expired(&self, key: usize, waker: &Waker) -> bool {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return false;
        };
        if slot.expired {
            return true;
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        false
    }
}

impl Timer<'_> {
    /// Runs `op` for at most `timeout`. On [`Elapsed`] the operation has been dropped;
    /// an io_uring operation may still complete later, so its socket must be shut down.
    /// A plain future rather than an `async fn`, so that `op` is built in place instead of
    /// being moved into a second future (a memcpy of the operation's state).
    pub fn within<F: Future>(&self, timeout: Duration, op: F) -> Within<'_, F> {
        Within {
            op,
            timers: self.timers,
            key: self.key,
            timeout,
            armed: false,
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.timers.slots.borrow_mut().try_remove(self.key);
    }
}

pin_project_lite::pin_project! {
    /// [`Timer::within`]: the operation and its connection's slot.
    pub struct Within<'a, F> {
        #[pin]
        op: F,
        timers: &'a Timers,
        key: usize,
        timeout: Duration,
        // Whether this operation's deadline is in the slot.
        armed: bool,
    }

    impl<F> PinnedDrop for Within<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.armed {
                this.timers.disarm(*this.key);
            }
        }
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.op.poll(cx) {
            if *this.armed {
                *this.armed = false;
                this.timers.disarm(*this.key);
            }
            return Poll::Ready(Ok(v));
        }
        // The deadline is set when the operation first has to wait: one that completes at
        // once never reads the clock.
        if !*this.armed {
            *this.armed = true;
            let nanos = u64::try_from(this.timeout.as_nanos()).unwrap_or(NEVER);
            this.timers
                .arm(*this.key, coarse_now().saturating_add(nanos));
        }
        if this.timers.expired(*this.key, cx.waker()) {
            *this.armed = false;
            this.timers.disarm(*this.key);
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn nanos(clock: ClockId) -> u64 {
    let t = clock_gettime(clock);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nsec = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn coarse_now() -> u64 {
    nanos(ClockId::MonotonicCoarse)
}

/// A moment on the kernel's coarse monotonic clock, for ages that need no precision (cache
/// entries, idle pooled connections): reading it costs a few ns, `Instant::now()` about 30.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    pub fn now() -> Tick {
        Tick(coarse_now())
    }

    pub fn saturating_duration_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Tick {
    type Output = Tick;

    fn add(self, d: Duration) -> Tick {
        Tick(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(NEVER)),
        )
    }
}

/// The wall clock from the kernel's coarse clock (up to one tick behind): for what needs
/// only the second, as `Date` and a signature's `x-amz-date`.
pub fn wall_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos(ClockId::RealtimeCoarse))
}

fn precise_now() -> u64 {
    nanos(ClockId::Monotonic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Runs `body` with `timers`' sweeper as a task of its own, as on a worker (so the
    /// sweeper learns of an earlier deadline only through its waker), failing after 5 s.
    fn run<T>(timers: &Rc<Timers>, body: impl Future<Output = T>) -> T {
        let sweeper = Rc::clone(timers);
        crate::rt::start(async move {
            crate::rt::spawn(async move { sweeper.sweep().await });
            crate::rt::time::timeout(Duration::from_secs(5), body).await
        })
        .unwrap()
        .expect("the test body hung")
    }

    fn sleep(ms: u64) -> crate::rt::time::Sleep {
        crate::rt::time::sleep(Duration::from_millis(ms))
    }

    #[test]
    fn an_operation_that_completes_in_time_is_not_cut() {
        let timers = Rc::new(Timers::new());
        let got = run(&timers, async {
            let t = timers.timer();
            t.within(Duration::from_millis(300), sleep(20)).await
        });
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn a_stalled_operation_is_cut_at_its_timeout() {
        let timers = Rc::new(Timers::new());
        let (got, took) = run(&timers, async {
            let t = timers.timer();
            let start = Instant::now();
            let got = t
                .within(Duration::from_millis(60), std::future::pending::<()>())
                .await;
            (got, start.elapsed())
        });
        assert_eq!(got, Err(Elapsed));
        // At most one coarse clock tick early, and not long after.
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[test]
    fn the_timeout_bounds_each_operation_not_their_sum() {
        let timers = Rc::new(Timers::new());
        let got = run(&timers, async {
            let t = timers.timer();
            for _ in 0..5 {
                t.within(Duration::from_millis(150), sleep(50)).await?;
            }
            Ok::<_, Elapsed>(())
        });
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn a_short_deadline_after_a_long_one_fires_on_time() {
        let timers = Rc::new(Timers::new());
        let (long, short, took) = run(&timers, async {
            let (a, b) = (timers.timer(), timers.timer());
            let start = Instant::now();
            let long = a.within(Duration::from_secs(30), std::future::pending::<()>());
            let short = async {
                // The sweeper is already asleep until the long deadline.
                sleep(20).await;
                let got = b
                    .within(Duration::from_millis(50), std::future::pending::<()>())
                    .await;
                (got, start.elapsed())
            };
            tokio::select! {
                v = long => (Some(v), Err(Elapsed), Duration::ZERO),
                (v, took) = short => (None, v, took),
            }
        });
        assert_eq!(long, None);
        assert_eq!(short, Err(Elapsed));
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[test]
    fn a_slot_is_usable_again_after_a_timeout_and_after_a_dropped_operation() {
        let timers = Rc::new(Timers::new());
        let got = run(&timers, async {
            let t = timers.timer();
            let first = t
                .within(Duration::from_millis(30), std::future::pending::<()>())
                .await;
            // Dropped before its deadline: it must not cut the next operation.
            tokio::select! {
                _ = t.within(Duration::from_millis(40), std::future::pending::<()>()) => {}
                _ = sleep(10) => {}
            }
            let second = t.within(Duration::from_millis(300), sleep(100)).await;
            (first, second)
        });
        assert_eq!(got, (Err(Elapsed), Ok(())));
    }

    #[test]
    fn many_distinct_deadlines_are_swept_in_batches() {
        let timers = Rc::new(Timers::new());
        let expired = run(&timers, async {
            let slots: Vec<_> = (0..200).map(|_| timers.timer()).collect();
            // 200 operations whose deadlines are 0.5 ms apart, over 100 ms, all waiting at
            // once (as 200 connections would).
            let mut ops: Vec<_> = slots
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Box::pin(t.within(
                        Duration::from_micros(20_000 + 500 * i as u64),
                        std::future::pending::<()>(),
                    ))
                })
                .collect();
            let mut results: Vec<Option<Result<(), Elapsed>>> = ops.iter().map(|_| None).collect();
            poll_fn(|cx| {
                for (op, done) in ops.iter_mut().zip(results.iter_mut()) {
                    if done.is_none() {
                        if let Poll::Ready(v) = op.as_mut().poll(cx) {
                            *done = Some(v);
                        }
                    }
                }
                if results.iter().all(Option::is_some) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            results.iter().filter(|r| **r == Some(Err(Elapsed))).count()
        });
        assert_eq!(expired, 200);
        // One sweep per RESOLUTION (20 ms) over the ~100 ms they span, not one per deadline.
        assert!(timers.sweeps.get() <= 12, "{} sweeps", timers.sweeps.get());
    }

    #[test]
    fn ticks_measure_ages_and_saturate() {
        let t0 = Tick::now();
        let later = t0 + Duration::from_secs(3);
        assert_eq!(later.saturating_duration_since(t0), Duration::from_secs(3));
        assert_eq!(t0.saturating_duration_since(later), Duration::ZERO);
        assert!(Tick::now() >= t0);
        assert_eq!(t0 + Duration::MAX, Tick(NEVER));
        // The coarse clock is the monotonic one, at most a tick behind the precise reading.
        let (coarse, precise) = (coarse_now(), precise_now());
        assert!(coarse <= precise && precise - coarse < 100_000_000);
    }

    #[test]
    fn slots_are_freed_with_their_connection() {
        let timers = Timers::new();
        let a = timers.timer();
        let b = timers.timer();
        drop(a);
        let c = timers.timer();
        assert_eq!(timers.slots.borrow().len(), 2);
        drop((b, c));
        assert!(timers.slots.borrow().is_empty());
    }
}
