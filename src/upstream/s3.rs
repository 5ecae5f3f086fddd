//! S3 request heads: path-style or virtual-hosted addressing, key encoding, and SigV4
//! signing through the `aws-sigv4` crate. Pure: the signing time is a parameter, so the
//! published AWS vectors pin it. Produces the bytes of a request head; sends nothing.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::conf::{Addressing, S3};

/// How the payload is declared to S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD` (what tailgate sends).
    Unsigned,
    /// The SHA-256 of these bytes (AWS's published examples sign an empty body this way).
    Bytes(&'a [u8]),
}

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
    pub payload: Payload<'a>,
}

/// Returns the headers to add (`x-amz-date`, `x-amz-content-sha256`, `authorization`, and
/// `x-amz-security-token` with a session token).
pub fn sign_headers(input: &SignInput<'_>) -> Result<Vec<(&'static str, String)>, String> {
    let identity: Identity = Credentials::new(
        input.access_key_id,
        input.secret_access_key,
        input.session_token.map(str::to_string),
        None,
        "tailgate-conf",
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
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let mut headers: Vec<(&str, &str)> = vec![("host", input.authority)];
    headers.extend_from_slice(input.headers);
    let body = match input.payload {
        Payload::Unsigned => SignableBody::UnsignedPayload,
        Payload::Bytes(b) => SignableBody::Bytes(b),
    };
    let uri = format!("http://{}{}", input.authority, input.path);
    let request = SignableRequest::new(input.method, uri, headers.into_iter(), body)
        .map_err(|e| format!("signable request: {e}"))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let (out, _params) = instructions.into_parts();
    Ok(out
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

/// The `Host` value and encoded path of `key` in the block's bucket.
pub fn locate(s3: &S3, key: &str) -> (String, String) {
    match s3.addressing {
        Addressing::Path => (
            s3.endpoint.authority(&s3.endpoint.host),
            format!("/{}/{}", encode(&s3.bucket), encode(key)),
        ),
        Addressing::Virtual => (
            s3.endpoint
                .authority(&format!("{}.{}", s3.bucket, s3.endpoint.host)),
            format!("/{}", encode(key)),
        ),
    }
}

/// A signed request head for `key` (`GET`, `HEAD`, or `PUT` with `content_length`), with
/// `Range: bytes=first-last` and `If-Match` when given. The bytes end with the blank line.
pub fn request_head(
    s3: &S3,
    method: &str,
    key: &str,
    range: Option<(u64, u64)>,
    if_match: Option<&str>,
    content_length: Option<u64>,
    time: SystemTime,
) -> Result<Vec<u8>, String> {
    let (authority, path) = locate(s3, key);
    let range_value = range.map(|(first, last)| format!("bytes={first}-{last}"));
    let mut extra: Vec<(&str, &str)> = Vec::with_capacity(2);
    if let Some(r) = &range_value {
        extra.push(("range", r));
    }
    if let Some(e) = if_match {
        extra.push(("if-match", e));
    }
    let signed = sign_headers(&SignInput {
        method,
        authority: &authority,
        path: &path,
        headers: &extra,
        region: &s3.region,
        access_key_id: &s3.access_key_id,
        secret_access_key: &s3.secret_access_key,
        session_token: s3.session_token.as_deref(),
        time,
        payload: Payload::Unsigned,
    })?;
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tailgate\r\n");
    if let Some(n) = content_length {
        out.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (name, value) in extra
        .iter()
        .map(|(n, v)| (*n, *v))
        .chain(signed.iter().map(|(n, v)| (*n, v.as_str())))
    {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok(out.into_bytes())
}

/// S3 key encoding: every byte but unreserved characters and `/` is percent-encoded.
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

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
        let signed = sign_headers(&SignInput {
            method: "GET",
            authority: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            headers: &headers,
            region: "us-east-1",
            access_key_id: &field("access_key_id"),
            secret_access_key: &field("secret_access_key"),
            session_token: None,
            time,
            payload: Payload::Bytes(&[]),
        })
        .unwrap();
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
        let signed = sign_headers(&SignInput {
            method: "GET",
            authority: "127.0.0.1:9000",
            path: "/b/k",
            headers: &[("range", "bytes=0-1"), ("if-match", "\"e\"")],
            region: "us-east-1",
            access_key_id: "AK",
            secret_access_key: "SK",
            session_token: Some("TOKEN"),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            payload: Payload::Unsigned,
        })
        .unwrap();
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

    #[test]
    fn keys_are_encoded_like_s3() {
        assert_eq!(encode("apps/foo 1/é+x"), "apps/foo%201/%C3%A9%2Bx");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
