//! TCP sockets on the ring. Buffers are lent to the kernel and come back with the result,
//! `(result, buffer)`; a socket's descriptor is shared with its operations in flight, so it
//! is closed only when the socket and every such operation are gone.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::driver::submit;

fn result(res: i32) -> io::Result<usize> {
    usize::try_from(res).map_err(|_| io::Error::from_raw_os_error(res.saturating_neg()))
}

/// Why a buffer range cannot be lent: it must lie within the buffer's capacity, and a read
/// must start within its initialised bytes.
fn bad_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "buffer range out of bounds")
}

/// A connected TCP socket.
pub struct TcpStream {
    fd: Rc<OwnedFd>,
}

impl TcpStream {
    pub fn from_std(s: std::net::TcpStream) -> TcpStream {
        TcpStream {
            fd: Rc::new(s.into()),
        }
    }

    /// Connects to `addr` through the ring.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        let fd = Rc::new(OwnedFd::from(sock));
        let addr = Box::new(SockAddr::from(addr));
        let entry =
            opcode::Connect::new(types::Fd(fd.as_raw_fd()), addr.as_ptr(), addr.len()).build();
        // SAFETY: the address is the boxed `SockAddr` and the descriptor `fd`, both lent.
        #[allow(unsafe_code)]
        let op = unsafe { submit(entry, (Rc::clone(&fd), addr)) };
        let (res, _) = op.await;
        result(res)?;
        Ok(TcpStream { fd })
    }

    /// Reads into `buf[range]`, which must start at or before `buf.len()` and end within its
    /// capacity; the bytes read extend `buf.len()` as far as they reach.
    pub async fn read(&self, buf: Vec<u8>, range: Range<usize>) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = buf;
        if range.start > buf.len() || range.start > range.end || range.end > buf.capacity() {
            return (Err(bad_range()), buf);
        }
        let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
        // SAFETY (pointer arithmetic): `range.start` is within the allocation's capacity.
        let ptr = buf.as_mut_ptr().wrapping_add(range.start);
        let entry = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, len).build();
        // SAFETY: the entry points into `buf`'s heap block, `len` bytes from `range.start`
        // within its capacity, and at `fd`; both are lent.
        #[allow(unsafe_code)]
        let op = unsafe { submit(entry, (Rc::clone(&self.fd), buf)) };
        let (res, (_, mut buf)) = op.await;
        let res = result(res);
        if let Ok(n) = res {
            let end = range.start + n.min(range.len());
            if end > buf.len() {
                // SAFETY: bytes up to `range.start` were initialised (it is at most the length
                // the buffer had), and the kernel wrote the `n` after it.
                #[allow(unsafe_code)]
                unsafe {
                    buf.set_len(end)
                };
            }
        }
        (res, buf)
    }

    /// Sends `buf[range]` once (the socket may take less).
    pub async fn write(&self, buf: Vec<u8>, range: Range<usize>) -> (io::Result<usize>, Vec<u8>) {
        if range.start > range.end || range.end > buf.len() {
            return (Err(bad_range()), buf);
        }
        let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
        let ptr = buf.as_ptr().wrapping_add(range.start);
        let entry = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the entry points into `buf`'s initialised bytes and at `fd`, both lent.
        #[allow(unsafe_code)]
        let op = unsafe { submit(entry, (Rc::clone(&self.fd), buf)) };
        let (res, (_, buf)) = op.await;
        (result(res), buf)
    }

    /// Sends `buf[range]` whole, or fails (a zero-byte send counts as a failure).
    pub async fn write_all(&self, buf: Vec<u8>, range: Range<usize>) -> (io::Result<()>, Vec<u8>) {
        let mut buf = buf;
        let mut at = range.start;
        while at < range.end {
            let (res, back) = self.write(buf, at..range.end).await;
            buf = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => at += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends the buffers in order with one `writev` (the socket may take less).
    pub async fn writev(&self, bufs: Vec<Vec<u8>>) -> (io::Result<usize>, Vec<Vec<u8>>) {
        let iov: Box<[libc::iovec]> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        let count = u32::try_from(iov.len()).unwrap_or(u32::MAX);
        let entry =
            opcode::Writev::new(types::Fd(self.fd.as_raw_fd()), iov.as_ptr(), count).build();
        // SAFETY: the entry points at the boxed iovec array, whose entries point into the
        // buffers' heap blocks, and at `fd`: all lent.
        #[allow(unsafe_code)]
        let op = unsafe { submit(entry, (Rc::clone(&self.fd), iov, bufs)) };
        let (res, (_, _, bufs)) = op.await;
        (result(res), bufs)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        SockRef::from(&*self.fd).shutdown(how)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        SockRef::from(&*self.fd).set_nodelay(on)
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening TCP socket.
pub struct TcpListener {
    fd: Rc<OwnedFd>,
}

impl TcpListener {
    pub fn from_std(l: std::net::TcpListener) -> TcpListener {
        TcpListener {
            fd: Rc::new(l.into()),
        }
    }

    /// The next connection and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage` (a plain C struct).
        #[allow(unsafe_code)]
        let storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut peer = Box::new(Peer {
            storage,
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        });
        let entry = opcode::Accept::new(
            types::Fd(self.fd.as_raw_fd()),
            std::ptr::from_mut(&mut peer.storage).cast(),
            &raw mut peer.len,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: the address and its length point into the boxed `Peer`, and the
        // descriptor is `fd`: both lent.
        #[allow(unsafe_code)]
        let op = unsafe { submit(entry, (Rc::clone(&self.fd), peer)) };
        let (res, (_, peer)) = op.await;
        let fd = result(res)?;
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
        // SAFETY: `fd` is the socket this accept made, owned by nothing else.
        #[allow(unsafe_code)]
        let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: the kernel wrote the peer's address, `len` bytes of it, into `storage`.
        #[allow(unsafe_code)]
        let addr = unsafe { SockAddr::new(peer.storage, peer.len) };
        let addr = addr
            .as_socket()
            .ok_or_else(|| io::Error::other("accepted a socket that is not IP"))?;
        Ok((TcpStream { fd: Rc::new(sock) }, addr))
    }
}

/// Where an accept writes the peer's address.
struct Peer {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// Waits until `fd` reports one of `events` (`libc::POLLIN`, `POLLOUT`; errors and hang-ups
/// always end the wait).
pub async fn ready(fd: &Rc<OwnedFd>, events: i16) -> io::Result<()> {
    let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events as u16 as u32).build();
    // SAFETY: no memory is lent; the descriptor is.
    #[allow(unsafe_code)]
    let op = unsafe { submit(entry, Rc::clone(fd)) };
    let (res, _) = op.await;
    result(res).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::{spawn, start, time};
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn accept_connect_read_and_write_through_the_ring() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = start(async move {
            let l = TcpListener::from_std(l);
            spawn(async move {
                let (s, peer) = l.accept().await.unwrap();
                assert!(peer.ip().is_loopback());
                let (res, buf) = s.read(Vec::with_capacity(64), 0..64).await;
                let n = res.unwrap();
                let mut reply = b"got ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let end = reply.len();
                let (res, _) = s.write_all(reply, 0..end).await;
                res.unwrap();
            });
            let c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            let (res, _) = c.writev(vec![b"he".to_vec(), b"llo".to_vec()]).await;
            assert_eq!(res.unwrap(), 5);
            let mut buf = b"xx".to_vec();
            buf.reserve(64);
            let mut at = 2;
            while at < 11 {
                let cap = buf.capacity();
                let (res, back) = c.read(buf, at..cap).await;
                buf = back;
                at += res.unwrap();
            }
            buf
        })
        .unwrap();
        assert_eq!(got, b"xxgot hello");
    }

    #[test]
    fn a_read_past_the_initialised_bytes_is_refused_not_submitted() {
        let (ours, _theirs) = pair();
        let res = start(async move {
            let (res, buf) = ours.read(Vec::with_capacity(8), 1..8).await;
            assert!(buf.is_empty());
            res
        })
        .unwrap();
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_dropped_read_keeps_its_buffer_and_socket_until_the_kernel_lets_go() {
        let (ours, mut theirs) = pair();
        start(async move {
            // Cut after 10 ms: the read is abandoned in flight and cancelled.
            let cut = time::timeout(
                Duration::from_millis(10),
                ours.read(Vec::with_capacity(16), 0..16),
            )
            .await;
            assert!(cut.is_err());
            drop(ours);
            time::sleep(Duration::from_millis(10)).await;
        })
        .unwrap();
        // The socket was closed once the cancelled read let go of it.
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(theirs.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn readiness_is_reported() {
        let (ours, mut theirs) = std_pair();
        start(async move {
            let fd = Rc::new(OwnedFd::from(ours));
            spawn(async move {
                time::sleep(Duration::from_millis(5)).await;
                theirs.write_all(b"x").unwrap();
                time::sleep(Duration::from_millis(50)).await;
            });
            ready(&fd, libc::POLLIN).await.unwrap();
            ready(&fd, libc::POLLOUT).await.unwrap();
        })
        .unwrap();
    }

    #[test]
    fn more_operations_than_the_rings_queues_hold_all_complete() {
        // 300 reads in flight (the submission queue holds 256), then 1,200 polls that
        // complete as soon as they are submitted (the completion queue holds 512).
        let pairs: Vec<_> = (0..300).map(|_| pair()).collect();
        let done = start(async move {
            let done = Rc::new(std::cell::Cell::new(0usize));
            let mut theirs = Vec::new();
            for (ours, t) in pairs {
                theirs.push(t);
                let done = Rc::clone(&done);
                spawn(async move {
                    let (res, buf) = ours.read(Vec::with_capacity(4), 0..4).await;
                    assert_eq!((res.unwrap(), &buf[..]), (1, &b"k"[..]));
                    done.set(done.get() + 1);
                });
            }
            crate::rt::yield_now().await;
            for t in &mut theirs {
                t.write_all(b"k").unwrap();
            }
            let (ours, _keep) = std_pair();
            let fd = Rc::new(OwnedFd::from(ours));
            for _ in 0..1200 {
                let (fd, done) = (Rc::clone(&fd), Rc::clone(&done));
                spawn(async move {
                    ready(&fd, libc::POLLOUT).await.unwrap();
                    done.set(done.get() + 1);
                });
            }
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while done.get() < 1500 && std::time::Instant::now() < until {
                time::sleep(Duration::from_millis(5)).await;
            }
            done.get()
        })
        .unwrap();
        assert_eq!(done, 1500);
    }

    fn pair() -> (TcpStream, std::net::TcpStream) {
        let (ours, theirs) = std_pair();
        (TcpStream::from_std(ours), theirs)
    }

    fn std_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        (ours, theirs)
    }
}
