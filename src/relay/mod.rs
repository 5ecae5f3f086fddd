//! Plan → client, one segment at a time. The upstream request for a fetch is sent only
//! after every byte before it was written to the client socket (the write completed), so
//! no upstream connection is ever held without being read. Reads and writes alternate over
//! one owned buffer moved between io_uring operations; bytes that arrive in quick
//! succession are gathered into one write (`Relay::gather`). A fetch that fails is resumed
//! from the first byte the client has not been sent; when that is impossible, the caller
//! closes the client connection so the short body shows as short. With `tail_cache_size`,
//! a tail the cache admits is sent from memory, and on a miss first read whole into it (the
//! same rule: only once everything before it was written). With `relay_splice`, the body of
//! a plain-HTTP fetch past its first bytes moves socket to socket through a pipe
//! (`splice`).

pub mod splice;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Segment as Kind;
use crate::object::composite::{Composite, Segment};
use crate::object::plan::Fetch;
use crate::object::tail_cache::TailCache;
use crate::rt::net::TcpStream;
use crate::sock;
use crate::timer::{Tick, Timer};
use crate::upstream::{ErrorKind, SegmentBody, Upstream, UpstreamError};
use splice::{Failure, Link, Pipes, Progress, Timeouts, UpstreamFailure};

/// What goes to the client, in order.
pub enum Piece {
    /// Bytes of our own: the response head, multipart boundaries.
    Bytes(Vec<u8>),
    /// Bytes of a segment.
    Fetch(Fetch),
}

/// How a relay ended once the response head was sent.
#[derive(Debug)]
pub enum End {
    Complete,
    /// The client stopped reading (write error or `send_timeout`); its socket is shut down.
    ClientGone,
    /// An upstream failure after the head was sent, retries spent: the body is short.
    Truncated(UpstreamError),
}

/// Counts of what happened, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub body_bytes: u64,
    /// Body bytes read from upstream (a tail read whole for the cache counts whole).
    pub upstream_bytes: u64,
    pub upstream_requests: u32,
    pub resumes: u32,
    /// Time spent waiting on upstream requests and reads.
    pub upstream_time: Duration,
    /// When the first response byte (with the head) was written; `None` while nothing was,
    /// so a failure can still be answered with an error status.
    pub first_write: Option<Instant>,
    /// One write to the client took [`SLOW_CLIENT_WRITE`] or longer: the rest of the response
    /// moved through a buffer of [`SLOW_CLIENT_BUFFER`].
    pub slow_client: bool,
}

/// A whole tail being read for the tail cache; its room in the cache's budget is given
/// back when it is dropped, however the read ended.
struct Fill<'a> {
    cache: &'a RefCell<TailCache>,
    reserved: u64,
    bytes: Vec<u8>,
}

impl<'a> Fill<'a> {
    fn begin(cache: &'a RefCell<TailCache>, length: u64) -> Option<Fill<'a>> {
        let len = usize::try_from(length).ok()?;
        if !cache.borrow_mut().begin_fill(length) {
            return None;
        }
        Some(Fill {
            cache,
            reserved: length,
            bytes: Vec::with_capacity(len),
        })
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.cache.try_borrow_mut() {
            c.end_fill(self.reserved);
        }
    }
}

pub struct Relay<'a> {
    pub client: &'a TcpStream,
    pub upstream: &'a Upstream,
    pub block: usize,
    pub composite: &'a Composite,
    pub send_timeout: Duration,
    /// The client connection's timeout slot, for its upstream requests too.
    pub timer: &'a Timer<'a>,
    pub tails: &'a RefCell<TailCache>,
    /// The worker's pipes when `relay_splice` is on.
    pub pipes: Option<&'a RefCell<Pipes>>,
    /// The worker's large buffers (`relay_large_buffers`).
    pub large: &'a LargeBuffers,
    /// The worker's idle relay buffers, where a slow client's transfer gives its buffer back.
    pub buffers: &'a Buffers,
    /// What the response's buffer counts in the worker's gauge.
    pub held: &'a Held<'a>,
    /// The worker's count of responses whose client turned out slow, counted when one does
    /// (a slow download can last hours).
    pub slow_clients: &'a AtomicU64,
}

/// A worker's idle buffers of one size (relay buffers of `relay_buffer_size`, response
/// heads), reused instead of allocated for every request: a fresh 256 KiB allocation is
/// glibc's slowest path (it consolidates the small free chunks first). At most
/// [`IDLE_BUFFER_BYTES`] of them, and at most 1024, are kept idle.
pub struct Buffers {
    size: usize,
    keep: usize,
    idle: RefCell<Vec<Vec<u8>>>,
    /// Bytes of buffers freed (not kept) since [`Buffers::take_released`] last read it.
    released: Cell<usize>,
}

/// What a worker's idle relay buffers may add up to. Only the pages a transfer touched are
/// resident: a pool warmed by 4 KiB ranges holds a few KiB per buffer.
pub const IDLE_BUFFER_BYTES: usize = 16 << 20;

impl Buffers {
    pub fn new(size: usize) -> Buffers {
        let keep = (IDLE_BUFFER_BYTES / size.max(1)).clamp(1, 1024);
        Buffers {
            size,
            keep,
            idle: RefCell::new(Vec::with_capacity(keep)),
            released: Cell::new(0),
        }
    }

    /// An empty buffer of the pool's size.
    pub fn take(&self) -> Vec<u8> {
        self.idle
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Keeps `buf` for the next request when it still has the pool's size and the pool is
    /// not full; frees it otherwise.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut idle = self.idle.borrow_mut();
        if buf.capacity() == self.size && idle.len() < self.keep {
            buf.clear();
            idle.push(buf);
        } else {
            self.released.set(self.released.get() + buf.capacity());
        }
    }

    /// Bytes of buffers freed since the last call.
    pub fn take_released(&self) -> usize {
        self.released.replace(0)
    }
}

/// The capacity of the one buffer a response holds at a time, counted in a worker's gauge
/// (`tailgate_relay_buffer_bytes`) for as long as the response lasts.
pub struct Held<'a> {
    gauge: &'a AtomicI64,
    bytes: Cell<i64>,
}

impl<'a> Held<'a> {
    pub fn new(gauge: &'a AtomicI64, bytes: usize) -> Held<'a> {
        let held = Held {
            gauge,
            bytes: Cell::new(0),
        };
        held.set(bytes);
        held
    }

    /// The response now holds a buffer of `bytes` instead.
    fn set(&self, bytes: usize) {
        let now = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.gauge
            .fetch_add(now - self.bytes.replace(now), Ordering::Relaxed);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// A worker's large relay buffers (`relay_large_buffers N S`): a fetch of at least
/// [`LARGE_FETCH`] × S bytes moves through a buffer of S instead of the relay buffer while
/// fewer than N such fetches are under way. Measured: whole-file downloads with 1 MiB
/// buffers use about a third less CPU per GB than with 256 KiB ones, ranges gain nothing.
pub struct LargeBuffers {
    size: usize,
    free: Cell<usize>,
}

/// How many large buffers long a fetch must be to get one.
const LARGE_FETCH: u64 = 8;

impl LargeBuffers {
    pub fn new(count: usize, size: usize) -> LargeBuffers {
        LargeBuffers {
            size,
            free: Cell::new(count),
        }
    }

    /// A slot for a fetch of `len` bytes, if it is long enough and one is free; the slot is
    /// given back when dropped.
    pub fn take(&self, len: u64) -> Option<LargeSlot<'_>> {
        let long = len >= (self.size as u64).saturating_mul(LARGE_FETCH);
        let free = self.free.get();
        if !long || free == 0 {
            return None;
        }
        self.free.set(free - 1);
        Some(LargeSlot { pool: self })
    }
}

/// One large buffer's place in the worker's budget.
pub struct LargeSlot<'a> {
    pool: &'a LargeBuffers,
}

impl LargeSlot<'_> {
    pub fn size(&self) -> usize {
        self.pool.size
    }
}

impl Drop for LargeSlot<'_> {
    fn drop(&mut self) {
        self.pool.free.set(self.pool.free.get() + 1);
    }
}

/// A write to the client that takes this long (the client reads less than a relay buffer
/// a second) moves the rest of the response to a buffer of [`SLOW_CLIENT_BUFFER`]: the relay
/// or large buffer goes back to the worker for clients that can use it, so the memory many
/// slow downloads hold is theirs to drain, not `relay_buffer_size` each.
const SLOW_CLIENT_WRITE: Duration = Duration::from_secs(1);

/// The buffer a slow client's transfer continues with (above the 37 KiB a TLS record needs
/// to be opened in place).
const SLOW_CLIENT_BUFFER: usize = 64 * 1024;

/// How long body bytes already read may wait for more to be gathered behind them.
const GATHER_WINDOW: Duration = Duration::from_millis(2);

/// Body bytes up to which our pending bytes are copied in front of them rather than sent
/// with them by `writev`.
const COALESCE: usize = 32 * 1024;

/// A sender's bytes sit in pages: a file's (`sendfile`), a NIC's page pool. The kernel copies
/// them out with `rep movsb`, which on some CPUs (AMD Zen 3 here, 1.9 against 50 GB/s)
/// crawls when the destination lies 1 to 31 bytes past the source modulo 4 KiB.
const PAGE: usize = 4096;

/// Where in `buf` to read the body byte at `pos` in its object: at the address that is
/// `pos` modulo a page, as the byte is in a sender that keeps the object in a file. A heap
/// buffer starts 16 bytes past a page boundary, 1 to 31 past the sender's every page start.
fn origin(buf: &Vec<u8>, pos: u64) -> usize {
    let want = usize::try_from(pos % PAGE as u64).unwrap_or(0);
    let at = (want + PAGE - buf.as_ptr().addr() % PAGE) % PAGE;
    if at <= buf.capacity() / 8 {
        at
    } else {
        0
    }
}

/// Empties `buf` and readies it to take the body from `pos` on at its [`origin`].
fn align(buf: &mut Vec<u8>, pos: u64) {
    buf.clear();
    buf.resize(origin(buf, pos), 0);
}

/// The bytes to keep free in front of body bytes read into `buf`, for what is pending to be
/// copied there: all of it, unless it would take more than a quarter of the buffer.
fn room(pending: &[u8], buf: &Vec<u8>) -> usize {
    if pending.len() <= buf.capacity() / 4 {
        pending.len()
    } else {
        0
    }
}

/// How a spliced part of a body ended.
enum Spliced {
    Complete,
    ClientGone,
    Upstream(UpstreamError),
}

impl Relay<'_> {
    /// Sends `head` (the response head; sent with the first body bytes) and then `pieces`.
    /// `Err` means nothing was written and the client may still get an error response;
    /// `Ok` reports how the body ended. `buf` is the worker's relay buffer; `head` is left
    /// empty, its allocation kept where it could be.
    pub async fn run(
        &self,
        head: &mut Vec<u8>,
        pieces: &mut dyn Iterator<Item = Piece>,
        buf: Vec<u8>,
        stats: &mut Stats,
    ) -> (Result<End, UpstreamError>, Vec<u8>) {
        let pending = head;
        let mut buf = buf;
        for piece in pieces {
            match piece {
                Piece::Bytes(b) if pending.is_empty() => *pending = b,
                Piece::Bytes(b) => pending.extend_from_slice(&b),
                Piece::Fetch(f) => {
                    let (res, back) = self.fetch(f, pending, buf, stats).await;
                    buf = back;
                    match res {
                        Ok(End::Complete) => {}
                        Ok(end) => return (Ok(end), buf),
                        Err(e) if stats.first_write.is_some() => {
                            return (Ok(End::Truncated(e)), buf)
                        }
                        Err(e) => return (Err(e), buf),
                    }
                }
            }
        }
        if !pending.is_empty() {
            let (res, mut back) = self.write(std::mem::take(pending), 0).await;
            back.clear();
            *pending = back;
            if res.is_err() {
                return (Ok(End::ClientGone), buf);
            }
        }
        (Ok(End::Complete), buf)
    }

    /// One fetch: from the tail cache, or streamed from upstream.
    async fn fetch(
        &self,
        f: Fetch,
        pending: &mut Vec<u8>,
        buf: Vec<u8>,
        stats: &mut Stats,
    ) -> (Result<End, UpstreamError>, Vec<u8>) {
        let Some(seg) = self.composite.segments().get(f.segment) else {
            return (Ok(End::Complete), buf);
        };
        let kind = match (self.composite.segments().len(), f.segment) {
            (1, _) => Kind::Object,
            (_, 0) => Kind::Head,
            _ => Kind::Tail,
        };
        // A tail the cache admits comes from it; on a miss the whole tail is read into it
        // first (one upstream request, whatever part was asked for). If that read fails,
        // the fetch streams as it would without the cache, with its retries and resume.
        let mut buf = buf;
        if kind == Kind::Tail && self.tails.borrow().admits(seg.length) {
            let mut cached = self.tails.borrow_mut().get(seg);
            self.upstream.record_cache(cached.is_some());
            if cached.is_none() {
                if let Some(fill) = Fill::begin(self.tails, seg.length) {
                    let (loaded, back) = self.load(seg, kind, fill, buf, stats).await;
                    buf = back;
                    if let Some(bytes) = loaded {
                        let mut tails = self.tails.borrow_mut();
                        tails.insert(seg, bytes.clone());
                        self.upstream.publish_cache_bytes(tails.used());
                        cached = Some(bytes);
                    }
                }
            }
            if let Some(bytes) = cached {
                let at = |p: u64| usize::try_from(p.saturating_sub(seg.offset)).unwrap_or(0);
                let part = bytes.get(at(f.start)..at(f.end)).unwrap_or_default();
                return self.send_cached(part, pending, buf, stats).await;
            }
        }
        // A long fetch moves through one of the worker's large buffers when one is free
        // (unless it is spliced: then no buffer carries its body, or the client is slow).
        let len = f.end.saturating_sub(f.start);
        let buffered = !stats.slow_client && !self.splices(len);
        let slot = buffered.then(|| self.large.take(len)).flatten();
        if let Some(slot) = slot {
            // One buffer at a time: the relay buffer waits in the pool meanwhile.
            self.buffers.give(buf);
            let large = Vec::with_capacity(slot.size());
            self.held.set(large.capacity());
            let (res, back) = self
                .stream(f, (seg, kind), pending, (large, Some(slot)), stats)
                .await;
            // A slow client's later fetches go on in the small buffer it moved to.
            let next = if back.capacity() <= SLOW_CLIENT_BUFFER {
                back
            } else {
                self.buffers.take()
            };
            self.held.set(next.capacity());
            return (res, next);
        }
        self.stream(f, (seg, kind), pending, (buf, None), stats)
            .await
    }

    /// `buf`, or, once the client has shown itself slow, an empty small buffer in its place:
    /// a relay buffer goes back to the worker's pool, a large one is freed with its slot.
    fn for_client(&self, buf: Vec<u8>, slot: &mut Option<LargeSlot<'_>>, stats: &Stats) -> Vec<u8> {
        if !stats.slow_client || !buf.is_empty() || buf.capacity() <= SLOW_CLIENT_BUFFER {
            return buf;
        }
        *slot = None;
        self.buffers.give(buf);
        let small = Vec::with_capacity(SLOW_CLIENT_BUFFER);
        self.held.set(small.capacity());
        small
    }

    /// Streams a fetch from upstream through `buf`, with retries and resume: `pos` is the
    /// first object byte the client has not been sent.
    async fn stream(
        &self,
        f: Fetch,
        (seg, kind): (&Segment, Kind),
        pending: &mut Vec<u8>,
        (buf, mut slot): (Vec<u8>, Option<LargeSlot<'_>>),
        stats: &mut Stats,
    ) -> (Result<End, UpstreamError>, Vec<u8>) {
        let mut buf = buf;
        let retries = self.upstream.retries(self.block);
        let mut attempt = 0u32;
        let mut slept = Duration::ZERO;
        let mut pos = f.start;
        'attempts: while pos < f.end {
            if attempt > 0 {
                let pause = self.upstream.backoff(self.block, attempt - 1, slept);
                slept += pause;
                crate::rt::time::sleep(pause).await;
                if pos > f.start {
                    stats.resumes += 1;
                }
            }
            buf.clear();
            stats.upstream_requests += 1;
            let started = Instant::now();
            // When the body will be spliced, only its first bytes come with the head.
            let first_read = if self.splices(f.end.saturating_sub(pos)) {
                crate::upstream::response::MAX_UPSTREAM_HEAD
            } else {
                usize::MAX
            };
            // The response is read behind room for what is pending (the response head), so
            // the first body bytes go out behind it without being moved.
            let (opened, back) = self
                .upstream
                .open_segment(
                    self.timer,
                    self.block,
                    seg,
                    (pos, f.end),
                    (room(pending, &buf), first_read),
                    buf,
                )
                .await;
            stats.upstream_time += started.elapsed();
            buf = back;
            let (mut body, mut from) = match opened {
                Ok(b) => b,
                Err(e) => {
                    self.upstream.record(kind, Err(&e));
                    if e.retryable && attempt < retries {
                        attempt += 1;
                        continue 'attempts;
                    }
                    return (Err(e), buf);
                }
            };
            loop {
                // The bytes in `buf` are good even when the read after them fails.
                // Timed for the slow-client check: a second needs no precise clock.
                let began = Tick::now();
                let (sent, back) = self.send(buf, from, pending, stats).await;
                buf = back;
                let Ok(n) = sent else {
                    self.upstream.discard(body);
                    return (Ok(End::ClientGone), buf);
                };
                if n > 0
                    && !stats.slow_client
                    && Tick::now().saturating_duration_since(began) >= SLOW_CLIENT_WRITE
                {
                    stats.slow_client = true;
                    self.slow_clients.fetch_add(1, Ordering::Relaxed);
                }
                buf = self.for_client(buf, &mut slot, stats);
                pos = pos.saturating_add(n);
                stats.upstream_bytes = stats.upstream_bytes.saturating_add(n);
                if body.remaining() == 0 {
                    self.upstream.record(kind, Ok(()));
                    self.upstream.release(body);
                    break;
                }
                // Aligned only when more of this body is to be read into it: the next
                // fetch starts from an empty buffer.
                if pending.is_empty() {
                    align(&mut buf, pos);
                }
                from = buf.len();
                if self.splices(body.remaining()) {
                    // The body goes through a pipe: a relay buffer waits in the pool meanwhile.
                    let small = buf.capacity() <= SLOW_CLIENT_BUFFER;
                    if !small {
                        self.buffers.give(std::mem::take(&mut buf));
                        self.held.set(0);
                    }
                    let spliced = self.splice(&mut body, pending, &mut pos, stats).await;
                    if !small {
                        buf = self.buffers.take();
                        self.held.set(buf.capacity());
                    }
                    match spliced {
                        // Not spliced after all: on through a buffer, maybe another one.
                        None => {
                            align(&mut buf, pos);
                            from = buf.len();
                        }
                        Some(Spliced::Complete) => {
                            self.upstream.record(kind, Ok(()));
                            self.upstream.release(body);
                            break;
                        }
                        Some(Spliced::ClientGone) => {
                            self.upstream.discard(body);
                            return (Ok(End::ClientGone), buf);
                        }
                        Some(Spliced::Upstream(e)) => {
                            self.upstream.discard(body);
                            self.upstream.record(kind, Err(&e));
                            if e.retryable && attempt < retries {
                                attempt += 1;
                                continue 'attempts;
                            }
                            return (Err(e), buf);
                        }
                    }
                }
                let started = Instant::now();
                let (res, back) = self.gather(&mut body, buf, from).await;
                stats.upstream_time += started.elapsed();
                buf = back;
                if let Err(e) = res {
                    self.upstream.record(kind, Err(&e));
                    let (sent, back) = self.send(buf, from, pending, stats).await;
                    buf = back;
                    let Ok(n) = sent else {
                        return (Ok(End::ClientGone), buf);
                    };
                    pos = pos.saturating_add(n);
                    stats.upstream_bytes = stats.upstream_bytes.saturating_add(n);
                    if e.retryable && attempt < retries {
                        attempt += 1;
                        continue 'attempts;
                    }
                    return (Err(e), buf);
                }
            }
        }
        (Ok(End::Complete), buf)
    }

    /// Reads body bytes into `buf` behind `from`; when they came within [`GATHER_WINDOW`],
    /// reads more behind them while they keep coming within the window of the first, up to
    /// a quarter of the buffer: the client is written fewer, larger pieces. A TLS upstream
    /// slower than tailgate's loop otherwise hands over a record or two per read, and each
    /// piece written wakes the client once (measured on whole files over TLS: wrk's CPU
    /// 0.37 → 0.24 of a core). A slow upstream's bytes go out as they come; a flowing one's
    /// wait at most the window and one pause. An error after some bytes is returned with
    /// them in `buf`, as a single read's would be.
    async fn gather(
        &self,
        body: &mut SegmentBody,
        buf: Vec<u8>,
        from: usize,
    ) -> (Result<usize, UpstreamError>, Vec<u8>) {
        let asked = Instant::now();
        let (mut res, mut buf) = self.upstream.read_body(self.timer, body, buf).await;
        let first = Instant::now();
        let enough = buf.capacity() / 4;
        let flowing = first.saturating_duration_since(asked) < GATHER_WINDOW;
        while flowing
            && res.is_ok()
            && body.remaining() > 0
            && buf.len() - from < enough
            && buf.capacity() - buf.len() >= 2 * enough
            && first.elapsed() < GATHER_WINDOW
        {
            (res, buf) = self.upstream.read_body(self.timer, body, buf).await;
        }
        (res, buf)
    }

    /// True when `len` more body bytes of this block's fetches go through a pipe.
    fn splices(&self, len: u64) -> bool {
        self.pipes.is_some() && len >= splice::MIN_BODY && self.upstream.plain(self.block)
    }

    /// Moves the rest of `body` to the client with `splice`, after what is pending. `None`
    /// when no pipe or readiness registration could be had (out of descriptors): no body
    /// byte was moved, and the caller relays through its buffer.
    async fn splice(
        &self,
        body: &mut SegmentBody,
        pending: &mut Vec<u8>,
        pos: &mut u64,
        stats: &mut Stats,
    ) -> Option<Spliced> {
        let pipes = self.pipes?;
        let src = body.plain_fd()?;
        let mut pipe = Pipes::take(pipes)?;
        // What is pending goes first, through io_uring, while the socket is still blocking.
        if !pending.is_empty() {
            let (res, _) = self.write(std::mem::take(pending), 0).await;
            if res.is_err() {
                Pipes::give(pipes, pipe);
                return Some(Spliced::ClientGone);
            }
            stats.first_write.get_or_insert_with(Instant::now);
        }
        let Ok(link) = Link::new(src, self.client.as_fd()) else {
            Pipes::give(pipes, pipe);
            return None;
        };
        let timeouts = Timeouts {
            read: self.upstream.read_timeout(self.block),
            send: self.send_timeout,
        };
        let mut moved = Progress::default();
        let res = link
            .transfer(&mut pipe, body.remaining(), &timeouts, &mut moved)
            .await;
        drop(link);
        Pipes::give(pipes, pipe);
        stats.upstream_time += moved.waited;
        self.upstream.record_spliced(moved.written);
        body.consumed(moved.read);
        *pos = pos.saturating_add(moved.written);
        stats.upstream_bytes = stats.upstream_bytes.saturating_add(moved.read);
        stats.body_bytes = stats.body_bytes.saturating_add(moved.written);
        if moved.written > 0 {
            stats.first_write.get_or_insert_with(Instant::now);
        }
        Some(match res {
            Ok(()) => Spliced::Complete,
            Err(Failure::Client) => {
                let _ = self.client.shutdown(Shutdown::Both);
                Spliced::ClientGone
            }
            Err(Failure::Upstream(f)) => Spliced::Upstream(UpstreamError::new(match f {
                UpstreamFailure::Timeout => ErrorKind::Timeout,
                UpstreamFailure::Eof => ErrorKind::EarlyEof,
                UpstreamFailure::Io(e) => ErrorKind::Io(e),
            })),
        })
    }

    /// Reads the whole of `seg` into `fill` with one upstream request; `None` if that fails.
    async fn load(
        &self,
        seg: &Segment,
        kind: Kind,
        mut fill: Fill<'_>,
        buf: Vec<u8>,
        stats: &mut Stats,
    ) -> (Option<Bytes>, Vec<u8>) {
        let end = seg.offset.saturating_add(seg.length);
        stats.upstream_requests += 1;
        let started = Instant::now();
        let (opened, mut buf) = self
            .upstream
            .open_segment(
                self.timer,
                self.block,
                seg,
                (seg.offset, end),
                (0, usize::MAX),
                buf,
            )
            .await;
        let (mut body, mut from) = match opened {
            Ok(b) => b,
            Err(e) => {
                stats.upstream_time += started.elapsed();
                self.upstream.record(kind, Err(&e));
                return (None, buf);
            }
        };
        loop {
            let got = buf.get(from..).unwrap_or_default();
            fill.bytes.extend_from_slice(got);
            stats.upstream_bytes = stats.upstream_bytes.saturating_add(got.len() as u64);
            buf.clear();
            from = 0;
            if body.remaining() == 0 {
                break;
            }
            let (res, back) = self.upstream.read_body(self.timer, &mut body, buf).await;
            buf = back;
            if let Err(e) = res {
                stats.upstream_time += started.elapsed();
                self.upstream.record(kind, Err(&e));
                buf.clear();
                return (None, buf);
            }
        }
        stats.upstream_time += started.elapsed();
        self.upstream.record(kind, Ok(()));
        self.upstream.release(body);
        (Some(Bytes::from(std::mem::take(&mut fill.bytes))), buf)
    }

    /// Sends bytes of a cached segment through the relay buffer: no upstream request.
    async fn send_cached(
        &self,
        part: &[u8],
        pending: &mut Vec<u8>,
        buf: Vec<u8>,
        stats: &mut Stats,
    ) -> (Result<End, UpstreamError>, Vec<u8>) {
        let mut buf = buf;
        let mut rest = part;
        while !rest.is_empty() {
            // Room for what is pending in front, as behind an upstream response head.
            let room = room(pending, &buf);
            buf.clear();
            buf.resize(room, 0);
            let (chunk, after) = rest.split_at(rest.len().min(buf.capacity() - room).max(1));
            rest = after;
            buf.extend_from_slice(chunk);
            let (sent, back) = self.send(buf, room, pending, stats).await;
            buf = back;
            if sent.is_err() {
                return (Ok(End::ClientGone), buf);
            }
        }
        (Ok(End::Complete), buf)
    }

    /// Writes what is pending (our own bytes) and then `buf[from..]` (body bytes) to the
    /// client. Returns the body bytes written. The bytes before `from` are free: what is
    /// pending is written over their end when it fits there. `buf` comes back holding only
    /// free bytes, the room still kept for what is pending when there was no body byte to
    /// send it with; further body bytes are to be read in behind them.
    async fn send(
        &self,
        buf: Vec<u8>,
        from: usize,
        pending: &mut Vec<u8>,
        stats: &mut Stats,
    ) -> (Result<u64, ()>, Vec<u8>) {
        let mut buf = buf;
        if buf.len() <= from {
            if pending.is_empty() {
                buf.clear();
            }
            return (Ok(0), buf);
        }
        let n = (buf.len() - from) as u64;
        let (res, mut buf) = if pending.is_empty() {
            self.write(buf, from).await
        } else if let Some(at) = from.checked_sub(pending.len()) {
            buf[at..from].copy_from_slice(pending);
            pending.clear();
            self.write(buf, at).await
        } else if buf.len() - from <= COALESCE && buf.len() + pending.len() <= buf.capacity() {
            // A short body goes out behind our bytes in its own buffer: one plain write,
            // and no iovec array allocated for a writev.
            buf.drain(..from);
            let body = buf.len();
            buf.extend_from_slice(pending);
            buf.copy_within(..body, pending.len());
            buf[..pending.len()].copy_from_slice(pending);
            pending.clear();
            self.write(buf, 0).await
        } else {
            buf.drain(..from);
            self.write_pair(std::mem::take(pending), buf).await
        };
        if res.is_err() {
            return (Err(()), buf);
        }
        stats.first_write.get_or_insert_with(Instant::now);
        stats.body_bytes = stats.body_bytes.saturating_add(n);
        buf.clear();
        (Ok(n), buf)
    }

    /// Writes `first` (our own bytes) and then all of `body` with one `sendmsg` (short pairs,
    /// see `sock::send_now`) or ring `writev` where the socket takes both, so a response head
    /// and its first body bytes leave in one operation (and, for a small response, one TCP
    /// segment). Returns `body`'s buffer.
    async fn write_pair(&self, first: Vec<u8>, body: Vec<u8>) -> (Result<(), ()>, Vec<u8>) {
        let first_len = first.len();
        let cap = body.capacity();
        let now = [io::IoSlice::new(&first), io::IoSlice::new(&body)];
        let Ok(sent) = sock::send_now(self.client, &now) else {
            let _ = self.client.shutdown(Shutdown::Both);
            return (Err(()), body);
        };
        let (n, first, body) = if sent > 0 {
            (sent, first, body)
        } else {
            let writev = self.client.writev(vec![first, body]);
            let (n, mut bufs) = match self.timer.within(self.send_timeout, writev).await {
                Ok((Ok(n), bufs)) if n > 0 => (n, bufs),
                Ok((_, mut bufs)) => {
                    let _ = self.client.shutdown(Shutdown::Both);
                    return (Err(()), bufs.pop().unwrap_or_default());
                }
                Err(_) => {
                    let _ = self.client.shutdown(Shutdown::Both);
                    return (Err(()), Vec::with_capacity(cap));
                }
            };
            let (Some(body), Some(first)) = (bufs.pop(), bufs.pop()) else {
                let _ = self.client.shutdown(Shutdown::Both);
                return (Err(()), Vec::with_capacity(cap));
            };
            (n, first, body)
        };
        if n >= first_len {
            return self.write(body, n - first_len).await;
        }
        if self.write(first, n).await.0.is_err() {
            return (Err(()), body);
        }
        self.write(body, 0).await
    }

    /// Writes `data[off..]` to the client. `send_timeout` bounds each write, i.e. the gap
    /// between two successful writes, as in nginx. On any failure the client socket is shut
    /// down (an abandoned write may still complete, and must find the socket dead).
    async fn write(&self, data: Vec<u8>, off: usize) -> (Result<(), ()>, Vec<u8>) {
        let cap = data.capacity();
        let len = data.len();
        let mut off = off;
        let mut data = data;
        if off < len {
            match sock::send_now(self.client, &[io::IoSlice::new(&data[off..len])]) {
                Ok(n) => off += n,
                Err(_) => {
                    let _ = self.client.shutdown(Shutdown::Both);
                    return (Err(()), data);
                }
            }
        }
        while off < len {
            let write = self.client.write(data, off..len);
            match self.timer.within(self.send_timeout, write).await {
                Ok((Ok(n), back)) if n > 0 => {
                    data = back;
                    off += n;
                }
                Ok((_, back)) => {
                    let _ = self.client.shutdown(Shutdown::Both);
                    return (Err(()), back);
                }
                Err(_) => {
                    let _ = self.client.shutdown(Shutdown::Both);
                    return (Err(()), Vec::with_capacity(cap));
                }
            }
        }
        (Ok(()), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_up_to_the_idle_bound() {
        let pool = Buffers::new(IDLE_BUFFER_BYTES / 2);
        let (a, mut b, c) = (pool.take(), pool.take(), pool.take());
        assert_eq!(a.capacity(), IDLE_BUFFER_BYTES / 2);
        let (at_a, at_b) = (a.as_ptr(), b.as_ptr());
        b.extend_from_slice(b"left over");
        pool.give(a);
        pool.give(b);
        pool.give(c);
        assert_eq!(pool.idle.borrow().len(), 2, "at most 16 MiB idle");
        assert_eq!(pool.take_released(), IDLE_BUFFER_BYTES / 2, "one freed");
        assert_eq!(pool.take_released(), 0);
        let again = pool.take();
        assert!(again.is_empty(), "given back cleared");
        assert_eq!(again.as_ptr(), at_b, "the same allocation");
        let last = pool.take();
        assert_eq!(last.as_ptr(), at_a);
        pool.give(Vec::with_capacity(10));
        assert!(
            pool.idle.borrow().is_empty(),
            "a buffer of another size is not kept"
        );
        assert_eq!(Buffers::new(1 << 30).keep, 1);
    }

    #[test]
    fn body_bytes_are_read_where_their_page_offset_matches_the_objects() {
        let mut buf = Vec::with_capacity(256 * 1024);
        for pos in [
            0,
            1,
            15,
            16,
            17,
            4095,
            4096,
            4097,
            1 << 40,
            (1 << 40) + 4080,
        ] {
            buf.extend_from_slice(b"sent bytes");
            align(&mut buf, pos);
            assert!(buf.len() < PAGE, "{pos}: {}", buf.len());
            let at = buf.as_ptr().addr() + buf.len();
            assert_eq!(at % PAGE, (pos % PAGE as u64) as usize, "{pos}");
        }
        // Never more than an eighth of a buffer goes to it.
        let mut small = Vec::with_capacity(PAGE);
        for pos in 0..PAGE as u64 {
            align(&mut small, pos);
            assert!(small.len() <= PAGE / 8, "{pos}: {}", small.len());
        }
    }

    #[test]
    fn large_buffers_go_to_long_fetches_while_one_is_free() {
        let large = LargeBuffers::new(2, 1 << 20);
        assert!(large.take(8 << 20).is_some_and(|s| s.size() == 1 << 20));
        assert!(large.take((8 << 20) - 1).is_none(), "too short");
        let a = large.take(u64::MAX);
        let b = large.take(8 << 20);
        assert!(a.is_some() && b.is_some());
        assert!(large.take(8 << 20).is_none(), "both in use");
        drop(a);
        assert!(
            large.take(8 << 20).is_some(),
            "a dropped slot is free again"
        );
        assert!(LargeBuffers::new(0, 4096).take(u64::MAX).is_none(), "off");
    }
}
