//! Sans-IO request head parsing: bytes → [`RequestHead`] or [`ParseError`]. httparse only
//! tokenises; every semantic rule of RFC 9112 that protects framing lives here (methods,
//! version, `Host`, `Content-Length`/`Transfer-Encoding`, header caps). This module never
//! picks a status: `server::conn` maps each error to one.

use super::{decimal, trim_ows as trim};

/// The largest request body that is read and thrown away instead of refused.
pub const MAX_DISCARDED_BODY: u64 = 64 * 1024;

/// Header fields beyond this count are refused (431).
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// A registered method this server does not serve (405).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// A `Content-Length` body of at most [`MAX_DISCARDED_BODY`] bytes.
    Length(u64),
    /// `Transfer-Encoding: ... chunked`: read and discarded within [`MAX_DISCARDED_BODY`].
    Chunked,
}

/// A parsed, checked request head. `len` bytes of the input buffer belong to it. Its text
/// fields are kept one after another in one string, and a finished head can be handed to
/// [`recycle`] so that the next one reuses its allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub keep_alive: bool,
    pub body: Body,
    pub len: usize,
    text: String,
    target: Span,
    request_line: Span,
    range: Option<Span>,
    if_range: Option<Span>,
    if_match: Option<Span>,
    if_none_match: Option<Span>,
    if_modified_since: Option<Span>,
    if_unmodified_since: Option<Span>,
    user_agent: Option<Span>,
    referer: Option<Span>,
}

/// Where a field's text lies in [`RequestHead::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl RequestHead {
    /// A head with no fields yet, its text kept in `text` (empty).
    fn new(method: Method, minor: u8, len: usize, text: String) -> RequestHead {
        RequestHead {
            method,
            minor,
            keep_alive: minor == 1,
            body: Body::None,
            len,
            text,
            target: Span::default(),
            request_line: Span::default(),
            range: None,
            if_range: None,
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
            user_agent: None,
            referer: None,
        }
    }

    fn text_of(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or_default()
    }

    fn field(&self, span: Option<Span>) -> Option<&str> {
        span.map(|s| self.text_of(s))
    }

    /// The path and query in origin form (absolute-form targets are reduced to it). Only
    /// GET and HEAD targets are checked further; for others it is informative.
    pub fn target(&self) -> &str {
        self.text_of(self.target)
    }

    /// The request line as sent, for the access log.
    pub fn request_line(&self) -> &str {
        self.text_of(self.request_line)
    }

    pub fn range(&self) -> Option<&str> {
        self.field(self.range)
    }

    pub fn if_range(&self) -> Option<&str> {
        self.field(self.if_range)
    }

    /// Every `If-Match` field, joined with `, `.
    pub fn if_match(&self) -> Option<&str> {
        self.field(self.if_match)
    }

    /// Every `If-None-Match` field, joined with `, `.
    pub fn if_none_match(&self) -> Option<&str> {
        self.field(self.if_none_match)
    }

    pub fn if_modified_since(&self) -> Option<&str> {
        self.field(self.if_modified_since)
    }

    pub fn if_unmodified_since(&self) -> Option<&str> {
        self.field(self.if_unmodified_since)
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.field(self.user_agent)
    }

    pub fn referer(&self) -> Option<&str> {
        self.field(self.referer)
    }

    /// Appends `value` (lossily decoded) to the text and says where it went.
    fn push(&mut self, value: &[u8]) -> Span {
        let start = self.text.len();
        self.text.push_str(&String::from_utf8_lossy(value));
        Span {
            start,
            end: self.text.len(),
        }
    }

    fn set_once(
        &mut self,
        slot: fn(&mut RequestHead) -> &mut Option<Span>,
        value: &[u8],
    ) -> Result<(), ParseError> {
        if slot(self).is_some() {
            return Err(ParseError::Bad("repeated single-value header field"));
        }
        let span = self.push(value);
        *slot(self) = Some(span);
        Ok(())
    }

    /// A list field seen again is joined to the earlier value with `, `.
    fn append_list(&mut self, slot: fn(&mut RequestHead) -> &mut Option<Span>, value: &[u8]) {
        let span = match *slot(self) {
            None => self.push(value),
            Some(old) => {
                // Keep the joined value contiguous: copy the earlier one to the end first.
                let start = if old.end == self.text.len() {
                    old.start
                } else {
                    let start = self.text.len();
                    self.text.extend_from_within(old.start..old.end);
                    start
                };
                self.text.push_str(", ");
                self.push(value);
                Span {
                    start,
                    end: self.text.len(),
                }
            }
        };
        *slot(self) = Some(span);
    }
}

/// Idle heads kept per thread for [`parse`] to reuse.
const RECYCLED_HEADS: usize = 256;

/// A head's text above this size is not kept for reuse.
const RECYCLED_TEXT: usize = 2048;

thread_local! {
    // The boxes themselves are what is reused: a parsed head travels boxed.
    #[allow(clippy::vec_box)]
    static HEADS: std::cell::RefCell<Vec<Box<RequestHead>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Gives a finished head back for the next [`parse`] on this thread to fill.
pub fn recycle(head: Box<RequestHead>) {
    if head.text.capacity() <= RECYCLED_TEXT {
        HEADS.with(|h| {
            let mut heads = h.borrow_mut();
            if heads.len() < RECYCLED_HEADS {
                heads.push(head);
            }
        });
    }
}

/// A cleared head: a recycled one, or a new one.
fn fresh_head(method: Method, minor: u8, len: usize) -> Box<RequestHead> {
    match HEADS.with(|h| h.borrow_mut().pop()) {
        Some(mut head) => {
            let mut text = std::mem::take(&mut head.text);
            text.clear();
            *head = RequestHead::new(method, minor, len, text);
            head
        }
        None => Box::new(RequestHead::new(method, minor, len, String::new())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed syntax or framing (400); the text says what, for the error log.
    Bad(&'static str),
    /// The request line alone does not fit the head buffer (414).
    UriTooLong,
    /// The head does not fit the buffer, or has too many fields (431).
    HeadTooLarge,
    /// An unknown method token (501).
    UnknownMethod,
    /// A transfer coding this server does not know (501).
    UnknownCoding,
    /// A well-formed version other than 1.0 and 1.1 (505).
    Version,
    /// A body longer than [`MAX_DISCARDED_BODY`] (413).
    BodyTooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(Box<RequestHead>),
    /// More bytes are needed; the buffer may grow up to its limit.
    Partial,
}

/// Parses the head at the start of `buf`. `max_head` is the hard cap on the whole head.
pub fn parse(buf: &[u8], max_head: usize) -> Result<Parsed, ParseError> {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
    let skip = leading_empty_lines(buf);
    let data = &buf[skip..];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(data) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
        Err(httparse::Error::Version) => {
            return match version_error(data) {
                Some(e) => Err(e),
                None if buf.len() >= max_head => Err(ParseError::UriTooLong),
                None => Ok(Parsed::Partial),
            }
        }
        Err(_) => return Err(ParseError::Bad("malformed request head")),
    };
    let len = match status {
        httparse::Status::Complete(n) => n + skip,
        httparse::Status::Partial => {
            if buf.len() >= max_head {
                return Err(if memchr_newline(data) {
                    ParseError::HeadTooLarge
                } else {
                    ParseError::UriTooLong
                });
            }
            return Ok(Parsed::Partial);
        }
    };
    if len > max_head {
        return Err(ParseError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Bad("incomplete request line"));
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => Method::Other,
        _ => return Err(ParseError::UnknownMethod),
    };
    let mut head = fresh_head(method, minor, len);
    head.request_line = {
        let start = head.text.len();
        first_line_into(data, &mut head.text);
        Span {
            start,
            end: head.text.len(),
        }
    };
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    for h in req.headers.iter() {
        let value = h.value;
        if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(ParseError::Bad("control byte in a header value"));
        }
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(ParseError::Bad("two Host header fields"));
            }
            if !valid_host(value) {
                return Err(ParseError::Bad("invalid Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let n = decimal(trim(part)).ok_or(ParseError::Bad("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ParseError::Bad("differing Content-Length values"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let t = transfer_encoding.get_or_insert_with(String::new);
            if !t.is_empty() {
                t.push(',');
            }
            t.push_str(&String::from_utf8_lossy(value));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("range") {
            head.set_once(|h| &mut h.range, value)?;
        } else if name.eq_ignore_ascii_case("if-range") {
            head.set_once(|h| &mut h.if_range, value)?;
        } else if name.eq_ignore_ascii_case("if-match") {
            head.append_list(|h| &mut h.if_match, value);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            head.append_list(|h| &mut h.if_none_match, value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            head.set_once(|h| &mut h.if_modified_since, value)?;
        } else if name.eq_ignore_ascii_case("if-unmodified-since") {
            head.set_once(|h| &mut h.if_unmodified_since, value)?;
        } else if name.eq_ignore_ascii_case("user-agent") {
            let span = head.push(value);
            head.user_agent = Some(span);
        } else if name.eq_ignore_ascii_case("referer") {
            let span = head.push(value);
            head.referer = Some(span);
        }
    }
    // RFC 9112 §3.2: a 1.1 request without Host is rejected with 400.
    if minor == 1 && host.is_none() {
        return Err(ParseError::Bad("no Host header field"));
    }
    head.body = framing(minor, content_length, transfer_encoding.as_deref())?;
    let start = head.text.len();
    if method == Method::Other {
        head.text.push_str(target);
    } else {
        origin_form(target, &mut head.text)?;
    }
    head.target = Span {
        start,
        end: head.text.len(),
    };
    Ok(Parsed::Complete(head))
}

/// RFC 9112 §6.1–6.3: message framing; any ambiguity is refused, since a front and this
/// server disagreeing on it is how requests are smuggled.
fn framing(minor: u8, length: Option<u64>, coding: Option<&str>) -> Result<Body, ParseError> {
    match (length, coding) {
        (Some(_), Some(_)) => Err(ParseError::Bad("both Content-Length and Transfer-Encoding")),
        (_, Some(_)) if minor == 0 => Err(ParseError::Bad("Transfer-Encoding on HTTP/1.0")),
        (None, Some(codings)) => {
            let list: Vec<&str> = codings.split(',').map(str::trim).collect();
            for c in &list {
                let known = [
                    "chunked",
                    "gzip",
                    "x-gzip",
                    "deflate",
                    "compress",
                    "x-compress",
                ];
                if !known.iter().any(|k| k.eq_ignore_ascii_case(c)) {
                    return Err(if c.is_empty() {
                        ParseError::Bad("empty transfer coding")
                    } else {
                        ParseError::UnknownCoding
                    });
                }
            }
            let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
            match list.iter().position(chunked) {
                Some(i) if i + 1 == list.len() => Ok(Body::Chunked),
                _ => Err(ParseError::Bad("chunked is not the final transfer coding")),
            }
        }
        (Some(0), None) | (None, None) => Ok(Body::None),
        (Some(n), None) if n <= MAX_DISCARDED_BODY => Ok(Body::Length(n)),
        (Some(_), None) => Err(ParseError::BodyTooLarge),
    }
}

/// Reduces the request target to origin form (RFC 9112 §3.2.1–3.2.2). Control bytes and
/// non-ASCII never get this far: httparse refuses them in the target.
fn origin_form(target: &str, out: &mut String) -> Result<(), ParseError> {
    if target.starts_with('/') {
        out.push_str(target);
        return Ok(());
    }
    let lower = target.get(..8).map(str::to_ascii_lowercase);
    let rest = match lower.as_deref() {
        Some(p) if p.starts_with("http://") => &target[7..],
        Some("https://") => &target[8..],
        _ => return Err(ParseError::Bad("target is not in origin or absolute form")),
    };
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    if !valid_host(&rest.as_bytes()[..path_start]) || path_start == 0 {
        return Err(ParseError::Bad("invalid authority in absolute-form target"));
    }
    let path = &rest[path_start..];
    if !path.starts_with('/') {
        out.push('/');
    }
    out.push_str(path);
    Ok(())
}

/// The first line of `data`, lossily decoded, for logs.
pub fn first_line(data: &[u8]) -> String {
    let mut out = String::new();
    first_line_into(data, &mut out);
    out
}

/// [`first_line`], appended to `out`.
fn first_line_into(data: &[u8], out: &mut String) {
    let end = data
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(data.len())
        .min(4096);
    out.push_str(&String::from_utf8_lossy(&data[..end]));
}

/// RFC 9110 §7.2: `Host = uri-host [ ":" port ]`, an empty value allowed.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.iter().rposition(|&b| b == b':') {
        Some(i) if !v.starts_with(b"[") || v[..i].ends_with(b"]") => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    if port.is_some_and(|p| !p.iter().all(u8::is_ascii_digit)) {
        return false;
    }
    if let Some(inner) = host.strip_prefix(b"[") {
        return inner.strip_suffix(b"]").is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
    }
    host.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
}

fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        if buf[i..].starts_with(b"\r\n") {
            i += 2;
        } else if buf[i..].starts_with(b"\n") {
            i += 1;
        } else {
            return i;
        }
    }
}

fn memchr_newline(buf: &[u8]) -> bool {
    buf.contains(&b'\n')
}

/// httparse refuses any version but 1.0 and 1.1; a well-formed other one is 505, junk is 400.
/// `None` while the request line is not complete yet: `HTTP/2` may still become `HTTP/2.0`.
fn version_error(data: &[u8]) -> Option<ParseError> {
    let line_end = data.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = &data[..line_end];
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
        return Some(ParseError::Bad("malformed request line"));
    };
    let version = &line[sp + 1..];
    let well_formed = version.strip_prefix(b"HTTP/").is_some_and(|v| {
        let mut parts = v.splitn(2, |&b| b == b'.');
        let major = parts.next().unwrap_or_default();
        let minor = parts.next().unwrap_or_default();
        !major.is_empty()
            && !minor.is_empty()
            && major.iter().all(u8::is_ascii_digit)
            && minor.iter().all(u8::is_ascii_digit)
    });
    Some(if well_formed {
        ParseError::Version
    } else {
        ParseError::Bad("malformed HTTP version")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(raw: &str) -> Result<Parsed, ParseError> {
        parse(raw.as_bytes(), 8192)
    }

    fn head(raw: &str) -> RequestHead {
        match parse_all(raw) {
            Ok(Parsed::Complete(h)) => *h,
            other => panic!("{raw:?} → {other:?}"),
        }
    }

    #[test]
    fn list_fields_join_and_recycled_heads_start_clean() {
        let h = head(
            "GET /a HTTP/1.1\r\nHost: x\r\nIf-Match: \"a\"\r\nUser-Agent: u\r\nIf-Match: \"b\"\r\n\
             If-None-Match: \"c\"\r\nIf-None-Match: \"d\"\r\nReferer: r\r\nRange: bytes=1-2\r\n\r\n",
        );
        assert_eq!(h.if_match(), Some("\"a\", \"b\""));
        assert_eq!(h.if_none_match(), Some("\"c\", \"d\""));
        assert_eq!((h.user_agent(), h.referer()), (Some("u"), Some("r")));
        assert_eq!(h.request_line(), "GET /a HTTP/1.1");
        let text = h.text.as_ptr();
        recycle(Box::new(h));
        let again = head("HEAD /b HTTP/1.0\r\n\r\n");
        assert_eq!(again.text.as_ptr(), text, "the recycled text is reused");
        assert_eq!(again.method, Method::Head);
        assert!(!again.keep_alive);
        assert_eq!(again.target(), "/b");
        let none = [
            again.range(),
            again.if_match(),
            again.if_none_match(),
            again.user_agent(),
        ];
        assert_eq!(none, [None; 4]);
        assert_eq!(again.if_range(), None);
        assert_eq!(again.if_modified_since(), again.if_unmodified_since());
    }

    fn error(raw: &str) -> ParseError {
        match parse_all(raw) {
            Err(e) => e,
            other => panic!("{raw:?} → {other:?}"),
        }
    }

    #[test]
    fn simple_get_is_complete_with_its_length() {
        let raw = "GET /apk/a/b.apk?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\nNEXT";
        let h = head(raw);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target(), "/apk/a/b.apk?x=1");
        assert_eq!(h.range(), Some("bytes=0-1"));
        assert_eq!(h.len, raw.len() - 4);
        assert!(h.keep_alive);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n").keep_alive
        );
    }

    #[test]
    fn errors_follow_the_spec_table() {
        let cases: &[(&str, ParseError)] = &[
            ("get / HTTP/1.1\r\nHost: h\r\n\r\n", ParseError::UnknownMethod),
            ("BREW / HTTP/1.1\r\nHost: h\r\n\r\n", ParseError::UnknownMethod),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", ParseError::Version),
            ("GET / HTTP/1.32\r\nHost: h\r\n\r\n", ParseError::Version),
            ("GET / HTTX/1.1\r\nHost: h\r\n\r\n", ParseError::Bad("malformed HTTP version")),
            ("GET / HTTP/1.1\r\n\r\n", ParseError::Bad("no Host header field")),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ParseError::Bad("two Host header fields")),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", ParseError::Bad("invalid Host")),
            ("GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", ParseError::Bad("invalid Host")),
            ("GET * HTTP/1.1\r\nHost: h\r\n\r\n", ParseError::Bad("target is not in origin or absolute form")),
            ("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", ParseError::Bad("both Content-Length and Transfer-Encoding")),
            ("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ParseError::Bad("differing Content-Length values")),
            ("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", ParseError::Bad("invalid Content-Length")),
            ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ParseError::Bad("Transfer-Encoding on HTTP/1.0")),
            ("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", ParseError::Bad("chunked is not the final transfer coding")),
            ("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", ParseError::UnknownCoding),
            ("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n", ParseError::BodyTooLarge),
            ("GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n", ParseError::Bad("repeated single-value header field")),
        ];
        for (raw, want) in cases {
            assert_eq!(error(raw), *want, "for {raw:?}");
        }
    }

    #[test]
    fn registered_methods_parse_for_a_405() {
        assert_eq!(
            head("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc").method,
            Method::Other
        );
        assert_eq!(
            head("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n").method,
            Method::Other
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(
            head("GET http://h:80/a?b HTTP/1.1\r\nHost: x\r\n\r\n").target(),
            "/a?b"
        );
        assert_eq!(
            head("GET HTTP://h HTTP/1.1\r\nHost: x\r\n\r\n").target(),
            "/"
        );
    }

    #[test]
    fn bodies_are_framed() {
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n").body,
            Body::Length(5)
        );
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n").body,
            Body::Length(5)
        );
        let chunked = head("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.body, Body::Chunked);
    }

    #[test]
    fn obs_text_in_a_value_is_accepted() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: caf\xe9\r\n\r\n";
        assert!(matches!(parse(raw, 8192), Ok(Parsed::Complete(_))));
    }

    #[test]
    fn size_caps_pick_414_or_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert_eq!(
            parse(&long_line.as_bytes()[..256], 256),
            Err(ParseError::UriTooLong)
        );
        let long_head = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n", "a".repeat(300));
        assert_eq!(
            parse(&long_head.as_bytes()[..256], 256),
            Err(ParseError::HeadTooLarge)
        );
        let many = format!(
            "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
            "A: b\r\n".repeat(101)
        );
        assert_eq!(parse(many.as_bytes(), 8192), Err(ParseError::HeadTooLarge));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost", 8192), Ok(Parsed::Partial));
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(head(raw).len, raw.len());
    }

    mod split {
        use super::*;
        use proptest::prelude::*;

        /// Feeds `raw` the way a socket might: growing prefixes at the given cut points.
        fn incremental(raw: &[u8], cuts: &[usize]) -> Result<Parsed, ParseError> {
            let mut last = Ok(Parsed::Partial);
            for &cut in cuts.iter().chain(std::iter::once(&raw.len())) {
                last = parse(&raw[..cut.min(raw.len())], 8192);
                if !matches!(last, Ok(Parsed::Partial)) {
                    return last;
                }
            }
            last
        }

        fn request() -> impl Strategy<Value = Vec<u8>> {
            let methods = prop::sample::select(vec!["GET", "HEAD", "POST", "get", "BREW"]);
            let versions = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTX"]);
            let header = prop::sample::select(vec![
                "Host: h\r\n",
                "Range: bytes=0-9\r\n",
                "Content-Length: 3\r\n",
                "Transfer-Encoding: chunked\r\n",
                "X-A: b\r\n",
                "Bad Name: x\r\n",
                "Connection: close\r\n",
            ]);
            (
                methods,
                "/[a-z0-9/%.]{0,20}",
                versions,
                prop::collection::vec(header, 0..6),
            )
                .prop_map(|(m, p, v, hs)| {
                    format!("{m} /{p} {v}\r\n{}\r\nbody", hs.concat()).into_bytes()
                })
        }

        proptest! {
            #[test]
            fn same_answer_whole_split_and_byte_by_byte(raw in request(), cut in 0usize..200) {
                let whole = parse(&raw, 8192);
                prop_assert_eq!(&incremental(&raw, &[cut]), &whole);
                let every: Vec<usize> = (1..raw.len()).collect();
                prop_assert_eq!(&incremental(&raw, &every), &whole);
            }

            #[test]
            fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&raw, 256);
            }
        }
    }
}
