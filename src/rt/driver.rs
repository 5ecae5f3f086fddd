//! The ring and the operations in flight on it.
//!
//! An operation's slot says where it stands: its task waits for it, the completion has
//! come, or its future was dropped first — then the slot keeps the buffers and descriptors
//! the kernel was lent until the completion (or the cancellation asked for at the drop)
//! arrives, as tokio-uring and monoio do.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

/// Submission queue entries; the completion queue has twice as many, and the kernel keeps
/// completions that overflow it until they are reaped.
const ENTRIES: u32 = 256;

/// The `user_data` of cancellation requests, whose completions are not waited for.
const CANCEL: u64 = u64::MAX;

/// A worker's ring.
pub(super) struct Ring {
    ring: IoUring,
}

impl Ring {
    /// The ring as the kernel allows: with `DEFER_TASKRUN` (Linux 6.1+) completion work runs
    /// only when this thread waits on the ring, in one batch, instead of interrupting it; with
    /// `COOP_TASKRUN` (5.19+) it runs at its next system call; else as the kernel does it.
    /// Waits with a timeout need `IORING_FEAT_EXT_ARG` (5.11+).
    pub(super) fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(ENTRIES)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(ENTRIES))
            .or_else(|_| IoUring::builder().build(ENTRIES))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::other(
                "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11 or later is needed)",
            ));
        }
        Ok(Ring { ring })
    }
}

enum Slot {
    /// In flight; the waker of the task that last polled it.
    Waiting(Option<Waker>),
    /// Completed with this result, not yet taken.
    Done(i32),
    /// Dropped in flight: what the kernel was lent, kept until the completion.
    Abandoned { _lent: Box<dyn Any> },
}

struct Driver {
    ring: IoUring,
    ops: Slab<Slot>,
    /// Wakers of completed operations, woken once the driver is no longer borrowed.
    woken: Vec<Waker>,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// How long a turn may wait for a completion.
pub(super) enum Wait {
    /// Not at all: tasks are runnable.
    No,
    /// Until a completion or this deadline.
    Until(Instant),
    /// Until a completion.
    Forever,
}

/// Makes `ring` this thread's; the guard drops every task, waits out the operations still
/// in flight and closes the ring.
pub(super) fn install(ring: Ring) -> io::Result<Running> {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_some() {
            return Err(io::Error::other("a runtime already runs on this thread"));
        }
        *d = Some(Driver {
            ring: ring.ring,
            ops: Slab::new(),
            woken: Vec::new(),
        });
        Ok(Running(()))
    })
}

pub(super) struct Running(());

impl Drop for Running {
    fn drop(&mut self) {
        super::drop_tasks();
        super::time::clear();
        let Some(mut d) = DRIVER.with(|d| d.borrow_mut().take()) else {
            return;
        };
        d.woken.clear();
        let keys: Vec<usize> = d.ops.iter().map(|(k, _)| k).collect();
        for k in keys {
            d.cancel(k);
        }
        // Socket operations end at once when cancelled; bound the wait all the same.
        let until = Instant::now() + Duration::from_secs(5);
        while !d.ops.is_empty() && Instant::now() < until {
            let _ = d.enter(Wait::Until(Instant::now() + Duration::from_millis(100)));
            d.reap();
        }
        d.woken.clear();
        if !d.ops.is_empty() {
            // The kernel may still write into what the slots hold: leak them with the ring
            // rather than free memory under it.
            std::mem::forget(d);
        }
    }
}

/// One wait on the ring, then the completions it found are handed to their operations.
pub(super) fn turn(wait: Wait) -> io::Result<()> {
    let woken = DRIVER.with(|d| -> io::Result<Vec<Waker>> {
        let mut d = d.borrow_mut();
        let Some(d) = d.as_mut() else {
            return Ok(Vec::new());
        };
        d.enter(wait)?;
        d.reap();
        Ok(std::mem::take(&mut d.woken))
    })?;
    let mut woken = woken;
    for w in woken.drain(..) {
        w.wake();
    }
    // Keep the vector's allocation for the next turn.
    DRIVER.with(|d| {
        if let Some(d) = d.borrow_mut().as_mut() {
            if d.woken.is_empty() {
                d.woken = woken;
            }
        }
    });
    Ok(())
}

impl Driver {
    /// Submits what is queued and, as `wait` says, waits for a completion.
    fn enter(&mut self, wait: Wait) -> io::Result<()> {
        let res = match wait {
            Wait::No => self.wait_up_to(Duration::ZERO),
            Wait::Forever => self.ring.submit_and_wait(1).map(drop),
            Wait::Until(deadline) => {
                self.wait_up_to(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match res {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ENOMEM)
                ) =>
            {
                // Timed out or interrupted; or completions to reap before more can be posted,
                // or the kernel short of memory for submissions for now: the turn goes on,
                // and what was not submitted stays queued for the next.
                Ok(())
            }
            r => r,
        }
    }

    /// Submits and waits up to `left` for a completion; with no time left, only collects
    /// what has come (under `DEFER_TASKRUN` completions are posted only when the ring is
    /// entered for them, so even that enters the kernel).
    fn wait_up_to(&mut self, left: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.ring.submitter().submit_with_args(1, &args).map(drop)
    }

    /// Hands every completion in the queue to its slot.
    fn reap(&mut self) {
        let Driver {
            ring, ops, woken, ..
        } = self;
        for cqe in ring.completion() {
            let key = cqe.user_data();
            if key == CANCEL {
                continue;
            }
            let Ok(key) = usize::try_from(key) else {
                continue;
            };
            let Some(slot) = ops.get_mut(key) else {
                continue;
            };
            match slot {
                Slot::Waiting(w) => {
                    woken.extend(w.take());
                    *slot = Slot::Done(cqe.result());
                }
                Slot::Abandoned { .. } => {
                    ops.remove(key);
                }
                Slot::Done(_) => {}
            }
        }
    }

    /// Queues `entry`; when the submission queue is full, submits it first.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..4 {
            // SAFETY: the caller of `submit` vouches for what the entry points to.
            #[allow(unsafe_code)]
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    return Err(e);
                }
                self.reap();
            }
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Asks the kernel to cancel operation `key`; its slot waits for the completion.
    fn cancel(&mut self, key: usize) {
        let entry = opcode::AsyncCancel::new(key as u64)
            .build()
            .user_data(CANCEL);
        let _ = self.push(&entry);
    }
}

/// An operation on the ring; it resolves to the kernel's result and what it was lent.
pub(super) struct Op<T: 'static> {
    state: State,
    data: Option<T>,
}

enum State {
    InFlight(usize),
    /// Never submitted, or completed: this result.
    Ready(i32),
    Taken,
}

// The operation's data is never pinned: the kernel points at heap blocks it owns.
impl<T> Unpin for Op<T> {}

/// Queues `entry` as an operation lending `data` to the kernel.
///
/// # Safety
/// Every pointer in `entry` must point into heap memory that `data` owns (or that lives
/// longer than the program), valid for the access the operation makes, and every
/// descriptor in it must be kept open by `data`; moving `data` must not move that memory.
#[allow(unsafe_code)]
pub(super) unsafe fn submit<T: 'static>(entry: squeue::Entry, data: T) -> Op<T> {
    let state = DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        let Some(d) = d.as_mut() else {
            return State::Ready(-libc::ENXIO);
        };
        let key = d.ops.insert(Slot::Waiting(None));
        match d.push(&entry.user_data(key as u64)) {
            Ok(()) => State::InFlight(key),
            Err(e) => {
                d.ops.remove(key);
                State::Ready(-e.raw_os_error().unwrap_or(libc::EAGAIN))
            }
        }
    });
    Op {
        state,
        data: Some(data),
    }
}

impl<T> Future for Op<T> {
    type Output = (i32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let res = match self.state {
            State::InFlight(key) => {
                let done = DRIVER.with(|d| {
                    let mut d = d.borrow_mut();
                    let d = d.as_mut()?;
                    match d.ops.get_mut(key) {
                        Some(Slot::Done(res)) => {
                            let res = *res;
                            d.ops.remove(key);
                            Some(res)
                        }
                        Some(Slot::Waiting(w)) => {
                            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                *w = Some(cx.waker().clone());
                            }
                            None
                        }
                        Some(Slot::Abandoned { .. }) | None => Some(-libc::ECANCELED),
                    }
                });
                match done {
                    Some(res) => res,
                    None => return Poll::Pending,
                }
            }
            State::Ready(res) => res,
            State::Taken => return Poll::Pending,
        };
        self.state = State::Taken;
        match self.data.take() {
            Some(data) => Poll::Ready((res, data)),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for Op<T> {
    fn drop(&mut self) {
        let State::InFlight(key) = self.state else {
            return;
        };
        let mut data = self.data.take();
        let driven = DRIVER.with(|d| {
            let mut d = d.borrow_mut();
            let Some(d) = d.as_mut() else {
                return false;
            };
            match d.ops.get(key) {
                Some(Slot::Waiting(_)) => {
                    d.ops[key] = Slot::Abandoned {
                        _lent: Box::new(data.take()),
                    };
                    d.cancel(key);
                }
                // Completed: the kernel is done with what it was lent.
                Some(Slot::Done(_)) => {
                    d.ops.remove(key);
                }
                Some(Slot::Abandoned { .. }) | None => {}
            }
            true
        });
        if !driven {
            // The ring is gone, or leaked with the operations it had: so is this one's data.
            std::mem::forget(data);
        }
    }
}
