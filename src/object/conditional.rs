//! Preconditions (RFC 9110 §13) evaluated in the order of §13.2.2: If-Match, then
//! If-Unmodified-Since, then If-None-Match, then If-Modified-Since; If-Range last, deciding
//! whether a Range is honoured. Returns outcomes, never errors: an unparsable date is ignored
//! as the RFC says.

use std::time::UNIX_EPOCH;

#[derive(Debug, Default, Clone, Copy)]
pub struct Preconditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve; `honour_range` is false when If-Range did not match.
    Proceed { honour_range: bool },
    /// 304 (only GET and HEAD reach this server's evaluation).
    NotModified,
    /// 412.
    Failed,
}

/// `etag` is the representation's strong ETag, `last_modified` its time in Unix seconds.
pub fn evaluate(p: &Preconditions<'_>, etag: &str, last_modified: u64) -> Outcome {
    // Step 1 and 2.
    if let Some(list) = p.if_match {
        if !list_matches(list, etag, false) {
            return Outcome::Failed;
        }
    } else if let Some(date) = p.if_unmodified_since.and_then(http_date) {
        if last_modified > date {
            return Outcome::Failed;
        }
    }
    // Step 3 and 4.
    if let Some(list) = p.if_none_match {
        if list_matches(list, etag, true) {
            return Outcome::NotModified;
        }
    } else if let Some(date) = p.if_modified_since.and_then(http_date) {
        if last_modified <= date {
            return Outcome::NotModified;
        }
    }
    // Step 5: RFC 9110 §13.1.5, a strong ETag compared strongly, or an exact date.
    let honour_range = match p.if_range.map(str::trim) {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) if v.starts_with("W/") => false,
        Some(v) => http_date(v) == Some(last_modified),
    };
    Outcome::Proceed { honour_range }
}

/// `*` or a comma-separated list of entity tags; `weak` selects the weak comparison
/// (If-None-Match), otherwise the strong one (If-Match). Malformed members never match.
fn list_matches(list: &str, etag: &str, weak: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let (is_weak, tag_start) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if !tag_start.starts_with('"') {
            return false;
        }
        let Some(close) = tag_start[1..].find('"') else {
            return false;
        };
        let tag = &tag_start[..close + 2];
        if tag == ours && (weak || !is_weak) {
            return true;
        }
        rest = &tag_start[close + 2..];
    }
}

fn http_date(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Failed, NotModified, Proceed};

    const ETAG: &str = "\"tg-1\"";
    /// Wed, 25 Nov 2026 10:00:00 GMT
    const LM: u64 = 1_795_600_800;
    const AT: &str = "Wed, 25 Nov 2026 10:00:00 GMT";
    const BEFORE: &str = "Wed, 25 Nov 2026 09:59:59 GMT";
    const AFTER: &str = "Wed, 25 Nov 2026 10:00:01 GMT";

    fn eval(p: Preconditions<'_>) -> Outcome {
        evaluate(&p, ETAG, LM)
    }

    const GO: Outcome = Proceed { honour_range: true };
    const NO_RANGE: Outcome = Proceed {
        honour_range: false,
    };

    #[test]
    fn rfc_9110_order_and_comparisons() {
        let p = Preconditions::default;
        let cases: Vec<(Preconditions<'_>, Outcome)> = vec![
            (p(), GO),
            (
                Preconditions {
                    if_match: Some("\"tg-1\""),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_match: Some("\"x\", \"tg-1\""),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_match: Some("*"),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_match: Some("W/\"tg-1\""),
                    ..p()
                },
                Failed,
            ),
            (
                Preconditions {
                    if_match: Some("\"x\""),
                    ..p()
                },
                Failed,
            ),
            (
                Preconditions {
                    if_match: Some("garbage"),
                    ..p()
                },
                Failed,
            ),
            (
                Preconditions {
                    if_unmodified_since: Some(AT),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_unmodified_since: Some(BEFORE),
                    ..p()
                },
                Failed,
            ),
            (
                Preconditions {
                    if_unmodified_since: Some("not a date"),
                    ..p()
                },
                GO,
            ),
            // If-Match wins over If-Unmodified-Since
            (
                Preconditions {
                    if_match: Some("\"tg-1\""),
                    if_unmodified_since: Some(BEFORE),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_none_match: Some("\"tg-1\""),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_none_match: Some("W/\"tg-1\""),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_none_match: Some("*"),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_none_match: Some("\"x\""),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_modified_since: Some(AT),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_modified_since: Some(AFTER),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_modified_since: Some(BEFORE),
                    ..p()
                },
                GO,
            ),
            // If-None-Match wins over If-Modified-Since
            (
                Preconditions {
                    if_none_match: Some("\"x\""),
                    if_modified_since: Some(AT),
                    ..p()
                },
                GO,
            ),
            // 412 comes before 304
            (
                Preconditions {
                    if_match: Some("\"x\""),
                    if_none_match: Some("\"tg-1\""),
                    ..p()
                },
                Failed,
            ),
            (
                Preconditions {
                    if_range: Some("\"tg-1\""),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_range: Some("\"x\""),
                    ..p()
                },
                NO_RANGE,
            ),
            (
                Preconditions {
                    if_range: Some("W/\"tg-1\""),
                    ..p()
                },
                NO_RANGE,
            ),
            (
                Preconditions {
                    if_range: Some(AT),
                    ..p()
                },
                GO,
            ),
            (
                Preconditions {
                    if_range: Some(AFTER),
                    ..p()
                },
                NO_RANGE,
            ),
            (
                Preconditions {
                    if_range: Some("junk"),
                    ..p()
                },
                NO_RANGE,
            ),
            (
                Preconditions {
                    if_modified_since: Some("Wednesday, 25-Nov-26 10:00:00 GMT"),
                    ..p()
                },
                NotModified,
            ),
            (
                Preconditions {
                    if_modified_since: Some("Wed Nov 25 10:00:00 2026"),
                    ..p()
                },
                NotModified,
            ),
        ];
        for (i, (pre, want)) in cases.into_iter().enumerate() {
            assert_eq!(eval(pre), want, "case {i}: {pre:?}");
        }
    }
}
