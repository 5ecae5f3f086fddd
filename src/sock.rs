//! Socket calls made directly on a ring socket, beside the ring.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::rt::net::TcpStream;

/// Sets `TCP_NOTSENT_LOWAT`: a write to `sock` takes bytes only while fewer than `bytes` of
/// those written before are still unsent, and the socket counts as writable again once
/// fewer than half are. The rest of a write waits in tailgate's buffer instead of the socket's.
/// `0` puts back the kernel's default (`net.ipv4.tcp_notsent_lowat`, no limit unless set).
#[allow(unsafe_code)]
pub fn set_notsent_lowat(sock: &TcpStream, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open for as long as `sock` is borrowed; the option value is a
    // C int that outlives the call, and its size is the length passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes longer than this go to the ring.
const SEND_NOW_MAX: usize = 16 * 1024;

/// Sends what the socket takes at once, without waiting and without the ring: `Ok(0)`
/// when it has no room. A small write to a socket with room then costs one system call,
/// where the ring would cost a submission, a completion and an event-loop turn.
pub fn send_now(sock: &TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    if bufs.iter().map(|b| b.len()).sum::<usize>() > SEND_NOW_MAX {
        return Ok(0);
    }
    let fd = sock.as_fd();
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let res = match bufs {
        [one] => socket2::SockRef::from(&fd).send_with_flags(one, flags),
        _ => socket2::SockRef::from(&fd).send_vectored_with_flags(bufs, flags),
    };
    match res {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Writes all of `buf`: what the socket takes at once by [`send_now`], the rest through the
/// ring. Returns the buffer.
pub async fn write_all(sock: &TcpStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let sent = match send_now(sock, &[io::IoSlice::new(&buf)]) {
        Ok(n) => n,
        Err(e) => return (Err(e), buf),
    };
    if sent == buf.len() {
        return (Ok(()), buf);
    }
    let end = buf.len();
    sock.write_all(buf, sent..end).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (TcpStream::from_std(ours), theirs)
    }

    #[test]
    fn sends_small_writes_at_once_and_leaves_the_rest_to_the_ring() {
        crate::rt::start(async {
            let (ours, mut theirs) = pair();
            let (a, b) = (b"GET / HTTP/1.1\r\n".to_vec(), b"\r\n".to_vec());
            let both = [io::IoSlice::new(&a), io::IoSlice::new(&b)];
            assert_eq!(send_now(&ours, &both).unwrap(), a.len() + b.len());
            let mut got = vec![0; a.len() + b.len()];
            theirs.read_exact(&mut got).unwrap();
            assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");

            let long = vec![7u8; SEND_NOW_MAX + 1];
            assert_eq!(send_now(&ours, &[io::IoSlice::new(&long)]).unwrap(), 0);

            // A peer that reads nothing fills the socket: then nothing is sent, no error.
            let chunk = vec![1u8; SEND_NOW_MAX];
            let mut total = 0usize;
            loop {
                let n = send_now(&ours, &[io::IoSlice::new(&chunk)]).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
                assert!(total < 1 << 30, "a socket buffer is not a gigabyte");
            }
            assert!(total > 0);
        })
        .unwrap();
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        crate::rt::start(async {
            let (ours, theirs) = pair();
            drop(theirs);
            let byte = [io::IoSlice::new(b"x")];
            // The first send may still be taken (the reset arrives in answer to it).
            let mut failed = false;
            for _ in 0..100 {
                if send_now(&ours, &byte).is_err() {
                    failed = true;
                    break;
                }
                std::hint::spin_loop();
            }
            assert!(
                failed,
                "sending to a closed peer fails with EPIPE or ECONNRESET"
            );
        })
        .unwrap();
    }
}
