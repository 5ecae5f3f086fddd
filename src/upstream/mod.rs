//! Talking to S3: signed requests over pooled connections, response heads checked before a
//! byte is relayed, bodies read with `read_timeout` between reads. Segment retries and
//! resume are decided by `relay`, which knows what the client already has; whole-object
//! fetches (manifests, object metadata) retry here.

pub mod addresses;
pub mod pool;
pub mod record;
pub mod response;
pub mod s3;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::conf::{Scheme, S3};
use crate::log;
use crate::metrics::{Outcome, Segment as Kind, Stats};
use crate::object::composite::Segment;
use crate::timer::{self, Tick, Timer};
use addresses::Addresses;
use pool::Pool;
use response::{Meta, Parsed, Refusal, UpstreamHead};
use s3::Ask;
use transport::Transport;

/// The longest a whole retry sequence may sleep, whatever `retries` and `retry_backoff` say.
pub const MAX_BACKOFF_TOTAL: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub enum ErrorKind {
    Connect(io::Error),
    /// `connect_timeout` or `read_timeout` passed.
    Timeout,
    Io(io::Error),
    /// The connection ended before the expected bytes.
    EarlyEof,
    /// The response head was refused (status, range, ETag, length, syntax).
    Refused(Refusal),
    /// 404 from S3.
    NotFound,
    /// More bytes than the caller allows (a manifest over its cap).
    TooLarge,
    Sign(String),
}

#[derive(Debug)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// Worth another attempt on a fresh connection.
    pub retryable: bool,
}

impl UpstreamError {
    pub fn new(kind: ErrorKind) -> Self {
        let retryable = match &kind {
            ErrorKind::Connect(_) | ErrorKind::Timeout | ErrorKind::Io(_) | ErrorKind::EarlyEof => {
                true
            }
            ErrorKind::Refused(Refusal::Status(s)) => *s >= 500,
            ErrorKind::Refused(Refusal::Malformed(_)) => true,
            ErrorKind::Refused(Refusal::Mismatch(_)) => false,
            ErrorKind::NotFound | ErrorKind::TooLarge | ErrorKind::Sign(_) => false,
        };
        UpstreamError { kind, retryable }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Connect(e) => write!(f, "connect: {e}"),
            ErrorKind::Timeout => write!(f, "timed out"),
            ErrorKind::Io(e) => write!(f, "i/o: {e}"),
            ErrorKind::EarlyEof => write!(f, "connection closed early"),
            ErrorKind::Refused(Refusal::Status(s)) => write!(f, "status {s}"),
            ErrorKind::Refused(Refusal::Malformed(m) | Refusal::Mismatch(m)) => write!(f, "{m}"),
            ErrorKind::NotFound => write!(f, "not found"),
            ErrorKind::TooLarge => write!(f, "response too large"),
            ErrorKind::Sign(m) => write!(f, "{m}"),
        }
    }
}

/// One `s3` block with what is derived from it once per generation.
struct Block {
    /// Signs requests; holds the block's conf.
    signer: s3::Signer,
    tls: Option<Arc<ClientConfig>>,
    /// TLS server name: the endpoint host, or `bucket.host` for virtual addressing.
    server_name: String,
    /// The endpoint's addresses, shared with the other workers and the resolver.
    addresses: Arc<Addresses>,
    /// `addresses`' version when this worker last closed idle connections to addresses
    /// that are gone.
    seen: Cell<u64>,
    /// Lines about connects that failed for want of a local resource.
    shortages: Cell<log::Throttle>,
}

/// A segment response whose head passed the checks; `remaining` body bytes are still to be
/// read from `transport`.
pub struct SegmentBody {
    transport: Transport,
    block: usize,
    remaining: u64,
    keep_alive: bool,
    _active: Active,
}

/// Counts an upstream connection in use for as long as it lives.
struct Active(Arc<Stats>);

impl Active {
    fn new(stats: &Arc<Stats>) -> Active {
        stats
            .pool_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Active(Arc::clone(stats))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0
            .pool_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl UpstreamError {
    /// The metrics label of a failure.
    pub fn outcome(&self) -> Outcome {
        match &self.kind {
            ErrorKind::Connect(_) => Outcome::ConnectError,
            ErrorKind::Timeout => Outcome::Timeout,
            ErrorKind::Io(_) | ErrorKind::EarlyEof | ErrorKind::Refused(Refusal::Malformed(_)) => {
                Outcome::IoError
            }
            ErrorKind::Refused(Refusal::Status(s)) if *s >= 500 => Outcome::Status5xx,
            ErrorKind::Refused(Refusal::Status(_)) | ErrorKind::NotFound => Outcome::Status4xx,
            ErrorKind::Refused(Refusal::Mismatch(_)) | ErrorKind::TooLarge | ErrorKind::Sign(_) => {
                Outcome::Mismatch
            }
        }
    }
}

impl Block {
    fn conf(&self) -> &S3 {
        self.signer.conf()
    }

    /// Logs a connect that failed for want of a local resource: the first at once, then at
    /// most one line a second with the count, so that a host out of descriptors under load
    /// does not flood the error log.
    fn shortage(&self, e: &io::Error) {
        let mut throttle = self.shortages.get();
        let due = throttle.note(Instant::now());
        self.shortages.set(throttle);
        if let Some(count) = due {
            log::error!(
                "s3 block \"{}\": connect: {e} on this host ({count} such connects since the \
                 last line); the addresses are not marked failed",
                self.conf().name
            );
        }
    }
}

/// The most addresses one new connection tries, each within `connect_timeout`; a request
/// whose connection fails is retried (`retries`) on the next ones.
const CONNECT_TRIES: usize = 3;

/// Connect failures that say this host ran out of descriptors or memory, not that the
/// address is bad: they neither mark it failed nor try the next one. (`EADDRNOTAVAIL` is
/// not among them: besides a lack of local ports it is what an IPv6 address can get on a
/// host with no usable IPv6 source address, where the next, IPv4, address is the way out.)
fn local_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Opens a new connection to `b`'s endpoint: its addresses in [`Addresses::candidates`]
/// order, the next one after a refusal or a `connect_timeout`, among those that have not
/// failed lately (up to [`CONNECT_TRIES`]). An address that fails is tried last by every
/// worker for a while; when every address failed lately, one is tried, so that a request
/// to an endpoint that is down altogether waits one `connect_timeout` per attempt, no more.
async fn connect(timer: &Timer<'_>, b: &Block, stats: &Stats) -> Result<Transport, UpstreamError> {
    let tls = b.tls.as_ref().map(|c| (c, b.server_name.as_str()));
    let mut last = UpstreamError::new(ErrorKind::Connect(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no address",
    )));
    let (candidates, healthy) = b.addresses.candidates(Tick::now());
    for addr in candidates.into_iter().take(healthy.clamp(1, CONNECT_TRIES)) {
        let attempt = Transport::connect(addr, tls);
        match timer.within(b.conf().connect_timeout, attempt).await {
            Ok(Ok(t)) => {
                b.addresses.succeeded(addr);
                stats
                    .connections_opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(t);
            }
            Ok(Err(e)) if local_shortage(&e) => {
                // Every address would fail alike, and none of them is to blame.
                b.shortage(&e);
                return Err(UpstreamError::new(ErrorKind::Connect(e)));
            }
            Ok(Err(e)) => last = UpstreamError::new(ErrorKind::Connect(e)),
            Err(_) => last = UpstreamError::new(ErrorKind::Timeout),
        }
        // At most one line per address and FAIL_TIMEOUT while others answer: it goes last.
        log::warning!(
            "s3 block \"{}\": connect to {addr}: {last}; tried after the other addresses for {}s",
            b.conf().name,
            addresses::FAIL_TIMEOUT.as_secs()
        );
        stats
            .connect_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b.addresses.failed(addr, Tick::now());
    }
    Err(last)
}

impl SegmentBody {
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The socket of a plain-HTTP connection, for a relay that moves the body itself.
    pub fn plain_fd(&self) -> Option<BorrowedFd<'_>> {
        self.transport.plain_fd()
    }

    /// Counts `n` body bytes read from [`plain_fd`](Self::plain_fd) by the caller.
    pub fn consumed(&mut self, n: u64) {
        self.remaining = self.remaining.saturating_sub(n);
    }
}

/// A worker's S3 side: blocks and the keep-alive pool.
pub struct Upstream {
    blocks: Vec<Block>,
    pool: RefCell<Pool>,
    stats: Arc<Stats>,
}

impl Upstream {
    /// `endpoints` holds the addresses of each block's endpoint, indexed like `blocks`.
    pub fn new(
        blocks: &[S3],
        endpoints: &[Arc<Addresses>],
        stats: Arc<Stats>,
    ) -> Result<Upstream, String> {
        let blocks = blocks
            .iter()
            .zip(endpoints)
            .map(|(b, addresses)| {
                let tls = match b.endpoint.scheme {
                    Scheme::Https => Some(
                        transport::client_config(b.tls_ca_file.as_deref())
                            .map_err(|e| format!("s3 block \"{}\": {e}", b.name))?,
                    ),
                    Scheme::Http => None,
                };
                let server_name = b.host();
                Ok(Block {
                    signer: s3::Signer::new(b),
                    tls,
                    server_name,
                    seen: Cell::new(addresses.version()),
                    shortages: Cell::new(log::Throttle::default()),
                    addresses: Arc::clone(addresses),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Upstream {
            blocks,
            pool: RefCell::new(Pool::default()),
            stats,
        })
    }

    /// Closes idle connections that expired, whose peer closed, or whose address the
    /// endpoint's name no longer resolves to. Called about once a second.
    pub fn sweep(&self) {
        let now = Tick::now();
        let mut pool = self.pool.borrow_mut();
        pool.sweep(now, |k| {
            self.blocks
                .get(k)
                .map_or(Duration::ZERO, |b| b.conf().keepalive_timeout)
        });
        for (k, b) in self.blocks.iter().enumerate() {
            let version = b.addresses.version();
            if b.seen.replace(version) != version {
                let current = b.addresses.current();
                pool.close_if(k, |t| t.peer().map_or(true, |a| !current.contains(&a)));
            }
        }
        drop(pool);
        self.publish_idle();
    }

    /// Closes every idle connection (the generation is being replaced).
    pub fn close_idle(&self) {
        self.pool.borrow_mut().clear();
        self.publish_idle();
    }

    fn publish_idle(&self) {
        let n = i64::try_from(self.pool.borrow().idle_count()).unwrap_or(i64::MAX);
        self.stats
            .pool_idle
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a tail-cache look-up.
    pub fn record_cache(&self, hit: bool) {
        let c = if hit {
            &self.stats.tail_cache_hits
        } else {
            &self.stats.tail_cache_misses
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts body bytes a relay spliced.
    pub fn record_spliced(&self, bytes: u64) {
        self.stats
            .spliced_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes the bytes this worker's tail cache holds.
    pub fn publish_cache_bytes(&self, bytes: u64) {
        self.stats.tail_cache_bytes.store(
            i64::try_from(bytes).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Counts one upstream request's result (the metrics of SPEC §6).
    pub fn record(&self, kind: Kind, result: Result<(), &UpstreamError>) {
        self.stats.upstream(
            kind,
            result.map_or_else(UpstreamError::outcome, |()| Outcome::Ok),
        );
    }

    /// Opens `[start, end)` of `seg`'s object: `Range` + `If-Match`, head checked. On
    /// success `buf[at..]` holds the first body bytes (at most `end - start`), read together
    /// with the head in reads of at most `first_read` bytes, and `at` is returned beside the
    /// body: the response is read behind `room` bytes left free for the caller's own bytes
    /// (`at >= room`), so that they can go out in front of the body without moving it;
    /// `room` must leave the buffer room for the head (the relay keeps it to a quarter).
    pub async fn open_segment(
        &self,
        timer: &Timer<'_>,
        block: usize,
        seg: &Segment,
        (start, end): (u64, u64),
        (room, first_read): (usize, usize),
        buf: Vec<u8>,
    ) -> (Result<(SegmentBody, usize), UpstreamError>, Vec<u8>) {
        let last = end.saturating_sub(1);
        let ask = Ask {
            range: Some((start, last)),
            if_match: Some(&seg.etag),
            ..Ask::whole("GET", &seg.key)
        };
        let (res, buf) = self
            .exchange(timer, block, &ask, buf, (room, first_read))
            .await;
        let (transport, resp) = match res {
            Ok(v) => v,
            Err(e) => return (Err(e), buf),
        };
        let head = buf.get(room..).unwrap_or_default();
        if let Err(r) = response::verify_segment(&resp, head, start, last, &seg.etag) {
            transport.shutdown();
            return (Err(UpstreamError::new(ErrorKind::Refused(r))), buf);
        }
        // The bytes after the head are the first body bytes; never more than asked for.
        let at = room.saturating_add(resp.len).min(buf.len());
        let want = end.saturating_sub(start);
        let got = (buf.len() - at) as u64;
        if got > want {
            transport.shutdown();
            return (
                Err(UpstreamError::new(ErrorKind::Refused(Refusal::Malformed(
                    "body longer than Content-Length",
                )))),
                buf,
            );
        }
        let body = SegmentBody {
            transport,
            block,
            remaining: want - got,
            keep_alive: resp.keep_alive,
            _active: Active::new(&self.stats),
        };
        (Ok((body, at)), buf)
    }

    /// Appends the next body bytes to `buf` (never past the body's end), with `read_timeout`.
    /// On error the connection is already shut down.
    pub async fn read_body(
        &self,
        timer: &Timer<'_>,
        body: &mut SegmentBody,
        buf: Vec<u8>,
    ) -> (Result<usize, UpstreamError>, Vec<u8>) {
        let timeout = self.read_timeout(body.block);
        let cap = buf.capacity();
        // Never read past the body: the next response on this connection is not ours yet.
        let max = usize::try_from(body.remaining).unwrap_or(usize::MAX);
        let Ok((res, buf)) = timer.within(timeout, body.transport.read(buf, max)).await else {
            body.transport.shutdown();
            return (
                Err(UpstreamError::new(ErrorKind::Timeout)),
                Vec::with_capacity(cap),
            );
        };
        match res {
            Ok(0) => {
                body.transport.shutdown();
                (Err(UpstreamError::new(ErrorKind::EarlyEof)), buf)
            }
            Ok(n) => {
                body.remaining = body.remaining.saturating_sub(n as u64);
                (Ok(n), buf)
            }
            Err(e) => {
                body.transport.shutdown();
                (Err(UpstreamError::new(ErrorKind::Io(e))), buf)
            }
        }
    }

    /// Closes a connection whose body will not be read to its end.
    pub fn discard(&self, body: SegmentBody) {
        body.transport.shutdown();
    }

    /// Returns a fully read connection to the pool, or closes it.
    pub fn release(&self, body: SegmentBody) {
        match self.blocks.get(body.block) {
            Some(b) if body.remaining == 0 && body.keep_alive => {
                self.pool.borrow_mut().checkin(
                    body.block,
                    body.transport,
                    b.conf().keepalive,
                    Tick::now(),
                );
                self.publish_idle();
            }
            _ => body.transport.shutdown(),
        }
    }

    /// Fetches a whole small object (a manifest, `GET`) or its metadata (`HEAD`), retrying
    /// as the block says. Returns the head and, for GET, the body (at most `max` bytes).
    pub async fn fetch_whole(
        &self,
        timer: &Timer<'_>,
        block: usize,
        method: &str,
        key: &str,
        max: usize,
    ) -> Result<(Meta, Vec<u8>), UpstreamError> {
        let retries = self.retries(block);
        let mut attempt = 0;
        let mut slept = Duration::ZERO;
        let kind = if method == "HEAD" {
            Kind::Metadata
        } else {
            Kind::Manifest
        };
        loop {
            let res = self.fetch_whole_once(timer, block, method, key, max).await;
            self.record(kind, res.as_ref().map(|_| ()));
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable && attempt < retries => {
                    let pause = self.backoff(block, attempt, slept);
                    slept += pause;
                    attempt += 1;
                    crate::rt::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The pause before retry number `attempt` (0-based): `retry_backoff` doubling, the whole
    /// sequence within [`MAX_BACKOFF_TOTAL`].
    pub fn backoff(&self, block: usize, attempt: u32, slept: Duration) -> Duration {
        let base = self
            .blocks
            .get(block)
            .map_or(Duration::from_millis(50), |b| b.conf().retry_backoff);
        let pause = base.saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX));
        pause.min(MAX_BACKOFF_TOTAL.saturating_sub(slept))
    }

    /// The longest wait for more bytes of a response (`read_timeout`).
    pub fn read_timeout(&self, block: usize) -> Duration {
        self.blocks
            .get(block)
            .map_or(Duration::from_secs(30), |b| b.conf().read_timeout)
    }

    /// True when `block` speaks plain HTTP (its bodies can be spliced).
    pub fn plain(&self, block: usize) -> bool {
        self.blocks.get(block).is_some_and(|b| b.tls.is_none())
    }

    pub fn retries(&self, block: usize) -> u32 {
        self.blocks.get(block).map_or(0, |b| b.conf().retries)
    }

    async fn fetch_whole_once(
        &self,
        timer: &Timer<'_>,
        block: usize,
        method: &str,
        key: &str,
        max: usize,
    ) -> Result<(Meta, Vec<u8>), UpstreamError> {
        let (res, mut buf) = self
            .exchange(
                timer,
                block,
                &Ask::whole(method, key),
                Vec::with_capacity(response::MAX_UPSTREAM_HEAD),
                (0, response::MAX_UPSTREAM_HEAD),
            )
            .await;
        let (transport, resp) = res?;
        let fail = |t: Transport, kind| {
            t.shutdown();
            Err(UpstreamError::new(kind))
        };
        match resp.status {
            200 => {}
            404 => return fail(transport, ErrorKind::NotFound),
            s => return fail(transport, ErrorKind::Refused(Refusal::Status(s))),
        }
        if method == "HEAD" {
            self.release(SegmentBody {
                transport,
                block,
                remaining: 0,
                keep_alive: resp.keep_alive,
                _active: Active::new(&self.stats),
            });
            return Ok((resp.meta(&buf), Vec::new()));
        }
        let Some(len) = resp.content_length else {
            return fail(
                transport,
                ErrorKind::Refused(Refusal::Malformed("no Content-Length")),
            );
        };
        let len = match usize::try_from(len) {
            Ok(l) if l <= max => l,
            _ => return fail(transport, ErrorKind::TooLarge),
        };
        let meta = resp.meta(&buf);
        buf.drain(..resp.len);
        if buf.len() > len {
            return fail(
                transport,
                ErrorKind::Refused(Refusal::Malformed("body longer than Content-Length")),
            );
        }
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&buf);
        let remaining = len.saturating_sub(body.len()) as u64;
        let mut seg = SegmentBody {
            transport,
            block,
            remaining,
            keep_alive: resp.keep_alive,
            _active: Active::new(&self.stats),
        };
        while seg.remaining > 0 {
            let (res, back) = self.read_body(timer, &mut seg, body).await;
            body = back;
            res?;
        }
        self.release(seg);
        Ok((meta, body))
    }

    /// Sends the request `ask` on a pooled or fresh connection and reads the response head
    /// into `buf`, which also carries the signed request head out. The response is read
    /// behind `room` bytes, and with the head come any body bytes that arrived with it, up
    /// to `limit` bytes in all; a head must fit in `limit` and the buffer. The head's spans
    /// are into `buf[room..]`. A failure on a reused connection before any response byte is
    /// retried once on a fresh one, as nginx and Pingora do: the peer may have closed it
    /// just as it was taken.
    async fn exchange(
        &self,
        timer: &Timer<'_>,
        block: usize,
        ask: &Ask<'_>,
        buf: Vec<u8>,
        (room, limit): (usize, usize),
    ) -> (Result<(Transport, UpstreamHead), UpstreamError>, Vec<u8>) {
        let Some(b) = self.blocks.get(block) else {
            return (
                Err(UpstreamError::new(ErrorKind::Sign(
                    "no such s3 block".into(),
                ))),
                buf,
            );
        };
        let pooled =
            self.pool
                .borrow_mut()
                .checkout(block, Tick::now(), b.conf().keepalive_timeout);
        self.publish_idle();
        let mut buf = buf;
        if let Some(t) = pooled {
            let (res, back) = self
                .exchange_on(timer, block, t, ask, buf, (room, limit))
                .await;
            buf = back;
            match res {
                Ok(v) => return (Ok(v), buf),
                // A stale connection fails at once; a timeout is the upstream being slow, and
                // waiting for it twice would only double the wait.
                Err((e, any_byte)) if any_byte || !e.retryable || e.is_timeout() => {
                    return (Err(e), buf)
                }
                Err(_) => {}
            }
        }
        // Boxed: opening a connection (a TLS handshake with it) is rare next to the requests
        // sent on pooled ones, and inline its state would grow every future that awaits this
        // one by about 1.5 KiB, copied on each request.
        let t = match Box::pin(connect(timer, b, &self.stats)).await {
            Ok(t) => t,
            Err(e) => return (Err(e), buf),
        };
        let (res, buf) = self
            .exchange_on(timer, block, t, ask, buf, (room, limit))
            .await;
        (res.map_err(|(e, _)| e), buf)
    }

    /// One request on one connection. The error says whether any response byte arrived.
    async fn exchange_on(
        &self,
        timer: &Timer<'_>,
        block: usize,
        mut t: Transport,
        ask: &Ask<'_>,
        buf: Vec<u8>,
        (room, limit): (usize, usize),
    ) -> (
        Result<(Transport, UpstreamHead), (UpstreamError, bool)>,
        Vec<u8>,
    ) {
        let timeout = self.read_timeout(block);
        let cap = buf.capacity();
        let mut buf = buf;
        buf.clear();
        let signed = match self.blocks.get(block) {
            Some(b) => b.signer.request_head(ask, timer::wall_clock(), &mut buf),
            None => Err("no such s3 block".into()),
        };
        if let Err(e) = signed {
            t.shutdown();
            return (Err((UpstreamError::new(ErrorKind::Sign(e)), false)), buf);
        }
        let write = timer.within(timeout, t.write_all(buf)).await;
        let mut buf = match write {
            Ok((Ok(()), buf)) => buf,
            Ok((Err(e), buf)) => {
                t.shutdown();
                return (Err((UpstreamError::new(ErrorKind::Io(e)), false)), buf);
            }
            Err(_) => {
                t.shutdown();
                return (
                    Err((UpstreamError::new(ErrorKind::Timeout), false)),
                    Vec::with_capacity(cap),
                );
            }
        };
        // The room in front keeps whatever bytes were there (the request head's): the caller
        // writes over them.
        if buf.len() >= room {
            buf.truncate(room);
        } else {
            buf.resize(room, 0);
        }
        let end = room.saturating_add(limit).min(buf.capacity());
        loop {
            let max = end.saturating_sub(buf.len());
            let got = timer.within(timeout, t.read(buf, max)).await;
            let Ok((res, back)) = got else {
                t.shutdown();
                return (
                    Err((UpstreamError::new(ErrorKind::Timeout), false)),
                    Vec::with_capacity(cap),
                );
            };
            buf = back;
            let any = buf.len() > room;
            match res {
                Ok(0) => {
                    t.shutdown();
                    return (Err((UpstreamError::new(ErrorKind::EarlyEof), any)), buf);
                }
                Ok(_) => {}
                Err(e) => {
                    t.shutdown();
                    return (Err((UpstreamError::new(ErrorKind::Io(e)), any)), buf);
                }
            }
            match response::parse(buf.get(room..).unwrap_or_default()) {
                Ok(Parsed::Complete(h)) => return (Ok((t, h)), buf),
                Ok(Parsed::Partial) if buf.len() < end => {}
                Ok(Parsed::Partial) => {
                    t.shutdown();
                    return (
                        Err((
                            UpstreamError::new(ErrorKind::Refused(Refusal::Malformed(
                                "upstream head too large",
                            ))),
                            true,
                        )),
                        buf,
                    );
                }
                Err(r) => {
                    t.shutdown();
                    return (Err((UpstreamError::new(ErrorKind::Refused(r)), true)), buf);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_out_of_descriptors_or_memory_is_not_the_addresses_fault() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                local_shortage(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [
            libc::EADDRNOTAVAIL,
            libc::ECONNREFUSED,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ETIMEDOUT,
        ] {
            assert!(
                !local_shortage(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        let tls = io::Error::new(io::ErrorKind::InvalidData, "bad certificate");
        assert!(!local_shortage(&tls));
    }
}
