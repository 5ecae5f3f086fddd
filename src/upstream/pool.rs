//! Per-worker bounded keep-alive pool of upstream connections (slab-backed, with a stack of
//! idle connections per key so that checkout and checkin take constant time). An idle
//! connection is never left with a read pending (under io_uring a parked read would swallow
//! the next response); instead its liveness is checked with a non-blocking
//! `recv(MSG_PEEK)` at checkout (unless it was returned within the last second) and by a
//! periodic sweep, so a peer's FIN is noticed and the socket closed (no CLOSE-WAIT) even
//! when nobody asks for it. On TLS the bytes found are read and opened: session tickets
//! and KeyUpdates a server sends after a response keep the connection, anything else ends
//! it ([`Transport::settle_idle`]).

use std::time::Duration;

use slab::Slab;

use crate::timer::Tick;

use super::transport::Transport;

/// A connection returned less than this long ago is reused without the `MSG_PEEK` check
/// (one syscall per request saved). Should its peer have closed it in that moment, the
/// request fails before any byte arrives and is retried at once on a new connection, as
/// for any stale pooled connection; the sweep still closes it within a second either way.
const FRESH: Duration = Duration::from_secs(1);

struct Idle {
    /// Which `s3` block (and conf generation) the connection belongs to.
    key: usize,
    transport: Transport,
    since: Tick,
}

pub struct Pool {
    idle: Slab<Idle>,
    /// Per key, the slab indices of its idle connections, most recently returned last: a
    /// checkout pops, a checkin pushes, neither scans the pool.
    stacks: Vec<Vec<usize>>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Slab::new(),
            stacks: Vec::new(),
        }
    }
}

impl Pool {
    /// The most recently returned live connection for `key`, dropping dead or expired ones
    /// on the way.
    pub fn checkout(&mut self, key: usize, now: Tick, timeout: Duration) -> Option<Transport> {
        loop {
            let newest = self.stacks.get_mut(key)?.pop()?;
            let mut c = self.idle.try_remove(newest)?;
            let idle = now.saturating_duration_since(c.since);
            if idle < timeout && (idle < FRESH || c.transport.settle_idle()) {
                return Some(c.transport);
            }
            c.transport.shutdown();
        }
    }

    /// Keeps `transport` for reuse unless `key` already has `max` idle connections.
    pub fn checkin(&mut self, key: usize, mut transport: Transport, max: usize, now: Tick) {
        if self.stacks.len() <= key {
            self.stacks.resize_with(key + 1, Vec::new);
        }
        let Some(stack) = self.stacks.get_mut(key) else {
            return;
        };
        if stack.len() >= max || (transport.has_buffered() && !transport.settle_idle()) {
            transport.shutdown();
            return;
        }
        stack.push(self.idle.insert(Idle {
            key,
            transport,
            since: now,
        }));
    }

    /// Closes every connection that expired (per `timeout_of` its key) or whose peer closed.
    pub fn sweep(&mut self, now: Tick, timeout_of: impl Fn(usize) -> Duration) {
        self.idle.retain(|_, c| {
            let keep = now.saturating_duration_since(c.since) < timeout_of(c.key)
                && c.transport.settle_idle();
            if !keep {
                c.transport.shutdown();
            }
            keep
        });
        let idle = &self.idle;
        for stack in &mut self.stacks {
            stack.retain(|&i| idle.contains(i));
        }
    }

    /// Closes the idle connections of `key` for which `close` says so.
    pub fn close_if(&mut self, key: usize, close: impl Fn(&Transport) -> bool) {
        let Some(stack) = self.stacks.get_mut(key) else {
            return;
        };
        let idle = &mut self.idle;
        stack.retain(|&i| {
            let gone = idle.get(i).is_some_and(|c| close(&c.transport));
            if gone {
                if let Some(c) = idle.try_remove(i) {
                    c.transport.shutdown();
                }
            }
            !gone
        });
    }

    /// Closes everything, e.g. when a new conf generation replaces the blocks.
    pub fn clear(&mut self) {
        for c in self.idle.drain() {
            c.transport.shutdown();
        }
        self.stacks.clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` plain connections to a listener, with the listener's ends (kept open, or
    /// dropped to make a connection dead).
    async fn connections(n: usize) -> (Vec<Transport>, Vec<std::net::TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..n {
            ours.push(Transport::connect(addr, None).await.unwrap());
            theirs.push(listener.accept().unwrap().0);
        }
        (ours, theirs)
    }

    #[test]
    fn newest_first_bounded_per_key_and_dead_ones_dropped() {
        crate::rt::start(async {
            let (conns, mut peers) = connections(5).await;
            let fds: Vec<_> = conns.iter().map(Transport::raw_fd).collect();
            let t0 = Tick::now();
            let at = |s| t0 + Duration::from_secs(s);
            let mut pool = Pool::default();
            let mut conns = conns.into_iter();
            for (key, s) in [(0, 1), (1, 2), (0, 3), (0, 4)] {
                pool.checkin(key, conns.next().unwrap(), 2, at(s));
            }
            assert_eq!(pool.idle_count(), 3, "key 0 holds at most 2");
            let long = Duration::from_secs(60);
            // The newest of key 0 first (returned at 3 s; the one of 4 s was over the bound).
            let got = pool.checkout(0, at(3), long).unwrap();
            assert_eq!(got.raw_fd(), fds[2]);
            pool.checkin(0, got, 2, at(5));
            // Past FRESH an idle connection is checked: key 0's newest peer closes.
            drop(peers.remove(2));
            crate::rt::time::sleep(Duration::from_millis(50)).await;
            let got = pool.checkout(0, at(7), long).unwrap();
            assert_eq!(
                got.raw_fd(),
                fds[0],
                "the dead newest was dropped on the way"
            );
            assert!(pool.checkout(0, at(7), long).is_none());
            // Expired ones are dropped too, and a key never checked in has nothing.
            assert!(pool.checkout(1, at(100), long).is_none());
            assert!(pool.checkout(7, at(0), long).is_none());
            assert_eq!(pool.idle_count(), 0);
            // The sweep keeps the stacks in step with the slab.
            pool.checkin(1, got, 2, at(8));
            pool.checkin(1, conns.next().unwrap(), 2, at(9));
            drop(peers.remove(0));
            crate::rt::time::sleep(Duration::from_millis(50)).await;
            pool.sweep(at(9), |_| long);
            assert_eq!(pool.idle_count(), 1);
            let got = pool.checkout(1, at(9), long).unwrap();
            assert_eq!(got.raw_fd(), fds[4]);
            pool.clear();
            assert!(pool.checkout(1, at(9), long).is_none());
        })
        .unwrap();
    }
}
