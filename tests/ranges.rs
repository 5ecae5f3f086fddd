//! The range and conditional matrix (RFC 9110 §13, §14): every case compared byte for byte
//! with the representation it must produce, through the real binary and a real S3.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const LM: &str = "Wed, 25 Nov 2026 10:00:00 GMT";

#[derive(Debug, Clone)]
enum Want {
    Full,
    /// Inclusive byte ranges, in response order.
    Parts(Vec<(u64, u64)>),
    Unsatisfiable,
    NotModified,
    Failed,
}

/// (name, request headers, expected outcome)
type Case = (String, Vec<(String, String)>, Want);

fn cases(etag: &str, h: u64, l: u64) -> Vec<Case> {
    use Want::*;
    let r = |spec: &str| vec![("Range".to_string(), spec.to_string())];
    let rh = |spec: &str, name: &str, value: &str| {
        vec![
            ("Range".to_string(), spec.to_string()),
            (name.to_string(), value.to_string()),
        ]
    };
    let p = |v: &[(u64, u64)]| Parts(v.to_vec());
    let sixteen: Vec<String> = (0..16)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let seventeen = format!("bytes={},5000-5001", sixteen.join(","));
    let sixteen_parts: Vec<(u64, u64)> = (0..16).map(|i| (i * 100, i * 100 + 9)).collect();
    let e = etag.to_string();
    vec![
        ("first byte".into(), r("bytes=0-0"), p(&[(0, 0)])),
        ("first 500".into(), r("bytes=0-499"), p(&[(0, 499)])),
        ("second 500".into(), r("bytes=500-999"), p(&[(500, 999)])),
        ("suffix 500".into(), r("bytes=-500"), p(&[(l - 500, l - 1)])),
        (
            "open-ended".into(),
            r(&format!("bytes={}-", l - 500)),
            p(&[(l - 500, l - 1)]),
        ),
        (
            "first and last".into(),
            r("bytes=0-0,-1"),
            p(&[(0, 0), (l - 1, l - 1)]),
        ),
        (
            "adjacent coalesce".into(),
            r("bytes=500-600,601-999"),
            p(&[(500, 999)]),
        ),
        ("overlap ignored".into(), r("bytes=500-700,601-999"), Full),
        (
            "the seam".into(),
            r(&format!("bytes={}-{}", h - 1, h)),
            p(&[(h - 1, h)]),
        ),
        (
            "exactly the tail".into(),
            r(&format!("bytes={h}-")),
            p(&[(h, l - 1)]),
        ),
        (
            "suffix = tail".into(),
            r(&format!("bytes=-{}", l - h)),
            p(&[(h, l - 1)]),
        ),
        (
            "suffix one into head".into(),
            r(&format!("bytes=-{}", l - h + 1)),
            p(&[(h - 1, l - 1)]),
        ),
        ("zero-open is 206".into(), r("bytes=0-"), p(&[(0, l - 1)])),
        // Around the 32 KiB up to which the response head is copied in front of the first
        // body bytes (beyond, they go out together by writev).
        ("32 KiB".into(), r("bytes=100-32867"), p(&[(100, 32867)])),
        (
            "32 KiB and one".into(),
            r("bytes=100-32868"),
            p(&[(100, 32868)]),
        ),
        (
            "32 KiB across the seam".into(),
            r(&format!("bytes={}-{}", h - 16384, (h + 16383).min(l - 1))),
            p(&[(h - 16384, (h + 16383).min(l - 1))]),
        ),
        (
            "end clamped".into(),
            r("bytes=0-99999999"),
            p(&[(0, l - 1)]),
        ),
        (
            "start at length".into(),
            r(&format!("bytes={l}-")),
            Unsatisfiable,
        ),
        ("suffix zero".into(), r("bytes=-0"), Unsatisfiable),
        (
            "past the end".into(),
            r(&format!("bytes={l}-{}", l + 5)),
            Unsatisfiable,
        ),
        ("reversed".into(), r("bytes=5-4"), Full),
        ("not numbers".into(), r("bytes=abc"), Full),
        ("empty set".into(), r("bytes="), Full),
        ("unit case".into(), r("BYTES=1-2"), p(&[(1, 2)])),
        ("spaces".into(), r("bytes= 1-2 , 4-5"), p(&[(1, 2), (4, 5)])),
        (
            "out of order".into(),
            r("bytes=4-5,1-2"),
            p(&[(1, 2), (4, 5)]),
        ),
        ("trailing comma".into(), r("bytes=0-5,"), Full),
        ("unknown unit".into(), r("items=0-5"), Full),
        ("seventeen parts".into(), r(&seventeen), Full),
        (
            "sixteen parts".into(),
            r(&format!("bytes={}", sixteen.join(","))),
            p(&sixteen_parts),
        ),
        (
            "three with the seam".into(),
            r(&format!("bytes=0-1,{}-{},{}-", h - 1, h, l - 2)),
            p(&[(0, 1), (h - 1, h), (l - 2, l - 1)]),
        ),
        (
            "tail part then head part".into(),
            r("bytes=20000-,0-9"),
            p(&[(0, 9), (20000, l - 1)]),
        ),
        (
            "unsatisfiable part dropped".into(),
            r(&format!("bytes={l}-,0-9")),
            p(&[(0, 9)]),
        ),
        (
            "huge end".into(),
            r("bytes=0-999999999999999999999999"),
            p(&[(0, l - 1)]),
        ),
        (
            "huge start".into(),
            r("bytes=99999999999999999999-"),
            Unsatisfiable,
        ),
        (
            "If-Range same ETag".into(),
            rh("bytes=0-9", "If-Range", &e),
            p(&[(0, 9)]),
        ),
        (
            "If-Range other ETag".into(),
            rh("bytes=0-9", "If-Range", "\"x\""),
            Full,
        ),
        (
            "If-Range weak".into(),
            rh("bytes=0-9", "If-Range", &format!("W/{e}")),
            Full,
        ),
        (
            "If-Range exact date".into(),
            rh("bytes=0-9", "If-Range", LM),
            p(&[(0, 9)]),
        ),
        (
            "If-Range later date".into(),
            rh("bytes=0-9", "If-Range", "Thu, 26 Nov 2026 10:00:00 GMT"),
            Full,
        ),
        (
            "If-None-Match wins over Range".into(),
            rh("bytes=0-9", "If-None-Match", &e),
            NotModified,
        ),
        (
            "If-Match fails first".into(),
            rh("bytes=0-9", "If-Match", "\"x\""),
            Failed,
        ),
        (
            "If-Match ok".into(),
            rh("bytes=0-9", "If-Match", &e),
            p(&[(0, 9)]),
        ),
        (
            "If-Match star".into(),
            rh("bytes=0-9", "If-Match", "*"),
            p(&[(0, 9)]),
        ),
        (
            "If-Unmodified-Since earlier".into(),
            rh(
                "bytes=0-9",
                "If-Unmodified-Since",
                "Tue, 24 Nov 2026 10:00:00 GMT",
            ),
            Failed,
        ),
        (
            "If-Modified-Since later".into(),
            rh(
                "bytes=0-9",
                "If-Modified-Since",
                "Thu, 26 Nov 2026 10:00:00 GMT",
            ),
            NotModified,
        ),
        (
            "If-None-Match other beats IMS".into(),
            vec![
                ("Range".into(), "bytes=0-9".into()),
                ("If-None-Match".into(), "\"x\"".into()),
                ("If-Modified-Since".into(), LM.into()),
            ],
            p(&[(0, 9)]),
        ),
        ("no headers".into(), vec![], Full),
    ]
}

#[test]
fn range_and_conditional_matrix() {
    let s3 = S3::start();
    matrix(&s3, "small", (100_000, 105_000), "", "apk");
}

/// The matrix through the smallest relay buffer: once as usual (the response head goes
/// out in the room kept in front of the upstream response), once under a file name so
/// long that the head takes more than a quarter of the buffer. Then no room is kept, and
/// the head goes out by the other two paths: copied in front of a short body, or by
/// `writev` beside a longer one.
#[test]
fn range_and_conditional_matrix_through_a_small_buffer() {
    let s3 = S3::start();
    let small = "relay_buffer_size 4k;";
    matrix(&s3, "small", (100_000, 105_000), small, "apk");
    matrix(&s3, "long", (100_000, 105_000), small, &"k".repeat(1500));
}

/// The matrix again on a package whose segments are large enough to be spliced, and with
/// splicing off, so both relay paths answer every case.
#[test]
fn range_and_conditional_matrix_of_large_segments() {
    let s3 = S3::start();
    let sizes = (2_000_000, 2_400_000);
    let spliced = matrix(&s3, "large", sizes, "relay_splice on;", "apk");
    assert!(spliced > 10_000_000, "{spliced} bytes spliced");
    assert_eq!(
        matrix(&s3, "buffered", sizes, "relay_splice off;", "apk"),
        0
    );
}

/// Runs every case against a package of `h` head and `l - h` tail bytes, asked for as
/// `v.<ext>`; returns the body bytes tailgate spliced.
fn matrix(s3: &S3, name: &str, (h, l): (u64, u64), extra_http: &str, ext: &str) -> u64 {
    let pkg = upload_package(
        s3,
        name,
        bytes(h as usize, 81),
        vec![("v", bytes((l - h) as usize, 82))],
    );
    let full = pkg.full("v");
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, extra_http, ""));
    let path = format!("/apk/{name}/v.{ext}");
    let path = path.as_str();
    let etag = tg.get(path, &[]).header("etag").unwrap().to_string();
    let table = cases(&etag, h, l);
    assert!(table.len() >= 40);
    let mut c = tg.client();
    for (name, headers, want) in table {
        let hdrs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        c.send(&request("GET", path, &hdrs));
        let r = c
            .response(false)
            .unwrap_or_else(|| panic!("{name}: no response"));
        match &want {
            Want::Full => {
                assert_eq!(r.status, 200, "{name}");
                assert!(r.body == full, "{name}: body");
            }
            Want::Parts(p) if p.len() == 1 => {
                let (a, b) = p[0];
                assert_eq!(r.status, 206, "{name}");
                assert_eq!(
                    r.header("content-range").unwrap(),
                    format!("bytes {a}-{b}/{l}"),
                    "{name}"
                );
                assert!(r.body == full[a as usize..=b as usize], "{name}: body");
            }
            Want::Parts(p) => {
                assert_eq!(r.status, 206, "{name}");
                let boundary = r
                    .header("content-type")
                    .unwrap()
                    .strip_prefix("multipart/byteranges; boundary=")
                    .unwrap()
                    .to_string();
                let mut expect = Vec::new();
                for &(a, b) in p {
                    expect.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: application/vnd.android.package-archive\r\nContent-Range: bytes {a}-{b}/{l}\r\n\r\n").as_bytes());
                    expect.extend_from_slice(&full[a as usize..=b as usize]);
                }
                expect.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                assert!(r.body == expect, "{name}: multipart body");
            }
            Want::Unsatisfiable => {
                assert_eq!(r.status, 416, "{name}");
                assert_eq!(
                    r.header("content-range").unwrap(),
                    format!("bytes */{l}"),
                    "{name}"
                );
            }
            Want::NotModified => {
                assert_eq!(r.status, 304, "{name}");
                assert_eq!(r.header("etag"), Some(etag.as_str()));
            }
            Want::Failed => assert_eq!(r.status, 412, "{name}"),
        }
        if matches!(want, Want::Full | Want::Parts(_)) {
            assert_eq!(r.header("accept-ranges"), Some("bytes"), "{name}");
            assert_eq!(r.header("etag"), Some(etag.as_str()), "{name}");
            assert_eq!(r.header("last-modified"), Some(LM), "{name}");
        }
    }
    tg.metric("tailgate_spliced_bytes_total")
}
