//! Sans-IO response heads: a [`ResponseHead`] → bytes. Every 200/206 carries
//! `Accept-Ranges`, `ETag`, `Last-Modified` and `Content-Length` (nginx omits
//! `Accept-Ranges` on 206; we do not).

use std::fmt::Write;

use super::date;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Left out of 304s.
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    /// Unix seconds.
    pub last_modified: Option<u64>,
    /// The `Content-Range` value, without the header name.
    pub content_range: Option<String>,
    pub accept_ranges: bool,
    pub content_disposition: Option<String>,
    /// `Allow` for 405.
    pub allow: Option<&'static str>,
    pub keep_alive: bool,
    /// HTTP/1.0 peers get `Connection: keep-alive` spelled out when it is kept.
    pub minor: u8,
}

impl ResponseHead {
    pub fn new(status: u16, content_length: u64, keep_alive: bool, minor: u8) -> Self {
        ResponseHead {
            status,
            content_length: Some(content_length),
            content_type: None,
            etag: None,
            last_modified: None,
            content_range: None,
            accept_ranges: false,
            content_disposition: None,
            allow: None,
            keep_alive,
            minor,
        }
    }

    /// Serialises the head. The status line always says HTTP/1.1 (RFC 9110 §6.2).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(320);
        let _ = write!(
            s,
            "HTTP/1.1 {} {}\r\nServer: tailgate\r\nDate: {}\r\n",
            self.status,
            reason(self.status),
            date::now()
        );
        if let Some(ct) = &self.content_type {
            let _ = write!(s, "Content-Type: {ct}\r\n");
        }
        if let Some(len) = self.content_length {
            let _ = write!(s, "Content-Length: {len}\r\n");
        }
        if let Some(lm) = self.last_modified {
            let _ = write!(s, "Last-Modified: {}\r\n", date::imf_fixdate(lm));
        }
        if let Some(etag) = &self.etag {
            let _ = write!(s, "ETag: {etag}\r\n");
        }
        if self.accept_ranges {
            s.push_str("Accept-Ranges: bytes\r\n");
        }
        if let Some(cr) = &self.content_range {
            let _ = write!(s, "Content-Range: {cr}\r\n");
        }
        if let Some(cd) = &self.content_disposition {
            let _ = write!(s, "Content-Disposition: {cd}\r\n");
        }
        if let Some(allow) = self.allow {
            let _ = write!(s, "Allow: {allow}\r\n");
        }
        match (self.keep_alive, self.minor) {
            (true, 0) => s.push_str("Connection: keep-alive\r\n"),
            (true, _) => {}
            (false, _) => s.push_str("Connection: close\r\n"),
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// `attachment; filename="..."` with anything outside a safe set replaced, so a URL can
/// never inject a header or a quote.
pub fn attachment(file_name: &str) -> String {
    let safe: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+~()@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("attachment; filename=\"{safe}\"")
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
        h.content_type = Some("application/vnd.android.package-archive".into());
        h.etag = Some("\"tg-1\"".into());
        h.last_modified = Some(784_111_777);
        h.content_range = Some("bytes 0-9/100".into());
        h.accept_ranges = true;
        h.content_disposition = Some(attachment("huawei.apk"));
        let text = String::from_utf8(h.encode()).unwrap();
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\nServer: tailgate\r\nDate: "));
        let rest = &text[text.find("Content-Type").unwrap()..];
        assert_eq!(
            rest,
            "Content-Type: application/vnd.android.package-archive\r\nContent-Length: 10\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"tg-1\"\r\nAccept-Ranges: bytes\r\n\
             Content-Range: bytes 0-9/100\r\nContent-Disposition: attachment; filename=\"huawei.apk\"\r\n\r\n"
        );
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
        assert_eq!(
            attachment("a\"b\r\nX: y.apk"),
            "attachment; filename=\"a_b__X__y.apk\""
        );
    }
}
