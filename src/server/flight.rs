//! One fetch per key at a time. When a cached manifest expires, every request in flight
//! for that package misses it at once; without this, each would send its own GET for the
//! same object (64 at once under 64 concurrent downloads) and wait for it. Here the first
//! miss fetches and the others wait for its outcome, failure included. A worker's flights
//! live on its own thread: no locks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use tokio::sync::Notify;

struct Flight<T> {
    landed: Notify,
    outcome: RefCell<Option<T>>,
}

pub(super) struct Flights<T> {
    pending: RefCell<HashMap<String, Rc<Flight<T>>>>,
}

/// Takes a flight off the board when its fetch ends, however it ends (a request dropped
/// mid-fetch included), and wakes whoever waits for it.
struct Landing<'a, T> {
    flights: &'a Flights<T>,
    key: &'a str,
    flight: Rc<Flight<T>>,
}

impl<T> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let mut pending = self.flights.pending.borrow_mut();
        if pending
            .get(self.key)
            .is_some_and(|f| Rc::ptr_eq(f, &self.flight))
        {
            pending.remove(self.key);
        }
        self.flight.landed.notify_waiters();
    }
}

impl<T: Clone> Flights<T> {
    pub(super) fn new() -> Self {
        Flights {
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// The outcome of `fetch` for `key`, or of the fetch for `key` already under way. A
    /// fetch that ends without an outcome (its request was dropped) passes the turn to one
    /// of its waiters.
    pub(super) async fn run<F: Future<Output = T>>(
        &self,
        key: &str,
        fetch: impl FnOnce() -> F,
    ) -> T {
        loop {
            let under_way = self.pending.borrow().get(key).cloned();
            let Some(flight) = under_way else {
                break;
            };
            // Created before the outcome is looked at: a landing in between still wakes it.
            let landed = flight.landed.notified();
            if flight.outcome.borrow().is_none() {
                landed.await;
            }
            let outcome = flight.outcome.borrow().clone();
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
        let flight = Rc::new(Flight {
            landed: Notify::new(),
            outcome: RefCell::new(None),
        });
        self.pending
            .borrow_mut()
            .insert(key.to_string(), Rc::clone(&flight));
        let landing = Landing {
            flights: self,
            key,
            flight,
        };
        let outcome = fetch().await;
        *landing.flight.outcome.borrow_mut() = Some(outcome.clone());
        outcome
    }

    /// True while a fetch for `key` is under way.
    pub(super) fn busy(&self, key: &str) -> bool {
        self.pending.borrow().contains_key(key)
    }

    /// Fetches under way.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn block_on<F: Future>(f: F) -> F::Output {
        crate::rt::start(f).unwrap()
    }

    /// A fetch that takes a while and counts itself.
    async fn slow(
        calls: &Cell<u32>,
        value: Result<u32, &'static str>,
    ) -> Result<u32, &'static str> {
        calls.set(calls.get() + 1);
        crate::rt::time::sleep(Duration::from_millis(20)).await;
        value
    }

    #[test]
    fn concurrent_misses_share_one_fetch_and_its_outcome() {
        block_on(async {
            let flights = Flights::new();
            let calls = Cell::new(0);
            let all = (0..10).map(|_| flights.run("m", || slow(&calls, Ok(7))));
            let got = futures_join(all.collect()).await;
            assert_eq!(got, vec![Ok(7); 10]);
            assert_eq!(calls.get(), 1);
            assert_eq!(flights.in_flight(), 0);
            // Failures are shared the same way; a later miss fetches again.
            let all = (0..5).map(|_| flights.run("m", || slow(&calls, Err("503"))));
            assert_eq!(futures_join(all.collect()).await, vec![Err("503"); 5]);
            assert_eq!(calls.get(), 2);
            assert_eq!(flights.run("m", || slow(&calls, Ok(8))).await, Ok(8));
            assert_eq!(calls.get(), 3);
        });
    }

    #[test]
    fn other_keys_fly_on_their_own() {
        block_on(async {
            let flights = Flights::new();
            let calls = Cell::new(0);
            let a = flights.run("a", || slow(&calls, Ok(1)));
            let b = flights.run("b", || slow(&calls, Ok(2)));
            let (a, b) = tokio::join!(a, b);
            assert_eq!((a, b, calls.get()), (Ok(1), Ok(2), 2));
        });
    }

    #[test]
    fn a_fetch_dropped_midway_passes_the_turn_to_a_waiter() {
        block_on(async {
            let flights = Flights::new();
            let calls = Cell::new(0);
            let first = flights.run("m", || slow(&calls, Ok(1)));
            let waiter = flights.run("m", || slow(&calls, Ok(2)));
            let second = flights.run("m", || slow(&calls, Ok(3)));
            // The first fetch is cut short (its request went away) while the others wait.
            let cut = crate::rt::time::timeout(Duration::from_millis(5), first);
            let (cut, got, also) = tokio::join!(cut, waiter, second);
            assert!(cut.is_err());
            // One waiter fetched in its place, the other shared that fetch.
            assert_eq!(calls.get(), 2);
            assert_eq!(got, also);
            assert!(got == Ok(2) || got == Ok(3), "{got:?}");
            assert_eq!(flights.in_flight(), 0);
        });
    }

    /// Polls every future to completion on this task; their outputs in order.
    async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
        use std::task::Poll;
        let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (slot, result) in pending.iter_mut().zip(&mut results) {
                if let Some(f) = slot {
                    if let Poll::Ready(v) = f.as_mut().poll(cx) {
                        *result = Some(v);
                        *slot = None;
                    }
                }
            }
            if pending.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        results.into_iter().flatten().collect()
    }
}
