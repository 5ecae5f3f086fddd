//! Zero-copy relay of a plain-HTTP upstream body: `splice(2)` moves the bytes from the
//! upstream socket into a pipe and from the pipe into the client socket, so they never
//! enter user space (two copies fewer per byte than reading into a buffer and writing it
//! out, the way a proxy does). The pipe holds what a relay buffer would: its size is
//! `relay_buffer_size`, and it is filled only as the client drains it, so the rule of one
//! segment at a time and memory bounded by configuration stay as they are.
//!
//! Both sockets are switched to non-blocking for the transfer, spliced directly, and waited
//! on by a ring poll when one cannot move; they are switched back before any other ring
//! operation runs on them again.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::pipe::SpliceFlags;

use crate::rt;
use crate::rt::time::timeout;

/// Bodies shorter than this are relayed through the buffer: one read and one write cost
/// less than setting up a splice.
pub const MIN_BODY: u64 = 128 * 1024;

/// Idle pipes a worker keeps for the next transfer.
const IDLE_PIPES: usize = 64;

/// A pipe and how many bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    held: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let (read, write) = rustix::pipe::pipe_with(flags)?;
        // Over the unprivileged limit (fs.pipe-max-size, fs.pipe-user-pages-soft) the kernel
        // refuses; the pipe keeps its default size, which only means more, smaller moves.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, size);
        let size = rustix::pipe::fcntl_getpipe_size(&write)?;
        Ok(Pipe {
            read,
            write,
            size,
            held: 0,
        })
    }
}

/// A worker's idle pipes, all of one size.
pub struct Pipes {
    size: usize,
    idle: Vec<Pipe>,
}

impl Pipes {
    pub fn new(size: usize) -> Pipes {
        Pipes {
            size: size.min(1 << 20),
            idle: Vec::new(),
        }
    }

    /// An empty pipe; `None` when none can be made (out of file descriptors), in which case
    /// the caller relays through its buffer.
    pub fn take(cell: &RefCell<Pipes>) -> Option<Pipe> {
        let mut pipes = cell.borrow_mut();
        if let Some(p) = pipes.idle.pop() {
            return Some(p);
        }
        Pipe::new(pipes.size).ok()
    }

    /// Keeps an empty pipe for later; one still holding bytes is closed.
    pub fn give(cell: &RefCell<Pipes>, pipe: Pipe) {
        let mut pipes = cell.borrow_mut();
        if pipe.held == 0 && pipes.idle.len() < IDLE_PIPES {
            pipes.idle.push(pipe);
        }
    }
}

/// Bytes moved so far, exact whatever the outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Read from the upstream socket.
    pub read: u64,
    /// Written to the client socket.
    pub written: u64,
    /// Time spent waiting for the upstream to send.
    pub waited: Duration,
}

/// Why a transfer stopped short.
#[derive(Debug)]
pub enum Failure {
    /// The upstream failed; every byte read from it was written to the client first.
    Upstream(UpstreamFailure),
    /// The client stopped taking bytes (error or `send_timeout`).
    Client,
}

#[derive(Debug)]
pub enum UpstreamFailure {
    Timeout,
    Eof,
    Io(io::Error),
}

pub struct Timeouts {
    /// Longest wait for the upstream to send more.
    pub read: Duration,
    /// Longest wait for the client to take more.
    pub send: Duration,
}

/// A socket switched to non-blocking for one transfer, and a duplicate of its descriptor
/// for the ring's polls: a poll abandoned at a timeout holds the duplicate until the kernel
/// lets go, however soon the transfer's sockets are closed. Dropping it makes the socket
/// blocking again for the ring's reads and writes.
struct Ready<'a> {
    sock: BorrowedFd<'a>,
    fd: Rc<OwnedFd>,
}

impl<'a> Ready<'a> {
    fn new(sock: BorrowedFd<'a>) -> io::Result<Ready<'a>> {
        let dup = rustix::io::fcntl_dupfd_cloexec(sock, 0)?;
        rustix::io::ioctl_fionbio(sock, true)?;
        Ok(Ready {
            sock,
            fd: Rc::new(dup),
        })
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        let _ = rustix::io::ioctl_fionbio(self.sock, false);
    }
}

/// The two sockets of a transfer, ready for non-blocking splices.
pub struct Link<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    source: Ready<'a>,
    sink: Ready<'a>,
}

impl<'a> Link<'a> {
    /// Prepares `src` (an upstream socket positioned at a body) and `dst` (the client
    /// socket). An error (such as no descriptor left for the duplicates) means nothing was
    /// touched and the caller relays through its buffer.
    pub fn new(src: BorrowedFd<'a>, dst: BorrowedFd<'a>) -> io::Result<Link<'a>> {
        Ok(Link {
            src,
            dst,
            source: Ready::new(src)?,
            sink: Ready::new(dst)?,
        })
    }

    /// Moves exactly `len` bytes from the upstream to the client through `pipe`. On an
    /// upstream failure the bytes already in the pipe are written to the client before
    /// returning, so `progress.written == progress.read` unless the client failed; the pipe
    /// is empty then, as after success.
    pub async fn transfer(
        &self,
        pipe: &mut Pipe,
        len: u64,
        timeouts: &Timeouts,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let (src, dst) = (self.src, self.dst);
        let mut left = len;
        let mut failed: Option<UpstreamFailure> = None;
        loop {
            // Fill the pipe as far as the upstream has bytes now.
            let mut source_blocked = false;
            if failed.is_none() && left > 0 && pipe.held < pipe.size {
                match fill(src, pipe, left) {
                    Ok(n) => {
                        left -= n;
                        progress.read += n;
                    }
                    Err(Step::WouldBlock) => source_blocked = true,
                    Err(Step::Failed(f)) => failed = Some(f),
                }
            }
            // Drain it as far as the client takes bytes now.
            let mut sink_blocked = false;
            if pipe.held > 0 {
                match drain(dst, pipe) {
                    Ok(n) => progress.written += n,
                    Err(Step::WouldBlock) => sink_blocked = true,
                    Err(Step::Failed(_)) => return Err(Failure::Client),
                }
            }
            if pipe.held == 0 {
                if let Some(f) = failed {
                    return Err(Failure::Upstream(f));
                }
                if left == 0 {
                    return Ok(());
                }
            }
            // Neither side can move: wait for the one that holds the transfer up.
            if sink_blocked {
                let moved = wait(&self.sink.fd, libc::POLLOUT, timeouts.send, || {
                    drain(dst, pipe)
                });
                progress.written += moved.await.map_err(|_| Failure::Client)?;
            } else if source_blocked && pipe.held == 0 {
                let since = Instant::now();
                let moved = wait(&self.source.fd, libc::POLLIN, timeouts.read, || {
                    fill(src, pipe, left)
                });
                let moved = moved.await;
                progress.waited += since.elapsed();
                match moved {
                    Ok(n) => {
                        left -= n;
                        progress.read += n;
                    }
                    Err(f) => failed = Some(f),
                }
            }
        }
    }
}

enum Step {
    WouldBlock,
    Failed(UpstreamFailure),
}

fn step(e: Errno) -> Step {
    if e == Errno::AGAIN {
        Step::WouldBlock
    } else {
        Step::Failed(UpstreamFailure::Io(e.into()))
    }
}

/// One non-blocking move from the upstream socket into the pipe.
fn fill(src: BorrowedFd<'_>, pipe: &mut Pipe, left: u64) -> Result<u64, Step> {
    let room = pipe.size - pipe.held;
    let want = usize::try_from(left).map_or(room, |l| l.min(room));
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    match retry_intr(|| rustix::pipe::splice(src, None, pipe.write.as_fd(), None, want, flags)) {
        Ok(0) => Err(Step::Failed(UpstreamFailure::Eof)),
        Ok(n) => {
            pipe.held += n;
            Ok(n as u64)
        }
        Err(e) => Err(step(e)),
    }
}

/// One non-blocking move from the pipe into the client socket.
fn drain(dst: BorrowedFd<'_>, pipe: &mut Pipe) -> Result<u64, Step> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    match retry_intr(|| rustix::pipe::splice(pipe.read.as_fd(), None, dst, None, pipe.held, flags))
    {
        Ok(0) => Err(Step::Failed(UpstreamFailure::Eof)),
        Ok(n) => {
            pipe.held = pipe.held.saturating_sub(n);
            Ok(n as u64)
        }
        Err(e) => Err(step(e)),
    }
}

fn retry_intr(mut f: impl FnMut() -> Result<usize, Errno>) -> Result<usize, Errno> {
    loop {
        match f() {
            Err(Errno::INTR) => {}
            r => return r,
        }
    }
}

/// Waits until `op` moves bytes (readiness reported, and the move did not find the socket
/// blocked after all), or `limit` passes with no move.
async fn wait(
    fd: &Rc<OwnedFd>,
    events: i16,
    limit: Duration,
    mut op: impl FnMut() -> Result<u64, Step>,
) -> Result<u64, UpstreamFailure> {
    let attempt = async {
        loop {
            rt::net::ready(fd, events)
                .await
                .map_err(UpstreamFailure::Io)?;
            match op() {
                Ok(n) => return Ok(n),
                Err(Step::WouldBlock) => {}
                Err(Step::Failed(f)) => return Err(f),
            }
        }
    };
    timeout(limit, attempt)
        .await
        .unwrap_or(Err(UpstreamFailure::Timeout))
}
