//! A worker's cache of small tail segments (`tail_cache_size`), least recently used first
//! out. An entry is the bytes of one segment, `[offset, offset + length)` of its object,
//! valid only for the object's ETag: a manifest that points at a new version of a tail
//! (another ETag) misses and replaces it. Bounded in bytes; an entry may use at most a
//! quarter of the budget and 1 MiB, so one large tail cannot flush the hot ones.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;

use super::composite::Segment;

/// The largest segment that is cached, whatever the budget.
pub const MAX_ENTRY: u64 = 1 << 20;

struct Entry {
    etag: String,
    offset: u64,
    bytes: Bytes,
    /// Position in the use order.
    tick: u64,
}

pub struct TailCache {
    budget: u64,
    used: u64,
    /// Bytes reserved by fills in flight (whole tails being read for the cache).
    filling: u64,
    tick: u64,
    entries: HashMap<Rc<str>, Entry>,
    /// Use order: oldest first.
    order: BTreeMap<u64, Rc<str>>,
}

impl TailCache {
    /// A cache of at most `budget` bytes of segment data; 0 turns it off.
    pub fn new(budget: u64) -> TailCache {
        TailCache {
            budget,
            used: 0,
            filling: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Whether a segment of `length` bytes would be cached.
    pub fn admits(&self, length: u64) -> bool {
        length > 0 && length <= (self.budget / 4).min(MAX_ENTRY)
    }

    /// The segment's bytes, if cached for its key, ETag and range; a hit becomes the most
    /// recently used entry.
    pub fn get(&mut self, seg: &Segment) -> Option<Bytes> {
        let tick = self.next_tick();
        let e = self.entries.get_mut(seg.key.as_str())?;
        if e.etag != seg.etag || e.offset != seg.offset || e.bytes.len() as u64 != seg.length {
            return None;
        }
        if let Some(k) = self.order.remove(&e.tick) {
            self.order.insert(tick, k);
        }
        e.tick = tick;
        Some(e.bytes.clone())
    }

    /// Caches `bytes` as `seg`'s data (ignored unless it is exactly the segment and
    /// [`admits`](Self::admits) its length), evicting the least recently used entries to
    /// stay within the budget.
    pub fn insert(&mut self, seg: &Segment, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len != seg.length || !self.admits(len) {
            return;
        }
        self.remove(&seg.key);
        while self.used.saturating_add(len) > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used = self.used.saturating_sub(e.bytes.len() as u64);
            }
        }
        let tick = self.next_tick();
        let key: Rc<str> = Rc::from(seg.key.as_str());
        self.order.insert(tick, Rc::clone(&key));
        self.entries.insert(
            key,
            Entry {
                etag: seg.etag.clone(),
                offset: seg.offset,
                bytes,
                tick,
            },
        );
        self.used = self.used.saturating_add(len);
    }

    /// Reserves room to collect a tail of `length` bytes while it is relayed; refused when
    /// the fills in flight would pass the budget, so that many cold requests at once cannot
    /// hold more than the budget in collection buffers. [`end_fill`](Self::end_fill) gives
    /// the room back.
    pub fn begin_fill(&mut self, length: u64) -> bool {
        if !self.admits(length) || self.filling.saturating_add(length) > self.budget {
            return false;
        }
        self.filling = self.filling.saturating_add(length);
        true
    }

    pub fn end_fill(&mut self, length: u64) {
        self.filling = self.filling.saturating_sub(length);
    }

    /// Bytes of segment data held.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.tick);
            self.used = self.used.saturating_sub(e.bytes.len() as u64);
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(key: &str, etag: &str, len: usize) -> Segment {
        Segment {
            key: key.into(),
            offset: 0,
            length: len as u64,
            etag: etag.into(),
        }
    }

    fn data(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn hits_only_for_the_same_etag_and_range() {
        let mut c = TailCache::new(4096);
        let s = seg("t/a", "\"1\"", 100);
        assert!(c.get(&s).is_none());
        c.insert(&s, data(100, 7));
        assert_eq!(c.get(&s).as_deref(), Some(&[7u8; 100][..]));
        assert!(c.get(&seg("t/a", "\"2\"", 100)).is_none(), "another ETag");
        assert!(c.get(&seg("t/a", "\"1\"", 99)).is_none(), "another length");
        let mut moved = s.clone();
        moved.offset = 1;
        assert!(c.get(&moved).is_none(), "another offset");
        // A new version replaces the old one.
        c.insert(&seg("t/a", "\"2\"", 100), data(100, 8));
        assert_eq!(c.used(), 100);
        assert!(c.get(&s).is_none());
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = TailCache::new(1000);
        let (a, b, d) = (seg("a", "e", 250), seg("b", "e", 250), seg("d", "e", 250));
        c.insert(&a, data(250, 1));
        c.insert(&b, data(250, 2));
        c.insert(&d, data(250, 3));
        assert!(c.get(&a).is_some(), "a is now the most recent");
        c.insert(&seg("x", "e", 250), data(250, 4));
        c.insert(&seg("y", "e", 250), data(250, 5));
        assert!(c.get(&b).is_none(), "b was the least recently used");
        assert!(c.get(&a).is_some());
        assert_eq!(c.used(), 1000);
    }

    #[test]
    fn refuses_what_it_must_not_hold() {
        let mut off = TailCache::new(0);
        assert!(!off.admits(1));
        off.insert(&seg("a", "e", 1), data(1, 0));
        assert_eq!(off.used(), 0);
        let mut c = TailCache::new(1000);
        assert!(
            c.admits(250) && !c.admits(251),
            "a quarter of the budget at most"
        );
        c.insert(&seg("a", "e", 10), data(9, 0));
        assert_eq!(c.used(), 0, "bytes that are not the whole segment");
        assert!(!TailCache::new(u64::MAX).admits(MAX_ENTRY + 1));
    }

    #[test]
    fn fills_in_flight_stay_within_the_budget() {
        let mut c = TailCache::new(1000);
        assert!(c.begin_fill(250) && c.begin_fill(250) && c.begin_fill(250) && c.begin_fill(250));
        assert!(!c.begin_fill(1), "the budget is reserved");
        c.end_fill(250);
        assert!(c.begin_fill(250));
        assert!(
            !c.begin_fill(251 + 750),
            "never more than an entry may hold"
        );
    }

    proptest! {
        /// Whatever the sequence of inserts and look-ups, the bytes held never exceed the
        /// budget, and a hit returns exactly what was inserted last for that key.
        #[test]
        fn bounded_and_exact(ops in proptest::collection::vec((0u8..8, 1usize..400, any::<bool>()), 1..200)) {
            let mut c = TailCache::new(1000);
            let mut last: HashMap<String, (usize, u8)> = HashMap::new();
            for (i, (k, len, insert)) in ops.into_iter().enumerate() {
                let key = format!("k{k}");
                if insert {
                    let fill = i as u8;
                    c.insert(&seg(&key, "e", len), data(len, fill));
                    if c.admits(len as u64) {
                        last.insert(key.clone(), (len, fill));
                    }
                } else if let Some((l, fill)) = last.get(&key) {
                    if let Some(b) = c.get(&seg(&key, "e", *l)) {
                        prop_assert_eq!(b.len(), *l);
                        prop_assert!(b.iter().all(|x| x == fill));
                    }
                }
                prop_assert!(c.used() <= 1000);
                let held: u64 = c.entries.values().map(|e| e.bytes.len() as u64).sum();
                prop_assert_eq!(held, c.used());
                prop_assert_eq!(c.entries.len(), c.order.len());
            }
        }
    }
}
