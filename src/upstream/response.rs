//! Sans-IO upstream response heads: bytes → [`UpstreamHead`], and the checks a segment
//! response must pass before one byte of it is relayed (nginx's slice rule): `206`, exactly
//! the requested `Content-Range`, the manifest's ETag, the expected length.

/// Upstream heads larger than this are refused.
pub const MAX_UPSTREAM_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHead {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_type: Option<String>,
    /// False when the server said `Connection: close` or spoke HTTP/1.0 without keep-alive.
    pub keep_alive: bool,
    pub chunked: bool,
    /// Bytes of the input that belong to the head.
    pub len: usize,
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
    for h in resp.headers.iter() {
        let value = || String::from_utf8_lossy(h.value).trim().to_string();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = value();
            let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or(Refusal::Malformed("invalid upstream Content-Length"))?;
            if head.content_length.is_some_and(|c| c != n) {
                return Err(Refusal::Malformed("differing upstream Content-Length"));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("content-range") {
            head.content_range = Some(value());
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = Some(value());
        } else if name.eq_ignore_ascii_case("last-modified") {
            head.last_modified = Some(value());
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value().to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                head.keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
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

/// Checks a response to `Range: bytes=first-last` with `If-Match: etag`.
pub fn verify_segment(
    head: &UpstreamHead,
    first: u64,
    last: u64,
    etag: &str,
) -> Result<(), Refusal> {
    if head.status != 206 {
        return Err(Refusal::Status(head.status));
    }
    let range = head
        .content_range
        .as_deref()
        .ok_or(Refusal::Mismatch("206 without Content-Range"))?;
    let (span, total) = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .ok_or(Refusal::Mismatch("malformed Content-Range"))?;
    if span != format!("{first}-{last}") {
        return Err(Refusal::Mismatch(
            "Content-Range is not the requested range",
        ));
    }
    if total != "*" && total.parse::<u64>().map_or(true, |t| t <= last) {
        return Err(Refusal::Mismatch(
            "Content-Range total does not cover the range",
        ));
    }
    if head.etag.as_deref() != Some(etag) {
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
        assert_eq!(parse(b"HTTP/1.1 206 Part"), Ok(Parsed::Partial));
    }

    #[test]
    fn segment_checks_are_exact() {
        assert_eq!(verify_segment(&head(OK), 100, 109, "\"abc\""), Ok(()));
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
                verify_segment(&head(&raw), 100, 109, "\"abc\""),
                Err(want),
                "{raw}"
            );
        }
        assert_eq!(
            verify_segment(&head(&OK.replace("/5000", "/*")), 100, 109, "\"abc\""),
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
