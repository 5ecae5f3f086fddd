//! Per-worker bounded keep-alive pool of upstream connections (slab-backed, with a stack of
//! idle connections per key so that checkout and checkin take constant time). An idle
//! connection is never left with a read pending (under io_uring a parked read would swallow
//! the next response); instead its liveness is checked with a non-blocking
//! `recv(MSG_PEEK)` at checkout (unless it was returned within the last second) and by a
//! periodic sweep, so a peer's FIN is noticed and the
//! socket closed (no CLOSE-WAIT) even when nobody asks for it.

use std::time::{Duration, Instant};

use slab::Slab;

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
    since: Instant,
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
    pub fn checkout(&mut self, key: usize, now: Instant, timeout: Duration) -> Option<Transport> {
        loop {
            let newest = self.stacks.get_mut(key)?.pop()?;
            let c = self.idle.try_remove(newest)?;
            let idle = now.saturating_duration_since(c.since);
            if idle < timeout && (idle < FRESH || alive(&c.transport)) {
                return Some(c.transport);
            }
            c.transport.shutdown();
        }
    }

    /// Keeps `transport` for reuse unless `key` already has `max` idle connections.
    pub fn checkin(&mut self, key: usize, transport: Transport, max: usize, now: Instant) {
        if self.stacks.len() <= key {
            self.stacks.resize_with(key + 1, Vec::new);
        }
        let Some(stack) = self.stacks.get_mut(key) else {
            return;
        };
        if stack.len() >= max || transport.has_buffered() {
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
    pub fn sweep(&mut self, now: Instant, timeout_of: impl Fn(usize) -> Duration) {
        self.idle.retain(|_, c| {
            let keep =
                now.saturating_duration_since(c.since) < timeout_of(c.key) && alive(&c.transport);
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

/// An idle connection is alive when a non-blocking peek finds nothing to read: a FIN (0),
/// unexpected bytes, or an error all mean it must not be reused.
#[allow(unsafe_code)]
fn alive(t: &Transport) -> bool {
    let mut byte = 0u8;
    // SAFETY: the fd is owned by `t`, which outlives this call; the buffer is one valid byte;
    // MSG_DONTWAIT makes the call non-blocking and MSG_PEEK leaves the socket's data alone.
    let n = unsafe {
        libc::recv(
            t.raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let err = std::io::Error::last_os_error();
        err.kind() == std::io::ErrorKind::WouldBlock
    }
}
