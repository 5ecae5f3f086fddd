//! S3 request heads: path-style or virtual-hosted addressing, key encoding, and SigV4
//! signing. The key derivation is `aws-sigv4`'s (`generate_signing_key`); the canonical
//! request, which for tailgate's few header shapes is a handful of lines, is hashed here as
//! it is written, and the final HMAC starts from states keyed once per UTC day, so that a
//! request costs neither the four key HMACs nor the crate's general request model (about
//! 6 µs a request), nor an allocation. `Range` is sent but not signed, so the ranges of one
//! object asked for within one second share their signature, which is kept and copied.
//! The tests hold the result to `aws-sigv4`'s complete signer, the HMAC to its
//! `calculate_signature`, and both to AWS's published vector. Pure apart from the key and
//! signature caches: the signing time is a parameter. Produces the bytes of a request
//! head; sends nothing.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};

use crate::conf::{Addressing, S3};
use crate::http::{date, push_decimal};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Everything SigV4 covers, borrowed.
pub struct SignInput<'a> {
    pub method: &'a str,
    /// The `Host` value (with a port when not the scheme's default).
    pub authority: &'a str,
    /// The encoded path, starting with `/`.
    pub path: &'a str,
    /// Further headers to sign, lowercase names.
    pub headers: &'a [(&'a str, &'a str)],
    pub region: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub time: SystemTime,
    /// `x-amz-content-sha256`: [`UNSIGNED_PAYLOAD`] (what tailgate sends) or the body's
    /// SHA-256 in hex.
    pub payload_hash: &'a str,
}

/// The SigV4 signing key of one UTC day, derived on first use that day (by `aws-sigv4`),
/// kept as the two HMAC-SHA256 states keyed with it: a signature then costs the hashing of
/// the string to sign and one block more, not the key's two blocks again.
#[derive(Default)]
pub struct DayKey(RefCell<Option<Keyed>>);

struct Keyed {
    day: u64,
    /// SHA-256 after absorbing the key XOR ipad, and after the key XOR opad (RFC 2104).
    inner: Sha256,
    outer: Sha256,
}

impl Keyed {
    fn new(day: u64, key: &[u8]) -> Keyed {
        // The signing key is a SHA-256 HMAC output: 32 bytes, under the 64-byte block.
        let mut block = [0u8; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b = *k;
        }
        let pad = |with: u8| {
            let mut h = Sha256::new();
            h.update(block.map(|b| b ^ with));
            h
        };
        Keyed {
            day,
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }
}

impl DayKey {
    /// The hex signature of `string_to_sign`.
    fn signature(&self, input: &SignInput<'_>, day: u64, string_to_sign: &[u8]) -> [u8; 64] {
        let mut cached = self.0.borrow_mut();
        let keyed = match &*cached {
            Some(k) if k.day == day => k,
            _ => {
                let key = v4::generate_signing_key(
                    input.secret_access_key,
                    input.time,
                    input.region,
                    "s3",
                );
                cached.insert(Keyed::new(day, key.as_ref()))
            }
        };
        let mut inner = keyed.inner.clone();
        inner.update(string_to_sign);
        let mut outer = keyed.outer.clone();
        outer.update(inner.finalize());
        let mut hex = [0u8; 64];
        hex_into(&outer.finalize(), &mut hex);
        hex
    }
}

/// The most headers a request is signed with: `host`, two of the caller's, the two
/// `x-amz-` ones tailgate always sends and a session token.
const MAX_SIGNED: usize = 8;

/// Appends the header lines SigV4 adds (`x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token` with a session token, `authorization`), each ending in CRLF, to
/// `out`. The canonical request is hashed as it is produced and the string to sign lives
/// in `out` just while it is signed, so signing allocates nothing beyond `out`'s growth.
/// `keys` must only ever see one secret and region.
pub fn sign_headers(input: &SignInput<'_>, keys: &DayKey, out: &mut Vec<u8>) -> Result<(), String> {
    let secs = unix_secs(input.time)?;
    let date = date::iso8601_basic(secs);
    let amz_date = std::str::from_utf8(&date).map_err(|_| "signing: date".to_string())?;
    let day = &amz_date[..8];
    let payload_hash = input.payload_hash;
    let mut signed = [("", ""); MAX_SIGNED];
    let mut n = 0;
    let extra = [
        Some(("x-amz-content-sha256", payload_hash)),
        Some(("x-amz-date", amz_date)),
        input.session_token.map(|t| ("x-amz-security-token", t)),
    ];
    let all = std::iter::once(("host", input.authority))
        .chain(input.headers.iter().copied())
        .chain(extra.into_iter().flatten());
    for h in all {
        let slot = signed
            .get_mut(n)
            .ok_or_else(|| "signing: too many headers".to_string())?;
        *slot = h;
        n += 1;
    }
    let signed = &mut signed[..n];
    signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut canonical = Sha256::new();
    for part in [input.method, "\n", input.path, "\n\n"] {
        canonical.update(part);
    }
    for (name, value) in signed.iter() {
        if !valid_value(value) {
            return Err(format!("signing: invalid value for header {name}"));
        }
        for part in [name, ":", &trim_all(value), "\n"] {
            canonical.update(part);
        }
    }
    canonical.update("\n");
    for (i, (name, _)) in signed.iter().enumerate() {
        canonical.update(if i == 0 { "" } else { ";" });
        canonical.update(name);
    }
    canonical.update("\n");
    canonical.update(payload_hash);
    let mut digest = [0u8; 64];
    hex_into(&canonical.finalize(), &mut digest);
    // The string to sign goes at the end of `out` just while it is signed.
    let mark = out.len();
    let region = input.region;
    for part in [
        ALGORITHM,
        "\n",
        amz_date,
        "\n",
        day,
        "/",
        region,
        "/s3/aws4_request\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(&digest);
    let signature = keys.signature(input, secs / 86_400, &out[mark..]);
    out.truncate(mark);
    for (name, value) in extra.into_iter().flatten() {
        for part in [name, ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    let credential = [
        "authorization: ",
        ALGORITHM,
        " Credential=",
        input.access_key_id,
        "/",
        day,
        "/",
        region,
        "/s3/aws4_request, SignedHeaders=",
    ];
    for part in credential {
        out.extend_from_slice(part.as_bytes());
    }
    for (i, (name, _)) in signed.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(b", Signature=");
    out.extend_from_slice(&signature);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Whole seconds since 1970: SigV4 dates have no finer grain.
fn unix_secs(time: SystemTime) -> Result<u64, String> {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "signing: time before 1970".to_string())
}

/// What an HTTP header value may hold (visible ASCII, space, tab, obs-text): anything else
/// would let a value end the header early.
fn valid_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// SigV4's header value normalisation: spaces trimmed at both ends, runs of spaces
/// squeezed to one (spaces only, as S3 does).
fn trim_all(v: &str) -> Cow<'_, str> {
    let v = v.trim_matches(' ');
    if !v.contains("  ") {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut last_space = false;
    for c in v.chars() {
        if !(c == ' ' && last_space) {
            out.push(c);
        }
        last_space = c == ' ';
    }
    Cow::Owned(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    out.into_iter().map(char::from).collect()
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// One request to S3: `GET`, `HEAD`, or `PUT` with `content_length`; with `Range:
/// bytes=first-last` and `If-Match` when given.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub method: &'a str,
    pub key: &'a str,
    pub range: Option<(u64, u64)>,
    pub if_match: Option<&'a str>,
    pub content_length: Option<u64>,
}

impl<'a> Ask<'a> {
    /// A request for the whole object (or its metadata, with `HEAD`).
    pub fn whole(method: &'a str, key: &'a str) -> Ask<'a> {
        Ask {
            method,
            key,
            range: None,
            if_match: None,
            content_length: None,
        }
    }
}

/// Signed request heads for one `s3` block: the addressing worked out once, the day's
/// signing key and the latest signatures kept.
pub struct Signer {
    conf: S3,
    authority: String,
    /// `/bucket/` (path style) or `/` (virtual-hosted).
    prefix: String,
    keys: DayKey,
    /// The encoded path of the head being built.
    scratch: RefCell<String>,
    recent: RefCell<Recent>,
}

/// How many signatures [`Recent`] keeps: the objects a worker asks for within one second,
/// when many clients fetch a few hot packages.
const RECENT: usize = 8;

/// The SigV4 header lines of the latest requests, by what they sign. `Range` is sent but
/// not signed (S3 requires `host` and the `x-amz-` headers only; a changed range would
/// not get past the `Content-Range` check of the response), so every range of an object
/// asked for within the same second carries the same lines: they are copied, not hashed
/// again.
#[derive(Default)]
struct Recent {
    entries: Vec<Signed>,
    /// The entry the next new signature replaces once all are in use.
    next: usize,
}

#[derive(Default)]
struct Signed {
    secs: u64,
    method: String,
    key: String,
    if_match: Option<String>,
    /// What [`sign_headers`] appended.
    lines: Vec<u8>,
}

impl Signed {
    fn covers(&self, secs: u64, method: &str, key: &str, if_match: Option<&str>) -> bool {
        self.secs == secs
            && self.method == method
            && self.key == key
            && self.if_match.as_deref() == if_match
    }
}

impl Recent {
    fn find(&self, secs: u64, method: &str, key: &str, if_match: Option<&str>) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.covers(secs, method, key, if_match))
            .map(|e| e.lines.as_slice())
    }

    /// Keeps `lines`, reusing the allocations of the entry it replaces.
    fn keep(&mut self, secs: u64, method: &str, key: &str, if_match: Option<&str>, lines: &[u8]) {
        if self.entries.len() < RECENT {
            self.entries.push(Signed::default());
            self.next = self.entries.len() - 1;
        }
        let Some(e) = self.entries.get_mut(self.next) else {
            return;
        };
        self.next = (self.next + 1) % RECENT;
        e.secs = secs;
        e.method.clear();
        e.method.push_str(method);
        e.key.clear();
        e.key.push_str(key);
        match (&mut e.if_match, if_match) {
            (Some(kept), Some(m)) => {
                kept.clear();
                kept.push_str(m);
            }
            (kept, m) => *kept = m.map(str::to_string),
        }
        e.lines.clear();
        e.lines.extend_from_slice(lines);
    }
}

impl Signer {
    pub fn new(s3: &S3) -> Signer {
        let prefix = match s3.addressing {
            Addressing::Path => format!("/{}/", encode(&s3.bucket)),
            Addressing::Virtual => "/".to_string(),
        };
        let authority = s3.endpoint.authority(&s3.host());
        Signer {
            conf: s3.clone(),
            authority,
            prefix,
            keys: DayKey::default(),
            scratch: RefCell::new(String::new()),
            recent: RefCell::default(),
        }
    }

    pub fn conf(&self) -> &S3 {
        &self.conf
    }

    /// Appends the signed request head `ask` describes to `out`; the bytes end with the
    /// blank line. `Range` is sent unsigned (see [`Recent`]). Allocates nothing once `out`,
    /// the scratch space and the kept signatures have grown to a head's size.
    pub fn request_head(
        &self,
        ask: &Ask<'_>,
        time: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let Ask {
            method,
            key,
            range,
            if_match,
            content_length,
        } = *ask;
        let mut scratch = self.scratch.borrow_mut();
        let scratch = &mut *scratch;
        scratch.clear();
        scratch.push_str(&self.prefix);
        encode_into(key, scratch);
        let path = scratch.as_str();
        let authority = self.authority.as_str();
        let signed_match = if_match.map(|e| [("if-match", e)]);
        for part in [method, " ", path, " HTTP/1.1\r\nHost: ", authority] {
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(b"\r\nUser-Agent: tailgate\r\n");
        if let Some(n) = content_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        let headers = signed_match.as_ref().map_or(&[][..], |h| &h[..]);
        for (name, value) in headers {
            if !valid_value(value) {
                return Err(format!("request head: invalid value for header {name}"));
            }
            for part in [name, ": ", value, "\r\n"] {
                out.extend_from_slice(part.as_bytes());
            }
        }
        // Sent, not signed (see the module's notes).
        if let Some((first, last)) = range {
            out.extend_from_slice(b"range: bytes=");
            push_decimal(out, first);
            out.push(b'-');
            push_decimal(out, last);
            out.extend_from_slice(b"\r\n");
        }
        let secs = unix_secs(time)?;
        if let Some(lines) = self.recent.borrow().find(secs, method, key, if_match) {
            out.extend_from_slice(lines);
            out.extend_from_slice(b"\r\n");
            return Ok(());
        }
        let s3 = &self.conf;
        let mark = out.len();
        sign_headers(
            &SignInput {
                method,
                authority,
                path,
                headers,
                region: &s3.region,
                access_key_id: &s3.access_key_id,
                secret_access_key: &s3.secret_access_key,
                session_token: s3.session_token.as_deref(),
                time,
                payload_hash: UNSIGNED_PAYLOAD,
            },
            &self.keys,
            out,
        )?;
        let lines = out.get(mark..).unwrap_or_default();
        self.recent
            .borrow_mut()
            .keep(secs, method, key, if_match, lines);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

/// S3 key encoding: every byte but unreserved characters and `/` is percent-encoded.
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    encode_into(key, &mut out);
    out
}

/// [`encode`], appended to `out`.
fn encode_into(key: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SigningSettings, UriPathNormalizationMode,
    };
    use aws_smithy_runtime_api::client::identity::Identity;
    use proptest::prelude::*;

    /// The header lines `sign_headers` appends, as (name, value) pairs.
    fn signed(input: &SignInput<'_>, keys: &DayKey) -> Result<Vec<(&'static str, String)>, String> {
        let mut out = b"left alone\r\n".to_vec();
        sign_headers(input, keys, &mut out)?;
        let text = String::from_utf8(out).unwrap();
        let lines = text.strip_prefix("left alone\r\n").unwrap();
        assert!(lines.ends_with("\r\n"), "{lines:?}");
        // In the oracle's order.
        let order = [
            "x-amz-date",
            "x-amz-content-sha256",
            "x-amz-security-token",
            "authorization",
        ];
        let mut pairs: Vec<(usize, String)> = lines
            .split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (
                    order.iter().position(|n| *n == name).unwrap(),
                    value.to_string(),
                )
            })
            .collect();
        pairs.sort_by_key(|p| p.0);
        Ok(pairs.into_iter().map(|(i, v)| (order[i], v)).collect())
    }

    /// `aws-sigv4`'s complete signer, set up for S3 as tailgate signs: the reference the
    /// canonical request built here is held to.
    fn oracle(input: &SignInput<'_>) -> Vec<(&'static str, String)> {
        let identity: Identity = Credentials::new(
            input.access_key_id,
            input.secret_access_key,
            input.session_token.map(str::to_string),
            None,
            "test",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(input.region)
            .name("s3")
            .time(input.time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let mut headers: Vec<(&str, &str)> = vec![("host", input.authority)];
        headers.extend_from_slice(input.headers);
        let body = match input.payload_hash {
            UNSIGNED_PAYLOAD => SignableBody::UnsignedPayload,
            h => SignableBody::Precomputed(h.to_string()),
        };
        let uri = format!("http://{}{}", input.authority, input.path);
        let request = SignableRequest::new(input.method, uri, headers.into_iter(), body).unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let (out, _) = instructions.into_parts();
        let mut out: Vec<(&'static str, String)> = out
            .into_iter()
            .map(|h| (h.name(), h.value().to_string()))
            .collect();
        // Same set; the order of the added headers does not matter.
        let rank = |n: &str| {
            [
                "x-amz-date",
                "x-amz-content-sha256",
                "x-amz-security-token",
                "authorization",
            ]
            .iter()
            .position(|k| *k == n)
        };
        out.sort_by_key(|(n, _)| rank(n));
        out
    }

    proptest! {
        /// The canonical request built here signs exactly as aws-sigv4's signer does, for
        /// any key, range, ETag, time, region and credentials, and the cached day key gives
        /// the same signature as a fresh one.
        #[test]
        fn matches_aws_sigv4(
            key in "[a-zA-Z0-9/ ._~+%é-]{1,40}",
            first in 0u64..u64::MAX / 2,
            len in 1u64..1 << 40,
            etag in prop_oneof!["\"[ -~]{0,40}\"", "[ \"a-f0-9-]{1,40}"],
            secs in 0u64..4_000_000_000,
            later in 0u64..200_000,
            region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
            akid in "[A-Z0-9]{16,20}",
            secret in "[a-zA-Z0-9/+]{20,40}",
            token in proptest::option::of("[a-zA-Z0-9/+=]{10,60}"),
            virtual_host in any::<bool>(),
        ) {
            let authority = if virtual_host { "apks.s3.example.com" } else { "127.0.0.1:9000" };
            let path = if virtual_host { format!("/{}", encode(&key)) } else { format!("/apks/{}", encode(&key)) };
            let range = format!("bytes={first}-{}", first + len - 1);
            let headers = [("if-match", etag.as_str()), ("range", range.as_str())];
            let keys = DayKey::default();
            for t in [secs, secs + later] {
                let input = SignInput {
                    method: "GET",
                    authority,
                    path: &path,
                    headers: &headers,
                    region: &region,
                    access_key_id: &akid,
                    secret_access_key: &secret,
                    session_token: token.as_deref(),
                    time: UNIX_EPOCH + Duration::from_secs(t),
                    payload_hash: UNSIGNED_PAYLOAD,
                };
                prop_assert_eq!(signed(&input, &keys).unwrap(), oracle(&input));
            }
        }
    }

    #[test]
    fn control_characters_are_refused() {
        let input = SignInput {
            method: "GET",
            authority: "h",
            path: "/b/k",
            headers: &[("if-match", "\"e\"\r\nX-Evil: 1")],
            region: "us-east-1",
            access_key_id: "AK",
            secret_access_key: "SK",
            session_token: None,
            time: UNIX_EPOCH,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        assert!(signed(&input, &DayKey::default()).is_err());
    }

    #[test]
    fn trim_all_squeezes_spaces_only() {
        assert_eq!(trim_all("  a  b \t c  "), "a b \t c");
        assert_eq!(trim_all("abc"), "abc");
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }

    /// The "GET Object" example of AWS's "Signature Calculations for the Authorization Header"
    /// page (S3 API reference), copied into tests/data/sigv4-s3-get-object.txt.
    #[test]
    fn aws_s3_get_object_golden_vector() {
        let golden = include_str!("../../tests/data/sigv4-s3-get-object.txt");
        let field = |name: &str| {
            golden
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
                .unwrap()
                .to_string()
        };
        // 20130524T000000Z
        let time = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let headers = [("range", "bytes=0-9")];
        let (access_key_id, secret_access_key) =
            (field("access_key_id"), field("secret_access_key"));
        let input = SignInput {
            method: "GET",
            authority: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            headers: &headers,
            region: "us-east-1",
            access_key_id: &access_key_id,
            secret_access_key: &secret_access_key,
            session_token: None,
            time,
            payload_hash: &hex(&Sha256::digest(b"")),
        };
        let signed = signed(&input, &DayKey::default()).unwrap();
        assert_eq!(signed, oracle(&input));
        let auth = &signed
            .iter()
            .find(|(n, _)| *n == "authorization")
            .unwrap()
            .1;
        let part = |name: &str| {
            auth.split([' ', ','])
                .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                .unwrap()
                .to_string()
        };
        assert!(auth.starts_with("AWS4-HMAC-SHA256 "), "{auth}");
        assert_eq!(part("Credential"), field("credential"));
        assert_eq!(part("SignedHeaders"), field("signed_headers"));
        assert_eq!(part("Signature"), field("signature"));
        let date = signed.iter().find(|(n, _)| *n == "x-amz-date").unwrap();
        assert_eq!(date.1, "20130524T000000Z");
    }

    #[test]
    fn unsigned_payload_and_session_token_are_sent_and_signed() {
        let input = SignInput {
            method: "GET",
            authority: "127.0.0.1:9000",
            path: "/b/k",
            headers: &[("range", "bytes=0-1"), ("if-match", "\"e\"")],
            region: "us-east-1",
            access_key_id: "AK",
            secret_access_key: "SK",
            session_token: Some("TOKEN"),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            payload_hash: UNSIGNED_PAYLOAD,
        };
        let signed = signed(&input, &DayKey::default()).unwrap();
        assert_eq!(signed, oracle(&input));
        let get = |n: &str| signed.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get("x-amz-content-sha256").as_deref(),
            Some("UNSIGNED-PAYLOAD")
        );
        assert_eq!(get("x-amz-security-token").as_deref(), Some("TOKEN"));
        let auth = get("authorization").unwrap();
        assert!(
            auth.contains("SignedHeaders=host;if-match;range;x-amz-content-sha256;x-amz-date;x-amz-security-token,"),
            "{auth}"
        );
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AK/20231114/us-east-1/s3/aws4_request")
        );
    }

    /// An `s3` block for bucket `apks` on 127.0.0.1:9000, with `extra` directives.
    fn s3_block(extra: &str) -> S3 {
        let text = format!(
            "http {{ listen 127.0.0.1:1; s3 b {{ endpoint http://127.0.0.1:9000; \
             region us-east-1; bucket apks; access_key_id AK; secret_access_key SK; {extra} }} }}"
        );
        let conf = crate::conf::Config::parse("t.conf", &text, &crate::conf::ProcessEnv).unwrap();
        conf.http.s3[0].clone()
    }

    #[test]
    fn request_heads_are_complete_and_signed() {
        let signer = Signer::new(&s3_block(""));
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ask = Ask {
            range: Some((5, 104)),
            if_match: Some("\"e\""),
            ..Ask::whole("GET", "a b/c.apk")
        };
        let mut out = Vec::new();
        signer.request_head(&ask, time, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(rest, "");
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(lines[0], "GET /apks/a%20b/c.apk HTTP/1.1");
        assert_eq!(lines[1], "Host: 127.0.0.1:9000");
        assert!(lines.contains(&"range: bytes=5-104"), "{lines:?}");
        assert!(lines.contains(&"if-match: \"e\""), "{lines:?}");
        let input = SignInput {
            method: "GET",
            authority: "127.0.0.1:9000",
            path: "/apks/a%20b/c.apk",
            headers: &[("if-match", "\"e\"")],
            region: "us-east-1",
            access_key_id: "AK",
            secret_access_key: "SK",
            session_token: None,
            time,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        for (name, value) in oracle(&input) {
            assert!(
                lines.contains(&format!("{name}: {value}").as_str()),
                "{name}"
            );
        }
        assert!(
            text.contains("SignedHeaders=host;if-match;x-amz-content-sha256;x-amz-date,"),
            "{text}"
        );
        // The same head again, into a used buffer: appended, and identical.
        signer.request_head(&ask, time, &mut out).unwrap();
        assert_eq!(out.len(), 2 * text.len());
        assert_eq!(&out[text.len()..], text.as_bytes());
        let evil = Ask {
            if_match: Some("\"e\"\r\nX-Evil: 1"),
            ..ask
        };
        assert!(signer.request_head(&evil, time, &mut out).is_err());
        let put = Ask {
            content_length: Some(7),
            ..Ask::whole("PUT", "k")
        };
        let mut out = Vec::new();
        signer.request_head(&put, time, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\r\nContent-Length: 7\r\n"));
    }

    /// A head whose signed parts match one signed before in the same second carries that
    /// one's lines (copied from the kept signatures), which are what a fresh signer writes;
    /// any other second, object or If-Match gets lines of its own.
    #[test]
    fn kept_signatures_serve_only_identical_signed_parts() {
        let s3 = &s3_block("session_token T;");
        let kept = Signer::new(s3);
        let auth = |signer: &Signer, ask: &Ask<'_>, secs: u64| {
            let mut out = Vec::new();
            let time = UNIX_EPOCH + Duration::from_millis(secs);
            signer.request_head(ask, time, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("x-amz-") || l.starts_with("authorization"))
                .map(str::to_string)
                .collect();
            assert_eq!(lines.len(), 4, "{text}");
            lines
        };
        let at = |first| Ask {
            range: Some((first, first + 99)),
            if_match: Some("\"e\""),
            ..Ask::whole("GET", "k.apk")
        };
        let t = 1_700_000_000_000;
        let first = auth(&kept, &at(0), t);
        assert_eq!(auth(&kept, &at(500), t + 999), first, "same second");
        assert_eq!(auth(&Signer::new(s3), &at(500), t + 999), first, "as fresh");
        assert_ne!(auth(&kept, &at(0), t + 1000), first, "next second");
        let other = [
            Ask {
                key: "l.apk",
                ..at(0)
            },
            Ask {
                if_match: Some("\"f\""),
                ..at(0)
            },
            Ask {
                if_match: None,
                ..at(0)
            },
            Ask {
                method: "HEAD",
                ..at(0)
            },
        ];
        for ask in &other {
            let fresh = auth(&Signer::new(s3), ask, t);
            assert_ne!(fresh, first, "{ask:?}");
            assert_eq!(auth(&kept, ask, t), fresh, "{ask:?}");
        }
        // More objects in one second than are kept: each still signed right.
        for i in 0..3 * RECENT {
            let key = format!("{i}.apk");
            let ask = Ask { key: &key, ..at(0) };
            assert_eq!(auth(&kept, &ask, t), auth(&Signer::new(s3), &ask, t));
        }
        assert_eq!(auth(&kept, &at(7), t), first);
    }

    proptest! {
        /// The cached keyed states give aws-sigv4's HMAC for any key and message.
        #[test]
        fn keyed_hmac_matches_aws_sigv4(key in prop::collection::vec(any::<u8>(), 32), msg in prop::collection::vec(any::<u8>(), 0..300)) {
            let Keyed { mut inner, mut outer, .. } = Keyed::new(0, &key);
            inner.update(&msg);
            outer.update(inner.finalize());
            prop_assert_eq!(hex(&outer.finalize()), v4::calculate_signature(&key, &msg));
        }
    }

    #[test]
    fn keys_are_encoded_like_s3() {
        assert_eq!(encode("apps/foo 1/é+x"), "apps/foo%201/%C3%A9%2Bx");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
