//! When to give the allocator's free memory back to the system. The buffers of a burst are
//! freed into glibc's heap, which keeps them, and cannot shrink from the top past smaller
//! allocations made between them; `malloc_trim` hands back the pages of its free chunks.
//! Trimming under load would only have the next responses fault those pages in anew, so it
//! happens once a burst is over: when the workers' pools, full again, have freed many relay
//! buffers since the last trim, have stopped freeing them, and the connections busy are half
//! what they were or fewer; or when the process has gone quiet after serving. A trim made
//! while connections were still busy is followed by another once those have halved again,
//! for whatever they freed meanwhile, however little.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Relay buffers freed this many bytes' worth since the last trim (by pools that are full:
/// more responses had been under way than the pools keep buffers for) are a burst over;
/// with 256 KiB buffers, 128 of them.
const BURST_OVER: u64 = 32 << 20;

/// No request read for this long, and no connection reading or writing: the process is quiet.
const QUIET: Duration = Duration::from_secs(1);

/// What the process looked like at the workers' ticks, shared by them.
pub(super) struct Trim {
    seen: Mutex<Seen>,
}

/// The load as last seen, and the marks the next trim is measured from.
struct Seen {
    requests: u64,
    requests_since: Instant,
    /// The request count at the last trim.
    trimmed_at: u64,
    /// Bytes of relay buffers freed since the last trim.
    released: u64,
    /// The most connections seen busy at a tick since the last trim.
    busy_high: i64,
    /// The last trim was made with connections busy, whose buffers are yet to be freed.
    follow_up: bool,
}

/// One worker's tick's reading.
pub(super) struct Load {
    /// Requests read so far, all workers.
    pub requests: u64,
    /// Connections reading a request or writing a response, all workers.
    pub busy: i64,
    /// Bytes of relay buffers this worker freed since its last tick.
    pub released: u64,
}

impl Trim {
    pub(super) fn new() -> Trim {
        Trim {
            seen: Mutex::new(Seen::new(Instant::now())),
        }
    }

    /// Called at each worker's tick: trims when a burst is over or the process has gone quiet
    /// since it last served; true when it did.
    pub(super) fn tick(&self, load: &Load, now: Instant) -> bool {
        let due = self
            .seen
            .lock()
            .map(|mut s| s.due(load, now))
            .unwrap_or(false);
        if due {
            malloc_trim();
        }
        due
    }
}

impl Seen {
    fn new(now: Instant) -> Seen {
        Seen {
            requests: 0,
            requests_since: now,
            trimmed_at: 0,
            released: 0,
            busy_high: 0,
            follow_up: false,
        }
    }

    /// Notes `load` and says whether to trim now; if so, the marks start again from here.
    fn due(&mut self, load: &Load, now: Instant) -> bool {
        if load.requests != self.requests {
            self.requests = load.requests;
            self.requests_since = now;
        }
        self.released = self.released.saturating_add(load.released);
        self.busy_high = self.busy_high.max(load.busy);
        // Under a steady load the pools overflow too, whenever the responses under way
        // dip by more than they keep; what is freed then is taken again at once. While a
        // load winds down, each tick frees more: trimming at its end gets all of it. A tick
        // that frees nothing can come before the end, though, when responses are long.
        let freed = self.released >= BURST_OVER || (self.follow_up && self.released > 0);
        let burst_over = freed && load.released == 0 && load.busy <= self.busy_high / 2;
        let quiet = load.busy == 0
            && now.saturating_duration_since(self.requests_since) >= QUIET
            && load.requests != self.trimmed_at;
        if !(burst_over || quiet) {
            return false;
        }
        self.trimmed_at = load.requests;
        self.released = 0;
        self.busy_high = load.busy;
        self.follow_up = load.busy > 0;
        true
    }
}

#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn malloc_trim() {
    // SAFETY: malloc_trim takes no pointers and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn malloc_trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn load(requests: u64, busy: i64, released: u64) -> Load {
        Load {
            requests,
            busy,
            released,
        }
    }

    #[test]
    fn a_quiet_second_after_serving_trims_once() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = Seen::new(t0);
        assert!(!s.due(&load(0, 0, 0), at(5000)), "nothing served yet");
        assert!(!s.due(&load(10, 0, 0), at(5500)), "a request just now");
        assert!(
            !s.due(&load(10, 1, 0), at(6600)),
            "a connection still writing"
        );
        assert!(s.due(&load(10, 0, 0), at(6600)));
        assert!(!s.due(&load(10, 0, 0), at(9000)), "once per quiet spell");
        assert!(!s.due(&load(11, 0, 0), at(9100)));
        assert!(!s.due(&load(11, 0, 0), at(10000)), "not yet a second");
        assert!(s.due(&load(11, 0, 0), at(10100)));
    }

    #[test]
    fn buffers_freed_after_a_burst_trim_under_a_trickle_of_requests() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = Seen::new(t0);
        assert!(!s.due(&load(100, 256, 0), at(500)));
        assert!(!s.due(&load(200, 200, 20 * MIB), at(1000)), "steady load");
        assert!(
            !s.due(&load(300, 240, 20 * MIB), at(1500)),
            "40 MiB freed, as busy"
        );
        assert!(
            !s.due(&load(301, 30, 20 * MIB), at(2000)),
            "still winding down"
        );
        assert!(s.due(&load(302, 3, 0), at(2500)), "the load gone");
        assert!(
            !s.due(&load(303, 40, 31 * MIB), at(3000)),
            "counted from the trim"
        );
        assert!(!s.due(&load(304, 30, MIB), at(3500)), "busy 30 of 40");
        assert!(!s.due(&load(305, 30, 0), at(4000)), "busy 30 of 40");
        assert!(
            s.due(&load(306, 20, 0), at(4500)),
            "32 MiB since, busy 20 of 40"
        );
    }

    #[test]
    fn a_trim_before_a_load_has_wound_down_is_followed_by_another() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = Seen::new(t0);
        assert!(!s.due(&load(100, 90, 40 * MIB), at(1000)));
        assert!(
            s.due(&load(200, 25, 0), at(2000)),
            "a second without a response ending"
        );
        assert!(!s.due(&load(201, 13, 9 * MIB), at(3000)), "still freeing");
        assert!(!s.due(&load(202, 13, 0), at(4000)), "busy 13 of 25");
        assert!(s.due(&load(203, 1, 0), at(5000)), "9 MiB since, busy 1");
        assert!(!s.due(&load(204, 1, MIB), at(6000)));
        assert!(s.due(&load(205, 0, 0), at(7000)), "busy 0 of 1");
        assert!(!s.due(&load(260, 0, MIB), at(8000)));
        assert!(
            !s.due(&load(300, 0, 0), at(9000)),
            "the last trim found none busy; a megabyte is not a burst"
        );
    }
}
