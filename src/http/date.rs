//! IMF-fixdate (RFC 9110 §5.6.7) for `Date` and `Last-Modified`, the current one cached per
//! second per thread so a response head costs no formatting.

use std::cell::Cell;
use std::time::UNIX_EPOCH;

thread_local! {
    static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    /// The last `Last-Modified` formatted: hot objects share one.
    static LAST: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// Formats Unix seconds as `Sun, 06 Nov 1994 08:49:37 GMT`, without allocating (years past
/// 9999 wrap).
pub fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    let (y, mo, d, h, mi, s) = civil(secs);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(secs / 86_400 % 7) as usize]);
    out[8..11].copy_from_slice(month_name(mo).as_bytes());
    put_digits(&mut out[5..7], u64::from(d));
    put_digits(&mut out[12..16], y.rem_euclid(10_000) as u64);
    put_digits(&mut out[17..19], u64::from(h));
    put_digits(&mut out[20..22], u64::from(mi));
    put_digits(&mut out[23..25], u64::from(s));
    out
}

/// ISO 8601 basic format in UTC, `YYYYMMDDTHHMMSSZ` (SigV4's `x-amz-date`), without
/// allocating (years past 9999 wrap).
pub fn iso8601_basic(secs: u64) -> [u8; 16] {
    let (y, mo, d, h, mi, s) = civil(secs);
    let mut out = *b"00000000T000000Z";
    put_digits(&mut out[0..4], y.rem_euclid(10_000) as u64);
    put_digits(&mut out[4..6], u64::from(mo));
    put_digits(&mut out[6..8], u64::from(d));
    put_digits(&mut out[9..11], u64::from(h));
    put_digits(&mut out[11..13], u64::from(mi));
    put_digits(&mut out[13..15], u64::from(s));
    out
}

/// `v` in decimal, zero-padded to fill `out` (its high digits cut if it does not fit).
fn put_digits(out: &mut [u8], v: u64) {
    let mut v = v;
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Calls `f` with the current time as IMF-fixdate, formatted at most once a second on each
/// thread. The second comes from the kernel's coarse clock, as nginx's cached time.
pub fn with_now<R>(f: impl FnOnce(&[u8; 29]) -> R) -> R {
    let secs = crate::timer::wall_clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (at, mut text) = CACHED.get();
    if at != secs {
        text = imf_fixdate(secs);
        CACHED.set((secs, text));
    }
    f(&text)
}

/// Calls `f` with `secs` as IMF-fixdate; the last one formatted is kept on each thread.
pub fn with_fixdate<R>(secs: u64, f: impl FnOnce(&[u8; 29]) -> R) -> R {
    let (at, mut text) = LAST.get();
    if at != secs {
        text = imf_fixdate(secs);
        LAST.set((secs, text));
    }
    f(&text)
}

/// The current time as IMF-fixdate.
pub fn now() -> String {
    with_now(|text| String::from_utf8_lossy(text).into_owned())
}

/// Unix seconds → (year, month, day, hour, minute, second) in UTC (H. Hinnant's
/// civil-from-days).
pub fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-25T10:00:00Z`
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, h, mi, s) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// nginx's `$time_local` in UTC: `25/Nov/2026:10:00:00 +0000`.
pub fn time_local(secs: u64) -> String {
    let (y, m, d, h, mi, s) = civil(secs);
    let month = month_name(m);
    format!("{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{s:02} +0000")
}

/// `Jan` for 1 … `Dec` for 12.
fn month_name(month: u32) -> &'static str {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("Jan")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_formats() {
        assert_eq!(rfc3339(1_795_600_800), "2026-11-25T10:00:00Z");
        assert_eq!(rfc3339(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(time_local(784_111_777), "06/Nov/1994:08:49:37 +0000");
    }

    /// [`imf_fixdate`] as text.
    fn imf(secs: u64) -> String {
        String::from_utf8(imf_fixdate(secs).to_vec()).unwrap()
    }

    #[test]
    fn formats_rfc_example() {
        assert_eq!(imf(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(now().len(), 29);
    }

    #[test]
    fn iso8601_basic_is_fixed_width() {
        assert_eq!(&iso8601_basic(0), b"19700101T000000Z");
        assert_eq!(&iso8601_basic(1_369_353_600), b"20130524T000000Z");
        assert_eq!(&iso8601_basic(4_102_444_799), b"20991231T235959Z");
    }

    proptest::proptest! {
        /// The same text as httpdate's formatter, for any time up to 9999.
        #[test]
        fn matches_httpdate(secs in 0u64..253_402_300_800) {
            let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            proptest::prop_assert_eq!(imf(secs), httpdate::fmt_http_date(t));
        }
    }
}
