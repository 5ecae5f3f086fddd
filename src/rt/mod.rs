//! A worker's runtime: one io_uring ring and the tasks that use it, on one thread.
//!
//! tailgate ran on tokio with tokio-uring until measured against bare relays of the same
//! bytes (bench/HISTORY.md, twenty-first session): their scheduler tick, park, I/O driver
//! turn and epoll wait on the ring's descriptor cost about 3.9 µs of a 4 KiB range's 53,
//! and tokio-uring leaves no way to wait in `io_uring_enter` itself, which is what makes
//! `IORING_SETUP_DEFER_TASKRUN` pay. This module is the least runtime that does the job:
//!
//! - Tasks are `!Send` futures in a slab. A waker is its task's index: waking queues the
//!   task on this thread's ready queue (once, however often it is woken). No waker leaves
//!   its worker thread: every waiter in tailgate (timeouts, shared manifest fetches, the
//!   worker's notifications) is woken from the same thread.
//! - An operation ([`driver`]) lends buffers and its socket's descriptor to the kernel until
//!   the completion: dropped in flight, it leaves both in its slot and asks the kernel to
//!   cancel, so neither is freed or reused while the kernel may still touch them.
//! - Timers ([`time`]) are deadlines in a map; the ring wait is bounded by the earliest.
//! - A turn polls the woken tasks, then makes one `io_uring_enter` that submits what they
//!   queued and, if none is runnable, waits for a completion or the next deadline.

mod driver;
pub mod net;
pub mod time;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use slab::Slab;

use driver::Ring;

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct Entry {
    /// `None` while the task is being polled.
    task: Option<Task>,
    /// In the ready queue already: another wake adds nothing.
    queued: bool,
}

struct Executor {
    tasks: RefCell<Slab<Entry>>,
    ready: RefCell<VecDeque<usize>>,
    /// The future `start` runs was woken.
    main_woken: Cell<bool>,
}

thread_local! {
    static EXEC: Executor = const {
        Executor {
            tasks: RefCell::new(Slab::new()),
            ready: RefCell::new(VecDeque::new()),
            main_woken: Cell::new(false),
        }
    };
}

/// The waker index of the future `start` runs.
const MAIN: usize = usize::MAX;

/// Tasks polled before the ring is entered again even though more are runnable, so that
/// tasks that keep waking each other do not starve the I/O.
const BUDGET: usize = 256;

static VTABLE: RawWakerVTable = RawWakerVTable::new(
    |data| RawWaker::new(data, &VTABLE),
    |data| wake(data as usize),
    |data| wake(data as usize),
    |_| {},
);

fn waker(task: usize) -> Waker {
    // SAFETY: the data pointer is a task index, never dereferenced: the vtable's functions
    // only copy it or pass it to `wake`, and dropping it does nothing.
    #[allow(unsafe_code)]
    unsafe {
        Waker::from_raw(RawWaker::new(task as *const (), &VTABLE))
    }
}

fn wake(task: usize) {
    EXEC.with(|e| {
        if task == MAIN {
            e.main_woken.set(true);
            return;
        }
        if let Some(entry) = e.tasks.borrow_mut().get_mut(task) {
            if !entry.queued {
                entry.queued = true;
                e.ready.borrow_mut().push_back(task);
            }
        }
    });
}

/// Runs `f` as a task of this thread's runtime until it completes. A panic in it is
/// reported by the panic hook and ends that task alone.
pub fn spawn(f: impl Future<Output = ()> + 'static) {
    EXEC.with(|e| {
        let task = e.tasks.borrow_mut().insert(Entry {
            task: Some(Box::pin(f)),
            queued: true,
        });
        e.ready.borrow_mut().push_back(task);
    });
}

/// Lets the other runnable tasks run before this one goes on.
#[cfg(test)]
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Runs `main` and the tasks it spawns on a new runtime on this thread, until `main`
/// completes; tasks still pending then are dropped. Fails if the ring cannot be set up, if
/// the thread already runs a runtime, or if the kernel refuses to wait on the ring.
pub fn start<F: Future>(main: F) -> io::Result<F::Output> {
    let _running = driver::install(Ring::new()?)?;
    let mut main = pin!(main);
    let main_waker = waker(MAIN);
    let mut cx = Context::from_waker(&main_waker);
    EXEC.with(|e| e.main_woken.set(true));
    loop {
        if EXEC.with(|e| e.main_woken.replace(false)) {
            if let Poll::Ready(v) = main.as_mut().poll(&mut cx) {
                return Ok(v);
            }
        }
        run_ready();
        let runnable = EXEC.with(|e| e.main_woken.get() || !e.ready.borrow().is_empty());
        let wait = if runnable {
            driver::Wait::No
        } else {
            time::next().map_or(driver::Wait::Forever, driver::Wait::Until)
        };
        driver::turn(wait)?;
        time::fire();
    }
}

/// Polls up to [`BUDGET`] ready tasks.
fn run_ready() {
    for _ in 0..BUDGET {
        let Some((index, mut task)) = EXEC.with(|e| {
            let index = e.ready.borrow_mut().pop_front()?;
            let mut tasks = e.tasks.borrow_mut();
            let entry = tasks.get_mut(index)?;
            entry.queued = false;
            Some((index, entry.task.take()?))
        }) else {
            if EXEC.with(|e| e.ready.borrow().is_empty()) {
                return;
            }
            continue;
        };
        let w = waker(index);
        let polled = catch_unwind(AssertUnwindSafe(|| {
            task.as_mut().poll(&mut Context::from_waker(&w))
        }));
        match polled {
            Ok(Poll::Pending) => EXEC.with(|e| {
                if let Some(entry) = e.tasks.borrow_mut().get_mut(index) {
                    entry.task = Some(task);
                }
            }),
            Ok(Poll::Ready(())) | Err(_) => {
                EXEC.with(|e| e.tasks.borrow_mut().try_remove(index));
                // Dropped outside the borrow: its drop may wake or spawn.
                let _ = catch_unwind(AssertUnwindSafe(|| drop(task)));
            }
        }
    }
}

/// Drops every task (their operations are abandoned to the driver, which still owns the
/// ring) and clears the queue; run when `start` returns or unwinds.
fn drop_tasks() {
    loop {
        let tasks: Vec<Task> = EXEC.with(|e| {
            e.ready.borrow_mut().clear();
            e.main_woken.set(false);
            e.tasks
                .borrow_mut()
                .drain()
                .filter_map(|entry| entry.task)
                .collect()
        });
        if tasks.is_empty() {
            return;
        }
        drop(tasks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn spawned_tasks_run_and_wake_each_other() {
        let got = start(async {
            let log = Rc::new(RefCell::new(Vec::new()));
            let flag = Rc::new(Cell::new(false));
            let waiter: Rc<RefCell<Option<Waker>>> = Rc::default();
            {
                let (log, flag, waiter) = (Rc::clone(&log), Rc::clone(&flag), Rc::clone(&waiter));
                spawn(async move {
                    poll_fn(|cx| {
                        if flag.get() {
                            Poll::Ready(())
                        } else {
                            *waiter.borrow_mut() = Some(cx.waker().clone());
                            Poll::Pending
                        }
                    })
                    .await;
                    log.borrow_mut().push("woken");
                });
            }
            {
                let (log, flag, waiter) = (Rc::clone(&log), Rc::clone(&flag), Rc::clone(&waiter));
                spawn(async move {
                    yield_now().await;
                    log.borrow_mut().push("waking");
                    flag.set(true);
                    if let Some(w) = waiter.borrow_mut().take() {
                        // Twice: the task is queued once.
                        w.wake_by_ref();
                        w.wake();
                    }
                });
            }
            time::sleep(Duration::from_millis(5)).await;
            let v = log.borrow().clone();
            v
        })
        .unwrap();
        assert_eq!(got, vec!["waking", "woken"]);
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let got = start(async {
            spawn(async { panic!("deliberate, in a test") });
            let done = Rc::new(Cell::new(false));
            let d = Rc::clone(&done);
            spawn(async move {
                yield_now().await;
                d.set(true);
            });
            time::sleep(Duration::from_millis(5)).await;
            done.get()
        })
        .unwrap();
        assert!(got);
    }

    #[test]
    fn pending_tasks_are_dropped_when_main_returns_and_a_runtime_can_follow() {
        struct Flag(Rc<Cell<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let dropped = Rc::new(Cell::new(false));
        let d = Flag(Rc::clone(&dropped));
        start(async move {
            spawn(async move {
                let _d = d;
                std::future::pending::<()>().await;
            });
            yield_now().await;
        })
        .unwrap();
        assert!(dropped.get());
        assert_eq!(start(async { 7 }).unwrap(), 7);
    }

    #[test]
    fn a_runtime_inside_a_runtime_is_refused() {
        let inner = start(async { start(async {}).is_err() }).unwrap();
        assert!(inner);
    }
}
