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

/// Appends `n` in decimal to `out`, without the formatting machinery of `write!`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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

    #[test]
    fn decimals_are_written_as_format_would() {
        for n in [0, 1, 9, 10, 99, 100, 4095, 1 << 32, u64::MAX - 1, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn a_written_decimal_reads_back(n: u64) {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            proptest::prop_assert_eq!(decimal(&out), Some(n));
            proptest::prop_assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
