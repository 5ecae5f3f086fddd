//! Sans-IO response heads: a [`ResponseHead`] → bytes. Every 200/206 carries
//! `Accept-Ranges`, `ETag`, `Last-Modified` and `Content-Length` (nginx omits
//! `Accept-Ranges` on 206; we do not).

use super::{date, push_decimal};

/// A response head; its text fields borrow from the object and the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    pub status: u16,
    /// Left out of 304s.
    pub content_length: Option<u64>,
    pub content_type: Option<&'a str>,
    pub etag: Option<&'a str>,
    /// Unix seconds.
    pub last_modified: Option<u64>,
    pub content_range: Option<ContentRange>,
    pub accept_ranges: bool,
    /// The file name for `Content-Disposition: attachment` (made safe when encoded).
    pub attachment: Option<&'a str>,
    /// `Allow` for 405.
    pub allow: Option<&'static str>,
    pub keep_alive: bool,
    /// HTTP/1.0 peers get `Connection: keep-alive` spelled out when it is kept.
    pub minor: u8,
}

/// A `Content-Range` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/total`.
    Bytes { first: u64, last: u64, total: u64 },
    /// `bytes */total` (416).
    Unsatisfied { total: u64 },
}

impl<'a> ResponseHead<'a> {
    pub fn new(status: u16, content_length: u64, keep_alive: bool, minor: u8) -> Self {
        ResponseHead {
            status,
            content_length: Some(content_length),
            content_type: None,
            etag: None,
            last_modified: None,
            content_range: None,
            accept_ranges: false,
            attachment: None,
            allow: None,
            keep_alive,
            minor,
        }
    }

    /// Serialises the head. The status line always says HTTP/1.1 (RFC 9110 §6.2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        self.encode_into(&mut out);
        out
    }

    /// [`encode`](Self::encode), appended to `out`: no allocation beyond `out`'s growth.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        for part in [
            b" ",
            reason(self.status).as_bytes(),
            b"\r\nServer: tailgate\r\nDate: ",
        ] {
            out.extend_from_slice(part);
        }
        date::with_now(|now| out.extend_from_slice(now));
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = self.content_type {
            line(out, &[b"Content-Type: ", ct.as_bytes(), b"\r\n"]);
        }
        if let Some(len) = self.content_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(lm) = self.last_modified {
            out.extend_from_slice(b"Last-Modified: ");
            date::with_fixdate(lm, |text| out.extend_from_slice(text));
            out.extend_from_slice(b"\r\n");
        }
        if let Some(etag) = self.etag {
            line(out, &[b"ETag: ", etag.as_bytes(), b"\r\n"]);
        }
        if self.accept_ranges {
            out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
        }
        match self.content_range {
            Some(ContentRange::Bytes { first, last, total }) => {
                out.extend_from_slice(b"Content-Range: bytes ");
                push_decimal(out, first);
                out.push(b'-');
                push_decimal(out, last);
                out.push(b'/');
                push_decimal(out, total);
                out.extend_from_slice(b"\r\n");
            }
            Some(ContentRange::Unsatisfied { total }) => {
                out.extend_from_slice(b"Content-Range: bytes */");
                push_decimal(out, total);
                out.extend_from_slice(b"\r\n");
            }
            None => {}
        }
        if let Some(name) = self.attachment {
            out.extend_from_slice(b"Content-Disposition: attachment; filename=\"");
            // Anything outside a safe set becomes `_` (a character of several bytes, one `_`),
            // so a URL can never inject a header or a quote.
            out.extend(name.chars().map(|c| {
                let safe = c.is_ascii_alphanumeric()
                    || matches!(c, '.' | '_' | '-' | '+' | '~' | '(' | ')' | '@');
                if safe {
                    c as u8
                } else {
                    b'_'
                }
            }));
            out.extend_from_slice(b"\"\r\n");
        }
        if let Some(allow) = self.allow {
            line(out, &[b"Allow: ", allow.as_bytes(), b"\r\n"]);
        }
        match (self.keep_alive, self.minor) {
            (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, _) => {}
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Not Allowed",
        408 => "Request Time-out",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        416 => "Requested Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_head_has_every_field_in_order() {
        let mut h = ResponseHead::new(206, 10, true, 1);
        h.content_type = Some("application/vnd.android.package-archive");
        h.etag = Some("\"tg-1\"");
        h.last_modified = Some(784_111_777);
        h.content_range = Some(ContentRange::Bytes {
            first: 0,
            last: 9,
            total: 100,
        });
        h.accept_ranges = true;
        h.attachment = Some("huawei.apk");
        let text = String::from_utf8(h.encode()).unwrap();
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\nServer: tailgate\r\nDate: "));
        let date = &text[text.find("Date: ").unwrap() + 6..text.find("\r\nContent-Type").unwrap()];
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let rest = &text[text.find("Content-Type").unwrap()..];
        assert_eq!(
            rest,
            "Content-Type: application/vnd.android.package-archive\r\nContent-Length: 10\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"tg-1\"\r\nAccept-Ranges: bytes\r\n\
             Content-Range: bytes 0-9/100\r\nContent-Disposition: attachment; filename=\"huawei.apk\"\r\n\r\n"
        );
        let mut r = ResponseHead::new(416, 0, false, 1);
        r.content_range = Some(ContentRange::Unsatisfied { total: 100 });
        let mut out = b"before".to_vec();
        r.encode_into(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("beforeHTTP/1.1 416 Requested Range Not Satisfiable\r\n"));
        assert!(text.ends_with(
            "Content-Length: 0\r\nContent-Range: bytes */100\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn connection_header_follows_version_and_keep_alive() {
        let enc =
            |ka, minor| String::from_utf8(ResponseHead::new(200, 0, ka, minor).encode()).unwrap();
        assert!(enc(true, 0).contains("Connection: keep-alive\r\n"));
        assert!(!enc(true, 1).contains("Connection:"));
        assert!(enc(false, 1).contains("Connection: close\r\n"));
    }

    #[test]
    fn file_names_cannot_inject() {
        let mut h = ResponseHead::new(200, 0, true, 1);
        h.attachment = Some("a\"b\r\nX: é.apk");
        let text = String::from_utf8(h.encode()).unwrap();
        assert!(
            text.contains("\r\nContent-Disposition: attachment; filename=\"a_b__X___.apk\"\r\n"),
            "{text}"
        );
    }
}
