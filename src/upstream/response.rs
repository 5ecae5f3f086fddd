//! Sans-IO upstream response heads: bytes → [`UpstreamHead`], and the checks a segment
//! response must pass before one byte of it is relayed (nginx's slice rule): `206`, exactly
//! the requested `Content-Range`, the manifest's ETag, the expected length.

use crate::http::{decimal, trim_ows as trim};

/// Upstream heads larger than this are refused.
pub const MAX_UPSTREAM_HEAD: usize = 16 * 1024;

/// A parsed head. Its text fields are [`Span`]s of the buffer it was parsed from, so
/// parsing allocates nothing; [`UpstreamHead::meta`] copies out what must outlive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHead {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<Span>,
    pub etag: Option<Span>,
    pub last_modified: Option<Span>,
    pub content_type: Option<Span>,
    /// False when the server said `Connection: close` or spoke HTTP/1.0 without keep-alive.
    pub keep_alive: bool,
    pub chunked: bool,
    /// Bytes of the input that belong to the head.
    pub len: usize,
}

/// Where a header value (trimmed) lies in the parsed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// The value in `buf` (the buffer the head was parsed from); `None` if it is not UTF-8.
    pub fn text(self, buf: &[u8]) -> Option<&str> {
        std::str::from_utf8(buf.get(self.start..self.end)?).ok()
    }
}

/// A head's status, length, validators and type as owned values, for what outlives the
/// buffer it was read into (object metadata, pack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub status: u16,
    pub content_length: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_type: Option<String>,
}

impl UpstreamHead {
    /// The fields to keep, copied out of `buf` (the buffer the head was parsed from).
    pub fn meta(&self, buf: &[u8]) -> Meta {
        let owned = |f: Option<Span>| f.and_then(|s| s.text(buf)).map(str::to_string);
        Meta {
            status: self.status,
            content_length: self.content_length,
            etag: owned(self.etag),
            last_modified: owned(self.last_modified),
            content_type: owned(self.content_type),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(UpstreamHead),
    Partial,
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP, or beyond [`MAX_UPSTREAM_HEAD`].
    Malformed(&'static str),
    /// A status other than the one asked for.
    Status(u16),
    /// 206 but not the bytes, validator or length that were asked for.
    Mismatch(&'static str),
}

pub fn parse(buf: &[u8]) -> Result<Parsed, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_UPSTREAM_HEAD => {
            return Err(Refusal::Malformed("upstream head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(Refusal::Malformed("malformed upstream head")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(Refusal::Malformed("malformed upstream status line"));
    };
    let mut head = UpstreamHead {
        status,
        content_length: None,
        content_range: None,
        etag: None,
        last_modified: None,
        content_type: None,
        keep_alive: minor == 1,
        chunked: false,
        len,
    };
    let base = buf.as_ptr() as usize;
    for h in resp.headers.iter() {
        let value = trim(h.value);
        // httparse hands out slices of `buf`: the value's place in it is its span.
        let start = if value.is_empty() {
            0
        } else {
            (value.as_ptr() as usize).saturating_sub(base)
        };
        let span = Some(Span {
            start,
            end: start + value.len(),
        });
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = decimal(value).ok_or(Refusal::Malformed("invalid upstream Content-Length"))?;
            if head.content_length.is_some_and(|c| c != n) {
                return Err(Refusal::Malformed("differing upstream Content-Length"));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("content-range") {
            head.content_range = span;
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = span;
        } else if name.eq_ignore_ascii_case("last-modified") {
            head.last_modified = span;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = span;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let has = |token: &[u8]| {
                value
                    .split(|&b| b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(token))
            };
            if has(b"close") {
                head.keep_alive = false;
            } else if has(b"keep-alive") {
                head.keep_alive = true;
            }
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(Refusal::Malformed(
            "upstream sent Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Parsed::Complete(head))
}

/// Checks a response to `Range: bytes=first-last` with `If-Match: etag`; `buf` is the
/// buffer the head was parsed from.
pub fn verify_segment(
    head: &UpstreamHead,
    buf: &[u8],
    first: u64,
    last: u64,
    etag: &str,
) -> Result<(), Refusal> {
    if head.status != 206 {
        return Err(Refusal::Status(head.status));
    }
    let range = head
        .content_range
        .and_then(|s| s.text(buf))
        .ok_or(Refusal::Mismatch("206 without Content-Range"))?;
    let (span, total) = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .ok_or(Refusal::Mismatch("malformed Content-Range"))?;
    // Exactly the digits asked for: no sign, no leading zeros, no spaces.
    let exact = |text: &str, n: u64| {
        decimal(text.as_bytes()) == Some(n) && (text == "0" || !text.starts_with('0'))
    };
    if !span
        .split_once('-')
        .is_some_and(|(a, b)| exact(a, first) && exact(b, last))
    {
        return Err(Refusal::Mismatch(
            "Content-Range is not the requested range",
        ));
    }
    if total != "*" && decimal(total.as_bytes()).is_none_or(|t| t <= last) {
        return Err(Refusal::Mismatch(
            "Content-Range total does not cover the range",
        ));
    }
    if head.etag.and_then(|s| s.text(buf)) != Some(etag) {
        return Err(Refusal::Mismatch("ETag differs from the manifest's"));
    }
    let want = last.checked_sub(first).and_then(|n| n.checked_add(1));
    if head.chunked || head.content_length != want {
        return Err(Refusal::Mismatch("length is not the requested range's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> UpstreamHead {
        match parse(raw.as_bytes()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    const OK: &str = "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 100-109/5000\r\nETag: \"abc\"\r\n\r\nBODY";

    #[test]
    fn parses_fields_and_length() {
        let h = head(OK);
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(10));
        assert_eq!(h.len, OK.len() - 4);
        assert!(h.keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Foo, Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection:  CLOSE \r\n\r\n").keep_alive);
        let raw =
            "HTTP/1.1 200 OK\r\nETag:  \"e\" \t\r\nLast-Modified: \r\nContent-Type: a/b\r\n\r\n";
        let meta = head(raw).meta(raw.as_bytes());
        assert_eq!(meta.etag.as_deref(), Some("\"e\""));
        assert_eq!(meta.last_modified.as_deref(), Some(""));
        assert_eq!(meta.content_type.as_deref(), Some("a/b"));
        assert_eq!(meta.content_length, None);
        assert_eq!(parse(b"HTTP/1.1 206 Part"), Ok(Parsed::Partial));
    }

    #[test]
    fn segment_checks_are_exact() {
        assert_eq!(
            verify_segment(&head(OK), OK.as_bytes(), 100, 109, "\"abc\""),
            Ok(())
        );
        let cases = [
            (
                OK.replace("206 Partial Content", "200 OK"),
                Refusal::Status(200),
            ),
            (
                OK.replace("\"abc\"", "\"abd\""),
                Refusal::Mismatch("ETag differs from the manifest's"),
            ),
            (
                OK.replace("100-109", "100-110"),
                Refusal::Mismatch("Content-Range is not the requested range"),
            ),
            (
                OK.replace("/5000", "/109"),
                Refusal::Mismatch("Content-Range total does not cover the range"),
            ),
            (
                OK.replace("100-109", "0100-109"),
                Refusal::Mismatch("Content-Range is not the requested range"),
            ),
            (
                OK.replace("100-109", "+100-109"),
                Refusal::Mismatch("Content-Range is not the requested range"),
            ),
            (
                OK.replace("100-109", "100-109-"),
                Refusal::Mismatch("Content-Range is not the requested range"),
            ),
            (
                OK.replace("bytes 100", "items 100"),
                Refusal::Mismatch("malformed Content-Range"),
            ),
            (
                OK.replace("Content-Length: 10", "Content-Length: 11"),
                Refusal::Mismatch("length is not the requested range's"),
            ),
            (
                OK.replace("Content-Range: bytes 100-109/5000\r\n", ""),
                Refusal::Mismatch("206 without Content-Range"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                verify_segment(&head(&raw), raw.as_bytes(), 100, 109, "\"abc\""),
                Err(want),
                "{raw}"
            );
        }
        let star = OK.replace("/5000", "/*");
        assert_eq!(
            verify_segment(&head(&star), star.as_bytes(), 100, 109, "\"abc\""),
            Ok(())
        );
        let zero = OK.replace("100-109", "0-9");
        assert_eq!(
            verify_segment(&head(&zero), zero.as_bytes(), 0, 9, "\"abc\""),
            Ok(())
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse(b"NOT HTTP\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(parse(&vec![b'a'; MAX_UPSTREAM_HEAD]).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn same_answer_whole_and_split(cut in 0usize..200) {
                let whole = parse(OK.as_bytes());
                let cut = cut.min(OK.len());
                let first = parse(&OK.as_bytes()[..cut]);
                prop_assert!(first == Ok(Parsed::Partial) || first == whole);
            }

            #[test]
            fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&raw);
            }
        }
    }
}
