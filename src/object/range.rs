//! `Range` → what to serve (RFC 9110 §14), nginx's tri-state: serve these parts, answer 416,
//! or ignore the header and send the whole representation. Ranges are half-open `u64`
//! intervals; every sum is checked, and positions past 2^64 clamp instead of failing.
#![deny(clippy::arithmetic_side_effects)]

/// A half-open byte interval `[start, end)` with `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Serve the whole representation with 200: no Range, bad syntax, or a refused shape.
    Ignore,
    /// Serve this one part (a single range, or several that merged into one).
    One(ByteRange),
    /// Serve these parts, in ascending order, disjoint and not adjacent; at least two.
    Parts(Vec<ByteRange>),
    /// No part overlaps the representation: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses `header` against a representation of `len` bytes.
///
/// More than `max_ranges` parts, or two satisfiable parts that overlap, make the header
/// ignored (the CVE-2011-3192 defence; nginx serves them, we send 200). Adjacent parts are
/// coalesced. Unsatisfiable parts are dropped; if none is left the answer is 416.
pub fn parse(header: &str, len: u64, max_ranges: usize) -> RangeOutcome {
    // RFC 9110 §14.1: `bytes` is case-insensitive; a unit we do not know means ignore.
    let Some((unit, set)) = header.split_once('=') else {
        return RangeOutcome::Ignore;
    };
    if !unit.trim_matches([' ', '\t']).eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Ignore;
    }
    // The common case, one range, is answered without building a list.
    if !set.contains(',') && max_ranges > 0 {
        let Some(part) = parse_spec(set.trim_matches([' ', '\t'])) else {
            return RangeOutcome::Ignore;
        };
        return resolve(part, len).map_or(RangeOutcome::Unsatisfiable, RangeOutcome::One);
    }
    let mut parts = Vec::new();
    let mut count = 0usize;
    for spec in set.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        count = count.saturating_add(1);
        if count > max_ranges {
            return RangeOutcome::Ignore;
        }
        let Some(part) = parse_spec(spec) else {
            return RangeOutcome::Ignore;
        };
        if let Some(r) = resolve(part, len) {
            parts.push(r);
        }
    }
    if parts.is_empty() {
        return RangeOutcome::Unsatisfiable;
    }
    parts.sort_by_key(|r| r.start);
    // Merged in place: `last` is the part kept before `r`.
    let mut overlap = false;
    parts.dedup_by(|r, last| {
        overlap |= r.start < last.end;
        let adjacent = r.start == last.end;
        if adjacent {
            last.end = r.end;
        }
        adjacent
    });
    if overlap {
        return RangeOutcome::Ignore;
    }
    match parts.as_slice() {
        [one] => RangeOutcome::One(*one),
        _ => RangeOutcome::Parts(parts),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `a-b` (inclusive) or `a-` (`None`).
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// One `range-spec`; `None` for invalid syntax (which makes the whole header ignored).
fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    if last.is_empty() {
        return Some(Spec::From(first, None));
    }
    let last = digits(last)?;
    // RFC 9110 §14.1.1: a last-pos below first-pos makes the range-spec invalid.
    (last >= first).then_some(Spec::From(first, Some(last)))
}

/// Decimal digits only (no sign, no space); values past u64 clamp to u64::MAX.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// The satisfiable part of `spec` against `len` bytes, or `None`.
fn resolve(spec: Spec, len: u64) -> Option<ByteRange> {
    match spec {
        Spec::From(first, _) if first >= len => None,
        Spec::From(first, last) => {
            let end = match last {
                Some(last) => last.saturating_add(1).min(len),
                None => len,
            };
            Some(ByteRange { start: first, end })
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(_) if len == 0 => None,
        Spec::Suffix(n) => Some(ByteRange {
            start: len.saturating_sub(n),
            end: len,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn parts(v: &[(u64, u64)]) -> RangeOutcome {
        match v {
            [(s, e)] => RangeOutcome::One(r(*s, *e)),
            _ => RangeOutcome::Parts(v.iter().map(|&(s, e)| r(s, e)).collect()),
        }
    }

    #[test]
    fn rfc_9110_and_nginx_cases() {
        use RangeOutcome::{Ignore, Unsatisfiable};
        let len = 10_000;
        let cases: Vec<(&str, RangeOutcome)> = vec![
            // RFC 9110 §14.1.2 examples
            ("bytes=0-499", parts(&[(0, 500)])),
            ("bytes=500-999", parts(&[(500, 1000)])),
            ("bytes=-500", parts(&[(9500, 10000)])),
            ("bytes=9500-", parts(&[(9500, 10000)])),
            ("bytes=0-0,-1", parts(&[(0, 1), (9999, 10000)])),
            ("bytes=500-600,601-999", parts(&[(500, 1000)])),
            ("bytes=500-700,601-999", Ignore),
            // shapes
            ("bytes=0-", parts(&[(0, 10000)])),
            ("bytes=9999-9999", parts(&[(9999, 10000)])),
            ("bytes=5000-99999", parts(&[(5000, 10000)])),
            ("bytes=-99999", parts(&[(0, 10000)])),
            ("BYTES = 1-2", parts(&[(1, 3)])),
            ("bytes= 1-2 , 4-5", parts(&[(1, 3), (4, 6)])),
            ("bytes=4-5,1-2", parts(&[(1, 3), (4, 6)])),
            // unsatisfiable
            ("bytes=10000-", Unsatisfiable),
            ("bytes=10000-20000", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=20000-,-0", Unsatisfiable),
            ("bytes=20000-,0-1", parts(&[(0, 2)])),
            // invalid syntax → ignore
            ("bytes=5-4", Ignore),
            ("bytes=abc", Ignore),
            ("bytes=", Ignore),
            ("bytes=-", Ignore),
            ("bytes=0-5,", Ignore),
            ("bytes=+1-2", Ignore),
            ("bytes=1--2", Ignore),
            ("bytes=1-2-3", Ignore),
            ("items=0-5", Ignore),
            ("0-5", Ignore),
            ("bytes=0x1-2", Ignore),
            // past 2^64: clamp
            ("bytes=0-99999999999999999999999", parts(&[(0, 10000)])),
            ("bytes=-99999999999999999999999", parts(&[(0, 10000)])),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            (
                "bytes=18446744073709551615-18446744073709551615",
                Unsatisfiable,
            ),
        ];
        for (header, want) in cases {
            assert_eq!(parse(header, len, 16), want, "for {header:?}");
        }
    }

    #[test]
    fn too_many_parts_are_ignored() {
        let sixteen: Vec<String> = (0..16)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert!(
            matches!(parse(&format!("bytes={}", sixteen.join(",")), 1000, 16), RangeOutcome::Parts(p) if p.len() == 16)
        );
        let seventeen = format!("bytes={},500-501", sixteen.join(","));
        assert_eq!(parse(&seventeen, 1000, 16), RangeOutcome::Ignore);
    }

    #[test]
    fn empty_representation_has_no_satisfiable_range() {
        assert_eq!(parse("bytes=0-", 0, 16), RangeOutcome::Unsatisfiable);
        assert_eq!(parse("bytes=-5", 0, 16), RangeOutcome::Unsatisfiable);
    }

    #[test]
    fn huge_lengths_never_overflow() {
        assert_eq!(
            parse("bytes=0-18446744073709551614", u64::MAX, 16),
            parts(&[(0, u64::MAX)])
        );
        assert_eq!(
            parse("bytes=-1", u64::MAX, 16),
            parts(&[(u64::MAX - 1, u64::MAX)])
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parts_are_sorted_disjoint_and_inside(header in "bytes=[0-9, -]{0,40}", len in 0u64..5000) {
                let p = match parse(&header, len, 16) {
                    RangeOutcome::One(r) => vec![r],
                    RangeOutcome::Parts(p) => {
                        prop_assert!(p.len() >= 2);
                        p
                    }
                    _ => vec![],
                };
                {
                    for w in p.windows(2) {
                        prop_assert!(w[0].end < w[1].start);
                    }
                    for r in p {
                        prop_assert!(r.start < r.end && r.end <= len);
                    }
                }
            }

            #[test]
            fn any_text_never_panics(header in ".{0,64}", len in any::<u64>()) {
                let _ = parse(&header, len, 16);
            }
        }
    }
}
