//! One client connection: read a head → route → load the composite → preconditions and
//! ranges → plan → relay → keep-alive or close. This is the only place where errors become
//! responses ([`error_response`]). Every exit path shuts the socket down, so an io_uring
//! operation abandoned on a timeout finds it dead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::conf::Http;
use crate::http::chunked::{ChunkError, ChunkedDiscard};
use crate::http::request::{self, Body, Method, ParseError, Parsed, RequestHead};
use crate::http::response::{reason, ContentRange, ResponseHead};
use crate::log;
use crate::metrics::{ConnState, Stats};
use crate::object::composite::{Composite, Segment};
use crate::object::conditional::{self, Outcome, Preconditions};
use crate::object::manifest::{Cache, Lookup, Manifest, MAX_MANIFEST_BYTES};
use crate::object::plan;
use crate::object::range::{self, ByteRange, RangeOutcome};
use crate::relay::{End, Held, Piece, Relay, Stats as RelayStats};
use crate::route::{self, Route, RouteError};
use crate::rt::net::TcpStream;
use crate::sock;
use crate::timer::{Tick, Timer};
use crate::upstream::{ErrorKind, UpstreamError};

use super::flight::Flights;
use super::worker::{State, Worker};

/// The head buffer of a new or idle connection; it grows up to client_header_buffer_size.
const INITIAL_HEAD_BUFFER: usize = 256;

/// Bodies of this length or more are sent under `tcp_notsent_lowat`.
const LOWAT_MIN_BODY: u64 = 2 << 20;

/// Why a request could not be served as asked.
#[derive(Debug)]
pub(super) enum Failure {
    Parse(ParseError),
    Route(RouteError),
    Method,
    /// Unknown package, variant or object.
    NotFound,
    /// The manifest or object metadata is not usable.
    BadObject(String),
    Upstream(UpstreamError),
    /// If-Match or If-Unmodified-Since failed.
    Precondition,
    /// A chunked request body that cannot be framed or is over the bound.
    Body(ChunkError),
    /// The failure of a manifest or metadata fetch shared by the requests that waited
    /// for it.
    Shared(Rc<Failure>),
}

/// What a shared manifest or metadata fetch gives each of its requests.
pub(super) type Fetched<V> = Result<Rc<V>, Rc<Failure>>;

/// The one status mapping: status code and whether the connection must close.
fn error_response(f: &Failure) -> (u16, bool) {
    match f {
        Failure::Parse(p) => match p {
            ParseError::Bad(_) => (400, true),
            ParseError::UriTooLong => (414, true),
            ParseError::HeadTooLarge => (431, true),
            ParseError::UnknownMethod | ParseError::UnknownCoding => (501, true),
            ParseError::Version => (505, true),
            ParseError::BodyTooLarge => (413, true),
        },
        Failure::Route(RouteError::BadTarget(_)) => (400, true),
        Failure::Route(RouteError::NotFound) | Failure::NotFound => (404, false),
        Failure::Method => (405, false),
        Failure::Precondition => (412, false),
        Failure::BadObject(_) => (502, false),
        Failure::Upstream(e) if e.is_timeout() => (504, false),
        Failure::Upstream(_) => (502, false),
        Failure::Body(ChunkError::Malformed(_)) => (400, true),
        Failure::Body(ChunkError::TooLarge) => (413, true),
        Failure::Shared(f) => error_response(f),
    }
}

/// Serves one client connection until it closes, then counts it out of the worker's
/// active connections. An idle connection's task is mostly this future (boxed at its own
/// size), so it is kept lean: not an `async fn`
/// (that keeps a second copy of the arguments for the task's whole life), the idle read
/// awaited here directly, and everything a request needs in one boxed future.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    w: Rc<Worker>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _ = stream.set_nodelay(true);
        let mut gauge = Gauge::new(&w.stats);
        // Idle connections should cost little: the head buffer starts small and grows, up to
        // client_header_buffer_size, only for heads that need it.
        let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_HEAD_BUFFER);
        let mut served: u64 = 0;
        let timer = w.timers.timer();
        'conn: loop {
            if buf.is_empty() && buf.capacity() > INITIAL_HEAD_BUFFER {
                // Going idle: give back what a large head made the buffer grow to.
                buf = Vec::with_capacity(INITIAL_HEAD_BUFFER);
            }
            let st = w.state();
            let http = &st.conf.http;
            let mut deadline = HeadDeadline::new();
            gauge.set(if buf.is_empty() {
                ConnState::Waiting
            } else {
                ConnState::Reading
            });
            let parsed = loop {
                let (wait, start, end) = match deadline.next(&mut buf, http, served == 0) {
                    Next::Head(h) => break Ok(h),
                    Next::Error(e) => break Err(e),
                    Next::Read { wait, start, end } => (wait, start, end),
                };
                let read = stream.read(std::mem::take(&mut buf), start..end);
                match timer.within(wait, read).await {
                    Ok((Ok(n), back)) if n > 0 => {
                        buf = back;
                        gauge.set(ConnState::Reading);
                    }
                    // The peer closed or failed: close without a response.
                    Ok(_) => break 'conn,
                    // Idle past keepalive_timeout, or stalled mid-head past client_header_timeout.
                    Err(_) => {
                        let _ = stream.shutdown(Shutdown::Both);
                        break 'conn;
                    }
                }
            };
            // One boxed future for the whole exchange: its state is on the heap only while a
            // request is being answered, so the idle task holds just the read above.
            let conn = Conn {
                client: Client {
                    stream: &stream,
                    timer: &timer,
                },
                peer,
                w: &w,
            };
            let go_on = w
                .recycler
                .pin(conn.exchange(parsed, &mut buf, &mut gauge, &mut served))
                .await;
            if !go_on {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        w.active.set(w.active.get().saturating_sub(1));
    }
}

/// What answering one request needs of its connection.
struct Conn<'a> {
    client: Client<'a>,
    peer: SocketAddr,
    w: &'a Rc<Worker>,
}

/// The client connection: its socket and its timeout slot.
#[derive(Clone, Copy)]
struct Client<'a> {
    stream: &'a TcpStream,
    timer: &'a Timer<'a>,
}

impl Conn<'_> {
    /// Answers one request head (or a refused one) and says whether the connection may
    /// serve another.
    async fn exchange(
        self,
        parsed: Result<Box<RequestHead>, ParseError>,
        buf: &mut Vec<u8>,
        gauge: &mut Gauge,
        served: &mut u64,
    ) -> bool {
        let Conn { client, peer, w } = self;
        let started = Instant::now();
        let head = match parsed {
            Ok(h) => h,
            Err(e) => {
                log::info!("client {peer}: {e:?}");
                w.stats.requests.fetch_add(1, Ordering::Relaxed);
                gauge.set(ConnState::Writing);
                let reply = Box::pin(send_error(client, &Failure::Parse(e), false, 1, true)).await;
                finish(w, peer, &request::first_line(buf), None, &reply, started);
                return false;
            }
        };
        let st = w.state();
        let http = &st.conf.http;
        w.stats.requests.fetch_add(1, Ordering::Relaxed);
        buf.drain(..head.len);
        *served += 1;
        let draining = w.shared.draining.load(Ordering::Acquire);
        let keep_alive = head.keep_alive && *served < http.keepalive_requests && !draining;
        if head.body != Body::None {
            // Boxed like the response below: rare, and kept out of this future's size.
            let (res, back) = Box::pin(discard_body(
                client,
                std::mem::take(buf),
                head.body,
                http.client_header_timeout,
            ))
            .await;
            *buf = back;
            match res {
                Ok(()) => {}
                Err(None) => return false,
                Err(Some(e)) => {
                    log::info!("client {peer}: request body: {e:?}");
                    gauge.set(ConnState::Writing);
                    let is_head = head.method == Method::Head;
                    let reply = Box::pin(send_error(
                        client,
                        &Failure::Body(e),
                        is_head,
                        head.minor,
                        true,
                    ))
                    .await;
                    finish(w, peer, head.request_line(), Some(&head), &reply, started);
                    return false;
                }
            }
        }
        gauge.set(ConnState::Writing);
        let reply = w
            .recycler
            .pin(respond(client, w, &st, &head, keep_alive))
            .await;
        finish(w, peer, head.request_line(), Some(&head), &reply, started);
        request::recycle(head);
        reply.keep && keep_alive
    }
}

/// What one response was, for the access log and the metrics.
struct Reply {
    status: u16,
    /// Whether the connection may serve another request.
    keep: bool,
    relay: RelayStats,
    truncated: bool,
}

impl Reply {
    fn plain(status: u16, keep: bool) -> Reply {
        Reply {
            status,
            keep,
            relay: RelayStats::default(),
            truncated: false,
        }
    }
}

/// Records one finished request: metrics and the access-log line.
fn finish(
    w: &Worker,
    peer: SocketAddr,
    line: &str,
    head: Option<&RequestHead>,
    r: &Reply,
    started: Instant,
) {
    let total = started.elapsed();
    let first = r
        .relay
        .first_write
        .map_or(total, |t| t.saturating_duration_since(started));
    w.stats.response(r.status, r.relay.body_bytes, total, first);
    w.stats
        .resumes
        .fetch_add(u64::from(r.relay.resumes), Ordering::Relaxed);
    if r.truncated {
        w.stats.truncations.fetch_add(1, Ordering::Relaxed);
    }
    if w.state().conf.http.access_log.is_some() {
        let time = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = log::AccessEntry {
            remote: peer.ip(),
            time,
            request_line: line,
            status: r.status,
            body_bytes: r.relay.body_bytes,
            referer: head.and_then(|h| h.referer()),
            user_agent: head.and_then(|h| h.user_agent()),
            upstream_time: (r.relay.upstream_requests > 0)
                .then_some(r.relay.upstream_time.as_secs_f64()),
            upstream_bytes: r.relay.upstream_bytes,
            resumes: r.relay.resumes,
        };
        w.shared.access.write(entry.format());
    }
}

/// The connection's state in the reading/writing/waiting gauges.
struct Gauge {
    stats: Arc<Stats>,
    state: ConnState,
}

impl Gauge {
    /// A new connection waits for its first byte, as nginx counts it.
    fn new(stats: &Arc<Stats>) -> Gauge {
        stats.enter(ConnState::Waiting);
        Gauge {
            stats: Arc::clone(stats),
            state: ConnState::Waiting,
        }
    }

    fn set(&mut self, s: ConnState) {
        if s != self.state {
            self.stats.leave(self.state);
            self.stats.enter(s);
            self.state = s;
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.stats.leave(self.state);
    }
}

/// What to do next while reading a request head.
enum Next {
    Head(Box<RequestHead>),
    Error(ParseError),
    /// Read into `buf[start..end]`, waiting at most `wait`.
    Read {
        wait: Duration,
        start: usize,
        end: usize,
    },
}

/// The deadlines of one request head. Waiting for the first byte is bounded by
/// `keepalive_timeout` (or `client_header_timeout` on a new connection); from the first byte
/// the whole head must arrive within `client_header_timeout`, however it is trickled. The
/// reads themselves are awaited by `serve`, so an idle connection's task holds no more
/// than the read in flight and this.
struct HeadDeadline {
    /// When the whole head must be in, once its first byte came.
    by: Option<Instant>,
}

impl HeadDeadline {
    fn new() -> HeadDeadline {
        HeadDeadline { by: None }
    }

    /// A complete head in `buf`, a refused one, or where to read more (growing `buf` up to
    /// `client_header_buffer_size` when it is full). `first`: the connection's first head.
    /// The head's clock starts when its first bytes are found incomplete, right after the
    /// read that brought them: a head that comes whole in one read never reads the clock.
    fn next(&mut self, buf: &mut Vec<u8>, http: &Http, first: bool) -> Next {
        let cap = http.client_header_buffer_size;
        if !buf.is_empty() {
            match request::parse(buf, cap) {
                Ok(Parsed::Complete(h)) => return Next::Head(h),
                Ok(Parsed::Partial) => {
                    self.by
                        .get_or_insert_with(|| Instant::now() + http.client_header_timeout);
                }
                Err(e) => return Next::Error(e),
            }
        }
        let wait = match self.by {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None if first => http.client_header_timeout,
            None => http.keepalive_timeout,
        };
        if buf.len() == buf.capacity() {
            let grown = (buf.capacity() * 4).clamp(INITIAL_HEAD_BUFFER, cap);
            buf.reserve_exact(grown - buf.len());
        }
        Next::Read {
            wait,
            start: buf.len(),
            end: buf.capacity().min(cap),
        }
    }
}

/// Reads and drops a request body: a `Content-Length` one (at most 64 KiB, checked by the
/// parser) or a chunked one (bounded by [`ChunkedDiscard`]). Bytes after the body stay in
/// `buf` for the next request. `Err(None)`: the peer went away or timed out;
/// `Err(Some(_))`: the chunked framing is refused.
async fn discard_body(
    client: Client<'_>,
    mut buf: Vec<u8>,
    body: Body,
    timeout: Duration,
) -> (Result<(), Option<ChunkError>>, Vec<u8>) {
    let mut left = match body {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut chunked =
        (body == Body::Chunked).then(|| ChunkedDiscard::new(request::MAX_DISCARDED_BODY));
    let cap = buf.capacity();
    loop {
        let used = match &mut chunked {
            Some(d) => match d.feed(&buf) {
                Ok(n) => n,
                Err(e) => return (Err(Some(e)), buf),
            },
            None => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                left -= n as u64;
                n
            }
        };
        buf.drain(..used);
        let done = match &chunked {
            Some(d) => d.is_done(),
            None => left == 0,
        };
        if done {
            return (Ok(()), buf);
        }
        // Everything in `buf` was body: read more into the (now empty) head buffer.
        let read = client.stream.read(buf, 0..cap);
        match client.timer.within(timeout, read).await {
            Ok((Ok(got), back)) if got > 0 => buf = back,
            Ok((_, back)) => return (Err(None), back),
            Err(_) => {
                let _ = client.stream.shutdown(Shutdown::Both);
                return (Err(None), Vec::with_capacity(cap));
            }
        }
    }
}

/// Answers one request.
async fn respond(
    client: Client<'_>,
    w: &Worker,
    st: &State,
    head: &RequestHead,
    keep_alive: bool,
) -> Reply {
    let is_head = head.method == Method::Head;
    if head.method == Method::Other {
        return send_error(client, &Failure::Method, is_head, head.minor, !keep_alive).await;
    }
    let path = route::decode(head.target());
    let route = match &path {
        Ok(p) => route::route(&st.conf.http.locations, p),
        Err(e) => Err(*e),
    };
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            return send_error(client, &Failure::Route(e), is_head, head.minor, !keep_alive).await
        }
    };
    let loaded = match route {
        Route::Composite {
            s3,
            package,
            variant,
            file_name,
        } => load_variant(client.timer, st, s3, package, variant)
            .await
            .map(|c| (s3, c, Some(file_name))),
        Route::Object { s3, key } => load_object(client.timer, st, s3, key)
            .await
            .map(|c| (s3, c, None)),
        Route::StubStatus => {
            return send_text(
                client,
                st,
                head,
                keep_alive,
                "text/plain",
                w.shared.registry.stub_status(),
            )
            .await
        }
        Route::Metrics => {
            let text = w.shared.registry.prometheus();
            return send_text(
                client,
                st,
                head,
                keep_alive,
                "text/plain; version=0.0.4",
                text,
            )
            .await;
        }
    };
    match loaded {
        Ok((block, composite, file_name)) => {
            serve_composite(client, st, head, block, &composite, file_name, keep_alive).await
        }
        Err(f) => {
            let cause = match &f {
                Failure::Shared(f) => f,
                f => f,
            };
            if let Failure::Upstream(e) = cause {
                log::error!("upstream: {} for {}", e, head.target());
            } else if let Failure::BadObject(m) = cause {
                log::error!("{m} for {}", head.target());
            }
            send_error(client, &f, is_head, head.minor, !keep_alive).await
        }
    }
}

async fn load_variant(
    timer: &Timer<'_>,
    st: &State,
    block: usize,
    package: &str,
    variant: &str,
) -> Result<Rc<Composite>, Failure> {
    // `block` comes from a Route of this generation's conf, so it always has a cache, keyed
    // by package.
    let cache = st.manifests.get(block).ok_or(Failure::NotFound)?;
    let flights = st.manifest_fetches.get(block).ok_or(Failure::NotFound)?;
    let manifest = cached(cache, flights, ("the manifest of", package), || {
        fetch_manifest(timer, st, block, route::manifest_key(package))
    })
    .await?;
    manifest.variant(variant).ok_or(Failure::NotFound)
}

/// `key`'s entry in `cache`, fetched when missing, one fetch for all the requests that
/// miss it together. Past half its time to live, the first request to see an entry fetches
/// the next one while the others keep using it; should that fetch fail, the entry still
/// serves until it expires.
async fn cached<V, F>(
    cache: &RefCell<Cache<Rc<V>>>,
    flights: &Flights<Fetched<V>>,
    (what, key): (&str, &str),
    fetch: impl FnOnce() -> F,
) -> Result<Rc<V>, Failure>
where
    F: Future<Output = Result<Rc<V>, Failure>>,
{
    let aging = match cache.borrow().lookup(key, Tick::now()) {
        Some(Lookup::Fresh(v)) => return Ok(v),
        Some(Lookup::Aging(v)) if flights.busy(key) => return Ok(v),
        Some(Lookup::Aging(v)) => Some(v),
        None => None,
    };
    let fetched = flights
        .run(key, || async {
            // The turn may have come after another request filled it.
            if let Some(Lookup::Fresh(v)) = cache.borrow().lookup(key, Tick::now()) {
                return Ok(v);
            }
            let v = fetch().await.map_err(Rc::new)?;
            cache
                .borrow_mut()
                .insert(key.to_string(), Rc::clone(&v), Tick::now());
            Ok(v)
        })
        .await;
    match (fetched, aging) {
        (Ok(v), _) => Ok(v),
        (Err(f), Some(v)) => {
            match &*f {
                Failure::Upstream(e) => log::warning!(
                    "refreshing {what} {key}: upstream: {e}; the cached copy serves until it expires"
                ),
                f => log::warning!(
                    "refreshing {what} {key}: {f:?}; the cached copy serves until it expires"
                ),
            }
            Ok(v)
        }
        (Err(f), None) => Err(Failure::Shared(f)),
    }
}

/// S3's 404 is the client's; any other upstream failure is a gateway's.
fn fetch_failure(e: UpstreamError) -> Failure {
    match e.kind {
        ErrorKind::NotFound => Failure::NotFound,
        _ => Failure::Upstream(e),
    }
}

async fn fetch_manifest(
    timer: &Timer<'_>,
    st: &State,
    block: usize,
    key: String,
) -> Result<Rc<Manifest>, Failure> {
    let (_, body) = st
        .upstream
        .fetch_whole(timer, block, "GET", &key, MAX_MANIFEST_BYTES)
        .await
        .map_err(fetch_failure)?;
    let m = Manifest::parse(&body).map_err(|e| Failure::BadObject(format!("{key}: {e}")))?;
    Ok(Rc::new(m))
}

async fn load_object(
    timer: &Timer<'_>,
    st: &State,
    block: usize,
    key: &str,
) -> Result<Rc<Composite>, Failure> {
    // `block` comes from a Route of this generation's conf, so it always has a cache.
    let cache = st.objects.get(block).ok_or(Failure::NotFound)?;
    let flights = st.object_fetches.get(block).ok_or(Failure::NotFound)?;
    cached(cache, flights, ("object", key), || {
        fetch_object(timer, st, block, key)
    })
    .await
}

async fn fetch_object(
    timer: &Timer<'_>,
    st: &State,
    block: usize,
    key: &str,
) -> Result<Rc<Composite>, Failure> {
    let (head, _) = st
        .upstream
        .fetch_whole(timer, block, "HEAD", key, 0)
        .await
        .map_err(fetch_failure)?;
    let bad = |m: &str| Failure::BadObject(format!("{key}: {m}"));
    let length = head
        .content_length
        .ok_or_else(|| bad("HEAD without Content-Length"))?;
    let etag = head.etag.ok_or_else(|| bad("no ETag"))?;
    let last_modified = head
        .last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let content_type = head
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let segment = Segment {
        key: key.to_string(),
        offset: 0,
        length,
        etag: etag.clone(),
    };
    let c =
        Composite::new(vec![segment], etag, last_modified, content_type).map_err(|m| bad(&m))?;
    Ok(Rc::new(c))
}

async fn serve_composite(
    client: Client<'_>,
    st: &State,
    req: &RequestHead,
    block: usize,
    c: &Composite,
    file_name: Option<&str>,
    keep_alive: bool,
) -> Reply {
    let is_get = req.method == Method::Get;
    let pre = Preconditions {
        if_match: req.if_match(),
        if_none_match: req.if_none_match(),
        if_modified_since: req.if_modified_since(),
        if_unmodified_since: req.if_unmodified_since(),
        if_range: req.if_range(),
    };
    let multipart_type: String;
    let mut resp = ResponseHead::new(200, c.len(), keep_alive, req.minor);
    resp.etag = Some(c.etag());
    resp.last_modified = Some(c.last_modified());
    let honour_range = match conditional::evaluate(&pre, c.etag(), c.last_modified()) {
        Outcome::NotModified => {
            resp.status = 304;
            resp.content_length = None;
            return head_only(client, st, resp).await;
        }
        Outcome::Failed => {
            return send_error(
                client,
                &Failure::Precondition,
                !is_get,
                req.minor,
                !keep_alive,
            )
            .await
        }
        Outcome::Proceed { honour_range } => honour_range,
    };
    resp.accept_ranges = true;
    resp.content_type = Some(c.content_type());
    resp.attachment = file_name;
    // RFC 9110 §14.2: Range is ignored on HEAD (SPEC §3).
    let ranges = match (req.range(), is_get && honour_range) {
        (Some(h), true) => range::parse(h, c.len(), st.conf.http.max_ranges),
        _ => RangeOutcome::Ignore,
    };
    // The body: one span of the composite (all of it when Range is ignored), or the parts
    // of a multipart body.
    let mut multipart_body = Vec::new();
    let span = match ranges {
        RangeOutcome::Unsatisfiable => {
            let mut r = ResponseHead::new(416, 0, keep_alive, req.minor);
            r.content_range = Some(ContentRange::Unsatisfied { total: c.len() });
            return head_only(client, st, r).await;
        }
        RangeOutcome::Ignore => Some(ByteRange {
            start: 0,
            end: c.len(),
        }),
        RangeOutcome::One(r) => {
            resp.status = 206;
            resp.content_length = Some(r.len());
            resp.content_range = Some(ContentRange::Bytes {
                first: r.start,
                last: r.end.saturating_sub(1),
                total: c.len(),
            });
            Some(r)
        }
        RangeOutcome::Parts(parts) => {
            let (len, body, boundary) = multipart(c, &parts);
            resp.status = 206;
            resp.content_length = Some(len);
            multipart_type = format!("multipart/byteranges; boundary={boundary}");
            resp.content_type = Some(&multipart_type);
            multipart_body = body;
            None
        }
    };
    let status = resp.status;
    let empty = span.map_or(multipart_body.is_empty(), |r| r.is_empty());
    if !is_get || empty {
        return head_only(client, st, resp).await;
    }
    let (mut plan, mut list);
    let pieces: &mut dyn Iterator<Item = Piece> = match span {
        Some(r) => {
            plan = plan::fetches(c, r).map(Piece::Fetch);
            &mut plan
        }
        None => {
            list = multipart_body.into_iter();
            &mut list
        }
    };
    let mut head = st.heads.take();
    resp.encode_into(&mut head);
    let buf = st.buffers.take();
    let held = Held::new(&st.stats.relay_buffer_bytes, buf.capacity());
    let relay = Relay {
        client: client.stream,
        upstream: &st.upstream,
        block,
        composite: c,
        send_timeout: st.conf.http.send_timeout,
        timer: client.timer,
        tails: &st.tails,
        pipes: st.conf.http.relay_splice.then_some(&st.pipes),
        large: &st.large,
        buffers: &st.buffers,
        held: &held,
        slow_clients: &st.stats.slow_clients,
    };
    // A long body is sent with the client socket's unsent bytes limited (and the limit
    // lifted after it): short ones measured slower with it, see `tcp_notsent_lowat`.
    let long = resp.content_length.is_some_and(|n| n >= LOWAT_MIN_BODY);
    let lowat = st.conf.http.tcp_notsent_lowat.filter(|_| long);
    if let Some(bytes) = lowat {
        let _ = sock::set_notsent_lowat(client.stream, bytes);
    }
    let mut stats = RelayStats::default();
    let (res, buf) = relay.run(&mut head, pieces, buf, &mut stats).await;
    if lowat.is_some() {
        let _ = sock::set_notsent_lowat(client.stream, 0);
    }
    st.buffers.give(buf);
    st.heads.give(head);
    if stats.resumes > 0 {
        log::warning!(
            "{}: resumed {} times after upstream failures ({} upstream requests)",
            req.target(),
            stats.resumes,
            stats.upstream_requests
        );
    }
    let mut reply = Reply {
        status,
        keep: keep_alive,
        relay: stats,
        truncated: false,
    };
    match res {
        Ok(End::Complete) => reply,
        Ok(End::ClientGone) => {
            reply.keep = false;
            reply
        }
        Ok(End::Truncated(e)) => {
            log::error!(
                "upstream: {e} after {} body bytes of {}: closing the client connection (truncated)",
                stats.body_bytes,
                req.target()
            );
            let _ = client.stream.shutdown(Shutdown::Both);
            reply.keep = false;
            reply.truncated = true;
            reply
        }
        Err(e) => {
            log::error!("upstream: {e} for {}", req.target());
            let mut r =
                send_error(client, &Failure::Upstream(e), false, req.minor, !keep_alive).await;
            r.relay = RelayStats {
                first_write: None,
                body_bytes: 0,
                ..stats
            };
            r
        }
    }
}

thread_local! {
    static BOUNDARY: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    );
}

/// The parts of a `multipart/byteranges` body (RFC 9110 §14.6), in nginx's layout, its
/// length and its boundary.
fn multipart(c: &Composite, parts: &[ByteRange]) -> (u64, Vec<Piece>, String) {
    let boundary = BOUNDARY.with(|b| {
        let v = b.get().wrapping_add(1);
        b.set(v);
        format!("{:020}", v % 100_000_000_000_000_000_000u128 as u64)
    });
    let mut pieces = Vec::new();
    let mut len: u64 = 0;
    for r in parts {
        let part_head = format!(
            "\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
            c.content_type(),
            r.start,
            r.end.saturating_sub(1),
            c.len()
        );
        len = len
            .saturating_add(part_head.len() as u64)
            .saturating_add(r.len());
        pieces.push(Piece::Bytes(part_head.into_bytes()));
        pieces.extend(plan::fetches(c, *r).map(Piece::Fetch));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    len = len.saturating_add(tail.len() as u64);
    pieces.push(Piece::Bytes(tail.into_bytes()));
    (len, pieces, boundary)
}

/// A response that is only a head (304, 416, HEAD, an empty body).
async fn head_only(client: Client<'_>, st: &State, resp: ResponseHead<'_>) -> Reply {
    let ok = write_all(client, resp.encode(), st.conf.http.send_timeout).await;
    Reply::plain(resp.status, ok && resp.keep_alive)
}

/// A small generated body: stub_status and metrics.
async fn send_text(
    client: Client<'_>,
    st: &State,
    head: &RequestHead,
    keep_alive: bool,
    content_type: &str,
    text: String,
) -> Reply {
    let mut r = ResponseHead::new(200, text.len() as u64, keep_alive, head.minor);
    r.content_type = Some(content_type);
    let mut bytes = r.encode();
    if head.method != Method::Head {
        bytes.extend_from_slice(text.as_bytes());
    }
    let ok = write_all(client, bytes, st.conf.http.send_timeout).await;
    let mut reply = Reply::plain(200, ok && keep_alive);
    reply.relay.body_bytes = text.len() as u64;
    reply
}

/// Sends an error response with a short text body (none for HEAD).
async fn send_error(
    client: Client<'_>,
    f: &Failure,
    is_head: bool,
    minor: u8,
    force_close: bool,
) -> Reply {
    let (status, close) = error_response(f);
    let keep = !close && !force_close;
    let body = format!("{status} {}\n", reason(status));
    let mut r = ResponseHead::new(status, body.len() as u64, keep, minor);
    r.content_type = Some("text/plain");
    if status == 405 {
        r.allow = Some("GET, HEAD");
    }
    let mut bytes = r.encode();
    if !is_head {
        bytes.extend_from_slice(body.as_bytes());
    }
    // Error responses are small; a fixed bound keeps a peer that never reads from holding them.
    let ok = write_all(client, bytes, Duration::from_secs(10)).await;
    if !keep && ok {
        linger_close(client).await;
    }
    Reply::plain(status, ok && keep)
}

/// nginx's lingering close: after an error response on a connection that will close, stop
/// sending, then read and drop what the client is still sending for a short, bounded time,
/// so that unread request bytes do not turn the close into a reset that destroys the
/// response before the client reads it.
async fn linger_close(client: Client<'_>) {
    let _ = client.stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scratch = Vec::with_capacity(16 * 1024);
    let mut budget: usize = 1 << 20;
    while budget > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        scratch.clear();
        let cap = scratch.capacity();
        match client
            .timer
            .within(wait, client.stream.read(scratch, 0..cap))
            .await
        {
            Ok((Ok(n), back)) if n > 0 => {
                budget = budget.saturating_sub(n);
                scratch = back;
            }
            _ => break,
        }
    }
    let _ = client.stream.shutdown(Shutdown::Both);
}

async fn write_all(client: Client<'_>, bytes: Vec<u8>, timeout: Duration) -> bool {
    match client
        .timer
        .within(timeout, sock::write_all(client.stream, bytes))
        .await
    {
        Ok((Ok(()), _)) => true,
        _ => {
            let _ = client.stream.shutdown(Shutdown::Both);
            false
        }
    }
}
