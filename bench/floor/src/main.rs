//! The least a relayed request can cost on one core, on an event loop of its own, on
//! tokio-uring and on monoio, so that `bench/run` (`BENCH_FLOOR=1`) can put numbers on what
//! tailgate's async runtime costs per request (`bench/floor/at-load` compares them at one
//! request rate).
//!
//! Each mode relays the request it reads verbatim to the origin and the origin's response
//! verbatim back, one request at a time per client connection, over one origin connection
//! per client connection (opened at its first request). No routing, no manifest, no
//! signing, no ranges of its own: only the system calls and the event loop a relay cannot
//! do without. Reads go through io_uring; writes are `send(2)` calls, as tailgate makes them.
//!
//! - `ring`: one thread, its own loop over an io_uring (`SINGLE_ISSUER`, `DEFER_TASKRUN`),
//!   a state machine per connection, nothing else: what an event loop of tailgate's own
//!   could approach at best.
//! - `ring-coop`: the same loop on a ring set up as tailgate's (`COOP_TASKRUN` alone), to
//!   tell the set-up's share from the loop's.
//! - `ring-read`: as `ring-coop`, reading with `IORING_OP_READ` (what tokio-uring's
//!   `TcpStream::read` submits) instead of `IORING_OP_RECV`, to tell the operation's share.
//! - `tokio-uring`: the same relay as tasks on tokio-uring's runtime, set up as tailgate's
//!   workers set it up (`COOP_TASKRUN`), reading with `IORING_OP_READ`.
//! - `own-async`: the same async relay (the same code) on the least runtime of one's own
//!   (module `own`), on the same ring set-up and read operation: what tailgate, keeping
//!   its async code, could expect from replacing tokio and tokio-uring.
//! - `monoio`: the same async relay on monoio, a thread-per-core io_uring runtime that
//!   waits in `io_uring_enter` (no epoll, no tokio): what a runtime off the shelf gives.
//!
//! Not a server: requests are framed by their blank line (no bodies), responses by
//! `Content-Length`; anything else ends the connection.
//!
//! usage: tailgate-floor ring|ring-coop|ring-read|tokio-uring|own-async|monoio LISTEN_PORT ORIGIN_PORT

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use io_uring::{opcode, types, IoUring};

/// Bytes read at a time, from either side; a request head must fit.
const CAP: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, mode, listen, origin] => listen
            .parse::<u16>()
            .ok()
            .zip(origin.parse::<u16>().ok())
            .map(|(l, o)| (mode.as_str(), l, o)),
        _ => None,
    };
    let Some((mode, listen, origin)) = parsed else {
        eprintln!(
            "usage: tailgate-floor ring|ring-coop|ring-read|tokio-uring|own-async|monoio LISTEN_PORT ORIGIN_PORT"
        );
        std::process::exit(2);
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    let origin = SocketAddr::from(([127, 0, 0, 1], origin));
    let result = match mode {
        "ring" => ring::run(listen, origin, ring::Setup::Deferred, ring::Op::Recv),
        "ring-coop" => ring::run(listen, origin, ring::Setup::Coop, ring::Op::Recv),
        "ring-read" => ring::run(listen, origin, ring::Setup::Coop, ring::Op::Read),
        "tokio-uring" => on_tokio_uring::run(listen, origin),
        "own-async" => own::run(listen, origin),
        "monoio" => on_monoio::run(listen, origin),
        _ => Err(io::Error::other(format!("unknown mode {mode}"))),
    };
    if let Err(e) = result {
        eprintln!("tailgate-floor: {e}");
        std::process::exit(1);
    }
}

/// Where a head ends (just past its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The whole length of a response (head and body) from its head's `Content-Length`.
fn response_len(head: &[u8]) -> io::Result<usize> {
    let bad = || io::Error::other("response without a Content-Length");
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let value = text
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then_some(value)
        })
        .ok_or_else(bad)?;
    let body: usize = value.trim().parse().map_err(|_| bad())?;
    Ok(head.len() + body)
}

/// Writes all of `bytes` with `send(2)` (the sockets are blocking; a 4 KiB response to a
/// reading client never waits).
fn send_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `fd` is a socket owned by the caller for the duration of the call, and the
        // pointer and length describe the live slice `bytes`.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = bytes.get(n.unsigned_abs()..).unwrap_or_default();
    }
    Ok(())
}

fn connect(origin: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(origin)?;
    s.set_nodelay(true)?;
    Ok(s)
}

mod ring {
    use super::*;

    /// `user_data` of the accept operation; a connection's reads carry its index, shifted
    /// left once, with the low bit set for the origin side.
    const ACCEPT: u64 = u64::MAX;

    struct Conn {
        client: RawFd,
        origin: Option<RawFd>,
        op: Op,
        buf: Vec<u8>,
        filled: usize,
        /// Bytes of the response still to relay, once its head is read.
        left: Option<usize>,
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            // SAFETY: the connection owns both descriptors and no operation on them is in
            // flight (a connection is dropped when its one read completes).
            unsafe {
                libc::close(self.client);
                if let Some(o) = self.origin {
                    libc::close(o);
                }
            }
        }
    }

    pub(super) enum Setup {
        /// `SINGLE_ISSUER` and `DEFER_TASKRUN`: completion work runs only when the loop
        /// waits for it.
        Deferred,
        /// `COOP_TASKRUN`, as tailgate's workers set up their rings.
        Coop,
    }

    /// The operation reads are made with.
    #[derive(Clone, Copy)]
    pub(super) enum Op {
        Recv,
        Read,
    }

    pub(super) fn run(
        listen: SocketAddr,
        origin: SocketAddr,
        setup: Setup,
        op: Op,
    ) -> io::Result<()> {
        let listener = TcpListener::bind(listen)?;
        let mut builder = IoUring::builder();
        match setup {
            Setup::Deferred => builder.setup_single_issuer().setup_defer_taskrun(),
            Setup::Coop => builder.setup_coop_taskrun(),
        };
        let mut ring: IoUring = builder.build(4096)?;
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut queued = vec![accept(listener.as_raw_fd())];
        loop {
            for entry in queued.drain(..) {
                // SAFETY: every buffer an entry points into is a connection's `buf`, whose
                // heap block stays put and alive until that entry completes (a connection
                // has one read in flight and is dropped only on its completion).
                while unsafe { ring.submission().push(&entry) }.is_err() {
                    ring.submit()?;
                }
            }
            ring.submit_and_wait(1)?;
            for (data, res) in ring.completion().map(|c| (c.user_data(), c.result())) {
                if data == ACCEPT {
                    queued.push(accept(listener.as_raw_fd()));
                    if res < 0 {
                        continue;
                    }
                    let client = res;
                    let one: libc::c_int = 1;
                    // SAFETY: `client` is the socket just accepted; the option value is a
                    // live c_int of the size given.
                    unsafe {
                        libc::setsockopt(
                            client,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            (&one as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        );
                    }
                    let conn = Conn {
                        client,
                        origin: None,
                        op,
                        buf: vec![0; CAP],
                        filled: 0,
                        left: None,
                    };
                    let i = match free.pop() {
                        Some(i) => {
                            conns[i] = Some(conn);
                            i
                        }
                        None => {
                            conns.push(Some(conn));
                            conns.len() - 1
                        }
                    };
                    if let Some(c) = conns[i].as_mut() {
                        queued.push(read(c.client, c, (i as u64) << 1));
                    }
                    continue;
                }
                let i = (data >> 1) as usize;
                let from_origin = data & 1 == 1;
                let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                    continue;
                };
                let next = if res <= 0 {
                    Err(io::Error::other("closed"))
                } else {
                    c.filled += res.unsigned_abs() as usize;
                    if from_origin {
                        on_response(c, data)
                    } else {
                        on_request(c, data, origin)
                    }
                };
                match next {
                    Ok(entry) => queued.push(entry),
                    Err(_) => {
                        conns[i] = None;
                        free.push(i);
                    }
                }
            }
        }
    }

    fn accept(fd: RawFd) -> io_uring::squeue::Entry {
        opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT)
    }

    /// A read into what is left of `c.buf`, from `fd`.
    fn read(fd: RawFd, c: &mut Conn, data: u64) -> io_uring::squeue::Entry {
        let rest = &mut c.buf[c.filled..];
        let (ptr, len) = (rest.as_mut_ptr(), rest.len() as u32);
        match c.op {
            Op::Recv => opcode::Recv::new(types::Fd(fd), ptr, len).build(),
            Op::Read => opcode::Read::new(types::Fd(fd), ptr, len).build(),
        }
        .user_data(data)
    }

    fn on_request(
        c: &mut Conn,
        data: u64,
        origin: SocketAddr,
    ) -> io::Result<io_uring::squeue::Entry> {
        if head_end(&c.buf[..c.filled]).is_none() {
            if c.filled == CAP {
                return Err(io::Error::other("request head too long"));
            }
            return Ok(read(c.client, c, data));
        }
        let o = match c.origin {
            Some(o) => o,
            None => {
                let o = connect(origin)?.into_raw_fd();
                c.origin = Some(o);
                o
            }
        };
        send_all(o, &c.buf[..c.filled])?;
        c.filled = 0;
        c.left = None;
        Ok(read(o, c, data | 1))
    }

    fn on_response(c: &mut Conn, data: u64) -> io::Result<io_uring::squeue::Entry> {
        let o = c.origin.ok_or_else(|| io::Error::other("no origin"))?;
        let left = match c.left {
            Some(left) => left,
            None => match head_end(&c.buf[..c.filled]) {
                Some(end) => response_len(&c.buf[..end])?,
                None if c.filled == CAP => return Err(io::Error::other("response head too long")),
                None => return Ok(read(o, c, data)),
            },
        };
        let n = c.filled.min(left);
        send_all(c.client, &c.buf[..n])?;
        c.filled = 0;
        if left == n {
            c.left = None;
            return Ok(read(c.client, c, data & !1));
        }
        c.left = Some(left - n);
        Ok(read(o, c, data))
    }
}

/// A client or origin connection of the async modes.
trait Sock: Sized {
    fn fd(&self) -> RawFd;

    /// Reads more into `buf` after its first `filled` bytes; 0 at the end of the stream.
    fn read(
        &mut self,
        buf: Vec<u8>,
        filled: usize,
    ) -> impl std::future::Future<Output = (io::Result<usize>, Vec<u8>)>;

    fn connect(origin: SocketAddr) -> io::Result<Self>;
}

/// The async modes' relay: requests from `client` to the origin, responses back.
async fn relay<S: Sock>(mut client: S, origin: SocketAddr) -> io::Result<()> {
    let mut up: Option<S> = None;
    let mut buf = vec![0u8; CAP];
    loop {
        let mut filled = 0;
        while head_end(&buf[..filled]).is_none() {
            if filled == CAP {
                return Err(io::Error::other("request head too long"));
            }
            let (res, b) = client.read(buf, filled).await;
            buf = b;
            match res? {
                0 => return Ok(()),
                n => filled += n,
            }
        }
        let mut o = match up.take() {
            Some(o) => o,
            None => S::connect(origin)?,
        };
        send_all(o.fd(), &buf[..filled])?;
        filled = 0;
        let mut left = None;
        loop {
            let (res, b) = o.read(buf, filled).await;
            buf = b;
            match res? {
                0 => return Err(io::Error::other("origin closed")),
                n => filled += n,
            }
            let total = match left {
                Some(left) => left,
                None => match head_end(&buf[..filled]) {
                    Some(end) => response_len(&buf[..end])?,
                    None if filled == CAP => {
                        return Err(io::Error::other("response head too long"))
                    }
                    None => continue,
                },
            };
            let n = filled.min(total);
            send_all(client.fd(), &buf[..n])?;
            filled = 0;
            if n == total {
                break;
            }
            left = Some(total - n);
        }
        up = Some(o);
    }
}

mod on_tokio_uring {
    use super::*;
    use tokio_uring::buf::BoundedBuf;
    use tokio_uring::net::{TcpListener, TcpStream};

    pub(super) fn run(listen: SocketAddr, origin: SocketAddr) -> io::Result<()> {
        let mut coop = tokio_uring::uring_builder();
        coop.setup_coop_taskrun();
        tokio_uring::builder()
            .uring_builder(&coop)
            .start(async move {
                let listener = TcpListener::bind(listen)?;
                loop {
                    let (client, _) = listener.accept().await?;
                    if client.set_nodelay(true).is_ok() {
                        tokio_uring::spawn(async move {
                            let _ = relay(client, origin).await;
                        });
                    }
                }
            })
    }

    impl Sock for TcpStream {
        fn fd(&self) -> RawFd {
            self.as_raw_fd()
        }

        async fn read(&mut self, buf: Vec<u8>, filled: usize) -> (io::Result<usize>, Vec<u8>) {
            let (res, slice) = TcpStream::read(self, buf.slice(filled..)).await;
            (res, slice.into_inner())
        }

        fn connect(origin: SocketAddr) -> io::Result<Self> {
            Ok(TcpStream::from_std(connect(origin)?))
        }
    }
}

mod on_monoio {
    use super::*;
    use monoio::buf::{IoBufMut, SliceMut};
    use monoio::io::AsyncReadRent;
    use monoio::net::{TcpListener, TcpStream};

    pub(super) fn run(listen: SocketAddr, origin: SocketAddr) -> io::Result<()> {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::bind(listen)?;
            loop {
                let (client, _) = listener.accept().await?;
                if client.set_nodelay(true).is_ok() {
                    monoio::spawn(async move {
                        let _ = relay(client, origin).await;
                    });
                }
            }
        })
    }

    impl Sock for TcpStream {
        fn fd(&self) -> RawFd {
            self.as_raw_fd()
        }

        async fn read(&mut self, buf: Vec<u8>, filled: usize) -> (io::Result<usize>, Vec<u8>) {
            let (res, slice): (_, SliceMut<Vec<u8>>) =
                AsyncReadRent::read(self, buf.slice_mut(filled..)).await;
            (res, slice.into_inner())
        }

        fn connect(origin: SocketAddr) -> io::Result<Self> {
            TcpStream::from_std(connect(origin)?)
        }
    }
}

/// The least an async runtime of one's own needs to run the relay: tasks in a slab polled
/// from a queue of the ones woken, wakers that are task indices, operations whose futures
/// own their buffers (left to the slot until the completion if dropped in flight), one
/// `io_uring_enter` per turn that submits and waits.
mod own {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::pin::Pin;
    use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

    use super::*;

    type Task = Pin<Box<dyn Future<Output = ()>>>;

    enum Slot {
        Free,
        Waiting(Option<Waker>),
        Done(i32),
        /// Its future was dropped in flight: the buffer waits here for the completion.
        Abandoned {
            _buf: Vec<u8>,
        },
    }

    struct Runtime {
        ring: IoUring,
        ops: Vec<Slot>,
        free_ops: Vec<usize>,
        tasks: Vec<Option<Task>>,
        free_tasks: Vec<usize>,
    }

    thread_local! {
        static RT: RefCell<Option<Runtime>> = const { RefCell::new(None) };
        static READY: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
    }

    fn with<R>(f: impl FnOnce(&mut Runtime) -> R) -> R {
        RT.with(|rt| {
            let mut rt = rt.borrow_mut();
            let rt = rt
                .as_mut()
                .unwrap_or_else(|| unreachable!("outside the runtime"));
            f(rt)
        })
    }

    // A waker is the index of its task; waking queues it on this thread.
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        |data| RawWaker::new(data, &VTABLE),
        |data| wake(data as usize),
        |data| wake(data as usize),
        |_| {},
    );

    fn wake(task: usize) {
        READY.with(|r| r.borrow_mut().push_back(task));
    }

    fn waker(task: usize) -> Waker {
        // SAFETY: the vtable's functions only copy the index or queue it; none dereferences
        // the data pointer.
        unsafe { Waker::from_raw(RawWaker::new(task as *const (), &VTABLE)) }
    }

    pub(super) fn spawn(f: impl Future<Output = ()> + 'static) {
        let task = with(|rt| match rt.free_tasks.pop() {
            Some(i) => {
                rt.tasks[i] = Some(Box::pin(f));
                i
            }
            None => {
                rt.tasks.push(Some(Box::pin(f)));
                rt.tasks.len() - 1
            }
        });
        wake(task);
    }

    /// An operation in flight, owning the buffer its entry points into.
    struct Op {
        slot: usize,
        buf: Option<Vec<u8>>,
    }

    /// Submits `entry` (whose buffer, if any, is `buf`'s heap block).
    fn submit(entry: io_uring::squeue::Entry, buf: Option<Vec<u8>>) -> Op {
        with(|rt| {
            let slot = match rt.free_ops.pop() {
                Some(i) => {
                    rt.ops[i] = Slot::Waiting(None);
                    i
                }
                None => {
                    rt.ops.push(Slot::Waiting(None));
                    rt.ops.len() - 1
                }
            };
            let entry = entry.user_data(slot as u64);
            // SAFETY: the entry's buffer is `buf`'s heap block, which the returned Op owns
            // and, if dropped before the completion, leaves in the slot until it arrives.
            while unsafe { rt.ring.submission().push(&entry) }.is_err() {
                if rt.ring.submit().is_err() {
                    break;
                }
            }
            Op { slot, buf }
        })
    }

    impl Future for Op {
        type Output = (i32, Option<Vec<u8>>);

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let slot = self.slot;
            let done = with(|rt| match &mut rt.ops[slot] {
                Slot::Done(res) => {
                    let res = *res;
                    rt.ops[slot] = Slot::Free;
                    rt.free_ops.push(slot);
                    Some(res)
                }
                Slot::Waiting(w) => {
                    *w = Some(cx.waker().clone());
                    None
                }
                Slot::Free | Slot::Abandoned { .. } => {
                    unreachable!("an op polled after completion")
                }
            });
            match done {
                Some(res) => {
                    self.slot = usize::MAX;
                    Poll::Ready((res, self.buf.take()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl Drop for Op {
        fn drop(&mut self) {
            if self.slot == usize::MAX {
                return;
            }
            let buf = self.buf.take().unwrap_or_default();
            with(|rt| {
                if let Slot::Done(_) = rt.ops[self.slot] {
                    // Completed, never polled since: the kernel is done with the buffer.
                    rt.ops[self.slot] = Slot::Free;
                    rt.free_ops.push(self.slot);
                } else {
                    rt.ops[self.slot] = Slot::Abandoned { _buf: buf };
                }
            });
        }
    }

    pub(super) struct Conn(OwnedFd);

    impl Sock for Conn {
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }

        async fn read(&mut self, mut buf: Vec<u8>, filled: usize) -> (io::Result<usize>, Vec<u8>) {
            let rest = &mut buf[filled..];
            let (ptr, len) = (rest.as_mut_ptr(), rest.len() as u32);
            let entry = opcode::Read::new(types::Fd(self.fd()), ptr, len).build();
            let (res, buf) = submit(entry, Some(buf)).await;
            let buf = buf.unwrap_or_default();
            match usize::try_from(res) {
                Ok(n) => (Ok(n), buf),
                Err(_) => (Err(io::Error::from_raw_os_error(-res)), buf),
            }
        }

        fn connect(origin: SocketAddr) -> io::Result<Self> {
            Ok(Conn(connect(origin)?.into()))
        }
    }

    pub(super) fn run(listen: SocketAddr, origin: SocketAddr) -> io::Result<()> {
        let listener = TcpListener::bind(listen)?;
        let ring = IoUring::builder().setup_coop_taskrun().build(4096)?;
        RT.with(|rt| {
            *rt.borrow_mut() = Some(Runtime {
                ring,
                ops: Vec::new(),
                free_ops: Vec::new(),
                tasks: Vec::new(),
                free_tasks: Vec::new(),
            })
        });
        spawn(async move {
            loop {
                let entry = opcode::Accept::new(
                    types::Fd(listener.as_raw_fd()),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
                .build();
                let (fd, _) = submit(entry, None).await;
                if fd < 0 {
                    continue;
                }
                // SAFETY: `fd` is the socket the accept just made, owned by nothing else.
                let client = std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
                if client.set_nodelay(true).is_ok() {
                    spawn(async move {
                        let _ = relay(Conn(client.into()), origin).await;
                    });
                }
            }
        });
        let mut woken = Vec::new();
        loop {
            while let Some(i) = READY.with(|r| r.borrow_mut().pop_front()) {
                let Some(mut task) = with(|rt| rt.tasks.get_mut(i).and_then(Option::take)) else {
                    continue;
                };
                let w = waker(i);
                if task
                    .as_mut()
                    .poll(&mut Context::from_waker(&w))
                    .is_pending()
                {
                    with(|rt| rt.tasks[i] = Some(task));
                } else {
                    with(|rt| rt.free_tasks.push(i));
                }
            }
            with(|rt| -> io::Result<()> {
                rt.ring.submit_and_wait(1)?;
                let Runtime {
                    ring,
                    ops,
                    free_ops,
                    ..
                } = rt;
                for c in ring.completion() {
                    let slot = c.user_data() as usize;
                    match std::mem::replace(&mut ops[slot], Slot::Done(c.result())) {
                        Slot::Waiting(w) => woken.extend(w),
                        Slot::Abandoned { .. } => {
                            ops[slot] = Slot::Free;
                            free_ops.push(slot);
                        }
                        Slot::Free | Slot::Done(_) => {}
                    }
                }
                Ok(())
            })?;
            woken.drain(..).for_each(Waker::wake);
        }
    }
}
