//! A composite representation: ordered segments of S3 objects, its length, strong ETag,
//! Last-Modified and Content-Type. Built only by [`Composite::new`], which rejects segments
//! whose ranges overflow, so later code (plan, relay) can do plain arithmetic on them.

use sha2::{Digest, Sha256};

/// `[offset, offset + length)` of the S3 object `key` whose ETag is `etag` (quotes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: String,
    pub offset: u64,
    pub length: u64,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// Invariant: every `offset + length` fits in u64, and so does the sum of lengths.
    segments: Vec<Segment>,
    len: u64,
    etag: String,
    /// Seconds since the Unix epoch.
    last_modified: u64,
    content_type: String,
}

impl Composite {
    /// A composite whose ETag is derived from its segments, the same on every worker and
    /// restart: a strong `"tg-<hex>"` over each segment's key, range and ETag.
    pub fn derived(
        segments: Vec<Segment>,
        last_modified: u64,
        content_type: String,
    ) -> Result<Self, String> {
        let mut h = Sha256::new();
        for s in &segments {
            h.update(s.key.as_bytes());
            h.update([0]);
            h.update(s.offset.to_be_bytes());
            h.update(s.length.to_be_bytes());
            h.update(s.etag.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self::new(
            segments,
            format!("\"tg-{hex}\""),
            last_modified,
            content_type,
        )
    }

    /// A composite with a given strong ETag (a plain object keeps S3's own).
    pub fn new(
        segments: Vec<Segment>,
        etag: String,
        last_modified: u64,
        content_type: String,
    ) -> Result<Self, String> {
        let mut len: u64 = 0;
        for s in &segments {
            if s.offset.checked_add(s.length).is_none() {
                return Err(format!("segment \"{}\" range overflows", s.key));
            }
            if !is_strong_etag(&s.etag) {
                return Err(format!(
                    "segment \"{}\" has an invalid etag {:?}",
                    s.key, s.etag
                ));
            }
            len = len
                .checked_add(s.length)
                .ok_or_else(|| "composite length overflows".to_string())?;
        }
        Ok(Composite {
            segments,
            len,
            etag,
            last_modified,
            content_type,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    pub fn last_modified(&self) -> u64 {
        self.last_modified
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }
}

/// RFC 9110 §8.8.3: `"` etagc* `"`, etagc = %x21 / %x23-7E / obs-text.
pub fn is_strong_etag(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 2
        && b[0] == b'"'
        && b[b.len() - 1] == b'"'
        && b[1..b.len() - 1]
            .iter()
            .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(key: &str, offset: u64, length: u64) -> Segment {
        Segment {
            key: key.into(),
            offset,
            length,
            etag: "\"e\"".into(),
        }
    }

    #[test]
    fn derived_etag_is_stable_and_input_sensitive() {
        let a = Composite::derived(vec![seg("h", 0, 10), seg("t", 0, 5)], 0, "x".into()).unwrap();
        let b = Composite::derived(vec![seg("h", 0, 10), seg("t", 0, 5)], 0, "x".into()).unwrap();
        let c = Composite::derived(vec![seg("h", 0, 10), seg("t", 1, 5)], 0, "x".into()).unwrap();
        assert_eq!(a.etag(), b.etag());
        assert_ne!(a.etag(), c.etag());
        assert!(is_strong_etag(a.etag()));
        assert_eq!(a.len(), 15);
    }

    #[test]
    fn overflowing_segments_are_rejected() {
        assert!(Composite::derived(vec![seg("h", u64::MAX, 1)], 0, "x".into()).is_err());
        assert!(
            Composite::derived(vec![seg("h", 0, u64::MAX), seg("t", 0, 1)], 0, "x".into()).is_err()
        );
    }

    #[test]
    fn etags_must_be_strong_and_quoted() {
        for good in ["\"abc\"", "\"\"", "\"9b2c-3\""] {
            assert!(is_strong_etag(good), "{good}");
        }
        for bad in ["abc", "W/\"abc\"", "\"a\"b\"", "\"", "\"a\x01\""] {
            assert!(!is_strong_etag(bad), "{bad}");
        }
    }
}
