//! HTTP/1.x for the client side, sans-IO: request heads in, response heads out.

pub mod chunked;
pub mod date;
pub mod request;
pub mod response;

/// HTTP optional whitespace (spaces and tabs) trimmed from both ends of a field value.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// A non-empty run of ASCII digits as a number; `None` past `u64::MAX`.
pub(crate) fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_digits() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
        assert_eq!(decimal(b"007"), Some(7));
        for bad in [&b""[..], b"+1", b"1 ", b"-0", b"1e3"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }
}
