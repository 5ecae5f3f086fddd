//! The addresses of one `s3` block's endpoint, shared by every worker: new connections are
//! spread over them (one step of rotation per connection), an address that just failed is
//! tried last for a while (nginx's `max_fails=1 fail_timeout=10s`), and a host name is
//! resolved again in the background every `resolve_interval`, so a long-running process
//! follows S3's DNS instead of the answer it started with. Workers never wait on DNS: they
//! read the last answer under a short lock, once per new connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::timer::Tick;

/// How long an address that failed is tried only after the others.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Addresses {
    host: String,
    port: u16,
    state: Mutex<State>,
    /// Bumped whenever the set of addresses changes, so a worker's sweep can close idle
    /// connections to addresses that are gone without looking at them otherwise.
    version: AtomicU64,
    /// Where the next connection's rotation starts.
    next: AtomicUsize,
}

struct State {
    list: Arc<[SocketAddr]>,
    /// Addresses that failed, and until when they go last.
    failed: Vec<(SocketAddr, Tick)>,
    resolved: Tick,
}

/// What a background resolution found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Not a host name, or not due yet.
    Skipped,
    Unchanged,
    /// The set of addresses changed: the old and the new one.
    Changed(Arc<[SocketAddr]>, Arc<[SocketAddr]>),
    /// The lookup failed or found nothing; the previous addresses stay in use.
    Failed(String),
}

impl Addresses {
    /// The addresses resolved when the conf was loaded (never empty).
    pub fn new(host: &str, port: u16, resolved: &[SocketAddr], now: Tick) -> Addresses {
        Addresses {
            host: host.to_string(),
            port,
            state: Mutex::new(State {
                list: resolved.into(),
                failed: Vec::new(),
                resolved: now,
            }),
            version: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing in the critical sections can panic halfway; a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<[SocketAddr]> {
        Arc::clone(&self.state().list)
    }

    /// The addresses for one new connection, best first, and how many of them at the front
    /// have not failed within [`FAIL_TIMEOUT`]: the list rotated one step further than for
    /// the previous connection, the addresses that failed moved behind the others.
    pub fn candidates(&self, now: Tick) -> (Vec<SocketAddr>, usize) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        state.failed.retain(|&(_, until)| until > now);
        let healthy = state.list.len().saturating_sub(
            state
                .list
                .iter()
                .filter(|a| state.failed.iter().any(|(f, _)| f == *a))
                .count(),
        );
        (order(&state.list, &state.failed, start), healthy)
    }

    /// Notes that connecting to `addr` failed (refused, unreachable, timed out).
    pub fn failed(&self, addr: SocketAddr, now: Tick) {
        let mut state = self.state();
        let until = now + FAIL_TIMEOUT;
        match state.failed.iter_mut().find(|(a, _)| *a == addr) {
            Some(entry) => entry.1 = until,
            None => state.failed.push((addr, until)),
        }
    }

    /// Notes that `addr` accepted a connection again.
    pub fn succeeded(&self, addr: SocketAddr) {
        let mut state = self.state();
        if !state.failed.is_empty() {
            state.failed.retain(|(a, _)| *a != addr);
        }
    }

    /// Looks the host name up again if `interval` has passed since the last lookup (an IP
    /// literal never is). Blocks on DNS: call it from a thread of its own, never a worker.
    pub fn refresh(&self, now: Tick, interval: Duration) -> Refresh {
        if self.host.parse::<IpAddr>().is_ok() {
            return Refresh::Skipped;
        }
        {
            let mut state = self.state();
            if now.saturating_duration_since(state.resolved) < interval {
                return Refresh::Skipped;
            }
            state.resolved = now;
        }
        let found = match crate::conf::lookup(&self.host, self.port) {
            Ok(a) => a,
            Err(e) => return Refresh::Failed(format!("cannot resolve \"{}\": {e}", self.host)),
        };
        self.update(found)
    }

    /// Takes a lookup's answer: the same set in another order changes nothing (S3's DNS
    /// rotates its answers; the rotation here already spreads connections).
    fn update(&self, found: Vec<SocketAddr>) -> Refresh {
        if found.is_empty() {
            return Refresh::Failed(format!("\"{}\" resolves to no address", self.host));
        }
        let mut state = self.state();
        if same_set(&state.list, &found) {
            return Refresh::Unchanged;
        }
        let new: Arc<[SocketAddr]> = found.into();
        let old = std::mem::replace(&mut state.list, Arc::clone(&new));
        state.failed.retain(|(a, _)| new.contains(a));
        self.version.fetch_add(1, Ordering::AcqRel);
        Refresh::Changed(old, new)
    }
}

/// `list` rotated left by `start`, with the addresses in `failed` moved to the end (in
/// their rotated order).
fn order(list: &[SocketAddr], failed: &[(SocketAddr, Tick)], start: usize) -> Vec<SocketAddr> {
    let n = list.len();
    if n == 0 {
        return Vec::new();
    }
    let rotated = (0..n).filter_map(|i| list.get((start % n + i) % n).copied());
    let is_failed = |a: &SocketAddr| failed.iter().any(|(f, _)| f == a);
    let (mut good, bad): (Vec<_>, Vec<_>) = rotated.partition(|a| !is_failed(a));
    good.extend(bad);
    good
}

fn same_set(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 9000))
    }

    fn addresses(list: &[SocketAddr]) -> Addresses {
        Addresses::new("s3.example", 9000, list, Tick::now())
    }

    #[test]
    fn each_connection_starts_one_address_further() {
        let a = addresses(&[addr(1), addr(2), addr(3)]);
        let now = Tick::now();
        let firsts: Vec<_> = (0..6).map(|_| a.candidates(now).0[0]).collect();
        assert_eq!(
            firsts,
            [addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
        );
        assert_eq!(a.candidates(now), (vec![addr(1), addr(2), addr(3)], 3));
    }

    #[test]
    fn a_failed_address_goes_last_until_the_fail_timeout_passes() {
        let a = addresses(&[addr(1), addr(2), addr(3)]);
        let now = Tick::now();
        a.failed(addr(1), now);
        assert_eq!(a.candidates(now), (vec![addr(2), addr(3), addr(1)], 2));
        assert_eq!(a.candidates(now), (vec![addr(2), addr(3), addr(1)], 2));
        assert_eq!(a.candidates(now), (vec![addr(3), addr(2), addr(1)], 2));
        let later = now + FAIL_TIMEOUT + Duration::from_millis(1);
        assert_eq!(a.candidates(later), (vec![addr(1), addr(2), addr(3)], 3));
    }

    #[test]
    fn every_address_failed_still_leaves_all_of_them_to_try() {
        let a = addresses(&[addr(1), addr(2)]);
        let now = Tick::now();
        a.failed(addr(1), now);
        a.failed(addr(2), now);
        assert_eq!(a.candidates(now), (vec![addr(1), addr(2)], 0));
        a.succeeded(addr(2));
        assert_eq!(a.candidates(now), (vec![addr(2), addr(1)], 1));
    }

    #[test]
    fn the_same_set_in_another_order_is_no_change() {
        let a = addresses(&[addr(1), addr(2)]);
        assert_eq!(a.update(vec![addr(2), addr(1)]), Refresh::Unchanged);
        assert_eq!(a.version(), 0);
        assert_eq!(&*a.current(), [addr(1), addr(2)]);
    }

    #[test]
    fn a_new_set_replaces_the_old_and_forgets_failures_of_addresses_gone() {
        let a = addresses(&[addr(1), addr(2)]);
        let now = Tick::now();
        a.failed(addr(1), now);
        a.failed(addr(2), now);
        let change = a.update(vec![addr(2), addr(3)]);
        assert_eq!(
            change,
            Refresh::Changed(vec![addr(1), addr(2)].into(), vec![addr(2), addr(3)].into())
        );
        assert_eq!(a.version(), 1);
        // addr(2) still failed, addr(1) forgotten with the old set.
        assert_eq!(a.state().failed.len(), 1);
        assert_eq!(a.candidates(now).0.last(), Some(&addr(2)));
    }

    #[test]
    fn an_empty_answer_keeps_the_addresses_in_use() {
        let a = addresses(&[addr(1)]);
        assert!(matches!(a.update(Vec::new()), Refresh::Failed(_)));
        assert_eq!(&*a.current(), [addr(1)]);
    }

    #[test]
    fn ip_literals_and_lookups_not_yet_due_are_skipped() {
        let now = Tick::now();
        let literal = Addresses::new("127.0.0.1", 9000, &[addr(1)], now);
        assert_eq!(literal.refresh(now, Duration::ZERO), Refresh::Skipped);
        let named = Addresses::new("localhost", 9000, &[addr(1)], now);
        assert_eq!(
            named.refresh(now, Duration::from_secs(30)),
            Refresh::Skipped
        );
    }

    #[test]
    fn a_due_lookup_resolves_the_name_again() {
        let now = Tick::now();
        let a = Addresses::new("localhost", 9000, &[addr(9)], now);
        match a.refresh(now + Duration::from_secs(31), Duration::from_secs(30)) {
            Refresh::Changed(old, new) => {
                assert_eq!(&*old, [addr(9)]);
                assert!(new.iter().all(|a| a.ip().is_loopback() && a.port() == 9000));
            }
            other => panic!("expected a change, got {other:?}"),
        }
        assert_eq!(
            a.refresh(now + Duration::from_secs(32), Duration::from_secs(30)),
            Refresh::Skipped
        );
    }
}
