//! (Composite, byte range) → the ordered upstream fetches that produce it. Each fetch lies
//! inside one segment; zero-length segments produce none. Pure arithmetic, all checked.
#![deny(clippy::arithmetic_side_effects)]

use super::composite::Composite;
use super::range::ByteRange;

/// Bytes `[start, end)` of segment `segment`'s S3 object (absolute object positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub segment: usize,
    pub start: u64,
    pub end: u64,
}

impl Fetch {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The fetches covering `range` of `c`, in order. `range` must lie inside `c` (the range
/// parser guarantees it); anything outside is simply not produced.
pub fn fetches(c: &Composite, range: ByteRange) -> impl Iterator<Item = Fetch> + '_ {
    c.segments()
        .iter()
        .enumerate()
        .scan(0u64, move |seg_start, (i, s)| {
            // Invariant of Composite: these sums do not overflow; saturate to stay total anyway.
            let start_here = *seg_start;
            let seg_end = start_here.saturating_add(s.length);
            *seg_start = seg_end;
            let lo = range.start.max(start_here);
            let hi = range.end.min(seg_end);
            let start = s.offset.saturating_add(lo.saturating_sub(start_here));
            Some((lo < hi).then(|| Fetch {
                segment: i,
                start,
                end: start.saturating_add(hi.saturating_sub(lo)),
            }))
        })
        .flatten()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::object::composite::Segment;

    fn composite() -> Composite {
        let seg = |key: &str, offset, length| Segment {
            key: key.into(),
            offset,
            length,
            etag: "\"e\"".into(),
        };
        // head: bytes 100..1100 of "h"; an empty segment; tail: bytes 0..50 of "t".
        Composite::derived(
            vec![seg("h", 100, 1000), seg("z", 0, 0), seg("t", 0, 50)],
            0,
            "x".into(),
        )
        .unwrap()
    }

    fn f(segment: usize, start: u64, end: u64) -> Fetch {
        Fetch {
            segment,
            start,
            end,
        }
    }

    #[test]
    fn ranges_map_to_segment_fetches() {
        let c = composite();
        let r = |start, end| ByteRange { start, end };
        let cases = [
            (r(0, 1050), vec![f(0, 100, 1100), f(2, 0, 50)]),
            (r(0, 1), vec![f(0, 100, 101)]),
            (r(999, 1001), vec![f(0, 1099, 1100), f(2, 0, 1)]),
            (r(1000, 1050), vec![f(2, 0, 50)]),
            (r(1049, 1050), vec![f(2, 49, 50)]),
            (r(500, 600), vec![f(0, 600, 700)]),
        ];
        for (range, want) in cases {
            assert_eq!(fetches(&c, range).collect::<Vec<_>>(), want, "{range:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fetch_lengths_sum_to_the_range(a in 0u64..1050, b in 0u64..1050) {
                let (start, end) = (a.min(b), a.max(b) + 1);
                let fs: Vec<Fetch> = fetches(&composite(), ByteRange { start, end }).collect();
                prop_assert_eq!(fs.iter().map(Fetch::len).sum::<u64>(), end - start);
                prop_assert!(fs.iter().all(|f| !f.is_empty()));
            }
        }
    }
}
