//! The `tailgate/1` manifest (SPEC §2): JSON → one [`Composite`] per variant, plus the
//! bounded per-worker cache that holds parsed manifests (and plain objects' metadata) for
//! `manifest_cache_ttl`. Parsing is pure; fetching is `upstream`'s job.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::timer::Tick;

use serde::Deserialize;

use super::composite::{Composite, Segment};

/// Manifests larger than this are refused rather than buffered.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Manifest {
    variants: HashMap<String, Rc<Composite>>,
}

#[derive(Deserialize)]
struct RawManifest {
    format: String,
    content_type: Option<String>,
    last_modified: String,
    head: RawSegment,
    tails: HashMap<String, RawSegment>,
}

#[derive(Deserialize)]
struct RawSegment {
    key: String,
    offset: u64,
    length: u64,
    etag: String,
}

impl RawSegment {
    fn into_segment(self) -> Segment {
        Segment {
            key: self.key,
            offset: self.offset,
            length: self.length,
            etag: self.etag,
        }
    }
}

impl Manifest {
    /// Parses and checks a manifest; the error says precisely what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
        if raw.format != "tailgate/1" {
            return Err(format!("manifest: unknown format {:?}", raw.format));
        }
        let last_modified = parse_rfc3339(&raw.last_modified)
            .ok_or_else(|| format!("manifest: invalid last_modified {:?}", raw.last_modified))?;
        let content_type = raw
            .content_type
            .unwrap_or_else(|| "application/octet-stream".to_string());
        if content_type.bytes().any(|b| b.is_ascii_control()) {
            return Err("manifest: control bytes in content_type".into());
        }
        for (name, s) in std::iter::once(("head", &raw.head))
            .chain(raw.tails.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if s.key.is_empty() || s.key.bytes().any(|b| b.is_ascii_control()) {
                return Err(format!("manifest: segment {name:?} has an invalid key"));
            }
        }
        let head = raw.head.into_segment();
        let mut variants = HashMap::with_capacity(raw.tails.len());
        for (variant, tail) in raw.tails {
            let composite = Composite::derived(
                vec![head.clone(), tail.into_segment()],
                last_modified,
                content_type.clone(),
            )
            .map_err(|e| format!("manifest: variant {variant:?}: {e}"))?;
            variants.insert(variant, Rc::new(composite));
        }
        Ok(Manifest { variants })
    }

    pub fn variant(&self, name: &str) -> Option<Rc<Composite>> {
        self.variants.get(name).cloned()
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → seconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let t = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// === cache ===

/// What the cache holds for a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<V> {
    /// Younger than half its time to live.
    Fresh(V),
    /// Still within its time to live, but past half of it: time to fetch the next one
    /// (while the others keep using this one), so that under steady traffic entries are
    /// replaced before they expire and no request waits for a fetch.
    Aging(V),
}

/// A bounded map with a time-to-live, owned by one worker (no locks).
pub struct Cache<V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, (Tick, V)>,
}

impl<V: Clone> Cache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Cache {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The entry for `key` unless it has expired.
    pub fn lookup(&self, key: &str, now: Tick) -> Option<Lookup<V>> {
        let (at, v) = self.entries.get(key)?;
        let age = now.saturating_duration_since(*at);
        if age >= self.ttl {
            None
        } else if age < self.ttl / 2 {
            Some(Lookup::Fresh(v.clone()))
        } else {
            Some(Lookup::Aging(v.clone()))
        }
    }

    pub fn insert(&mut self, key: String, value: V, now: Tick) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (now, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "format": "tailgate/1",
        "content_type": "application/vnd.android.package-archive",
        "last_modified": "2026-11-25T10:00:00Z",
        "head":  { "key": "apps/foo/base.apk", "offset": 0, "length": 1000, "etag": "\"9b2c\"" },
        "tails": {
            "huawei": { "key": "apps/foo/tails/huawei", "offset": 0, "length": 48, "etag": "\"77ab\"", "sha256": "00" },
            "empty": { "key": "apps/foo/tails/empty", "offset": 0, "length": 0, "etag": "\"d41d\"" }
        }
    }"#;

    #[test]
    fn parses_variants_into_composites() {
        let m = Manifest::parse(GOOD.as_bytes()).unwrap();
        let c = m.variant("huawei").unwrap();
        assert_eq!(c.len(), 1048);
        assert_eq!(c.segments().len(), 2);
        assert_eq!(c.segments()[1].etag, "\"77ab\"");
        assert_eq!(c.last_modified(), 1_795_600_800);
        assert_eq!(c.content_type(), "application/vnd.android.package-archive");
        assert_eq!(m.variant("empty").unwrap().len(), 1000);
        assert!(m.variant("nosuch").is_none());
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            (GOOD.replace("tailgate/1", "tailgate/2"), "unknown format"),
            (
                GOOD.replace("2026-11-25T10:00:00Z", "yesterday"),
                "invalid last_modified",
            ),
            (GOOD.replace(r#"\"9b2c\""#, "9b2c"), "invalid etag"),
            (
                GOOD.replace("\"length\": 1000", "\"length\": -1"),
                "manifest:",
            ),
            (
                GOOD.replace(
                    "\"offset\": 0, \"length\": 1000",
                    "\"offset\": 18446744073709551615, \"length\": 1000",
                ),
                "overflows",
            ),
            (
                GOOD.replace("\"key\": \"apps/foo/base.apk\"", "\"key\": \"\""),
                "invalid key",
            ),
            ("[]".to_string(), "manifest:"),
            ("{".to_string(), "manifest:"),
        ];
        for (src, want) in cases {
            let err = Manifest::parse(src.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2026-11-25T10:00:00.123Z"),
            Some(1_795_600_800)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T12:00:00+02:00"),
            Some(1_795_600_800)
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-25",
            "1969-12-31T23:59:59Z",
            "2026-11-25T10:00:00",
            "2026-11-25T10:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Tick::now();
        let mut c = Cache::new(Duration::from_secs(5), 2);
        c.insert("a".into(), 1, t0);
        c.insert("b".into(), 2, t0 + Duration::from_secs(1));
        c.insert("c".into(), 3, t0 + Duration::from_secs(2));
        assert_eq!(
            c.lookup("a", t0 + Duration::from_secs(2)),
            None,
            "oldest evicted"
        );
        let at = |s| t0 + Duration::from_millis(s);
        assert_eq!(c.lookup("c", at(2000)), Some(Lookup::Fresh(3)));
        assert_eq!(c.lookup("c", at(4499)), Some(Lookup::Fresh(3)));
        assert_eq!(
            c.lookup("c", at(4500)),
            Some(Lookup::Aging(3)),
            "half its TTL"
        );
        assert_eq!(c.lookup("c", at(6999)), Some(Lookup::Aging(3)));
        assert_eq!(c.lookup("c", at(7000)), None, "expired");
        assert!(c.entries.len() <= 2);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = Manifest::parse(&raw);
            }

            #[test]
            fn mutated_manifest_never_panics(pos in 0usize..600, byte in any::<u8>()) {
                let mut raw = GOOD.as_bytes().to_vec();
                let i = pos % raw.len();
                raw[i] = byte;
                let _ = Manifest::parse(&raw);
            }
        }
    }
}
