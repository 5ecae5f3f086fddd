//! One upstream connection: plain TCP or TLS (rustls driven by hand over owned buffers,
//! since tokio-uring has no AsyncRead/AsyncWrite). Reads append into the spare capacity of
//! the caller's buffer and hand it back, `(result, buf)` style; the plain path never copies.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// TLS ciphertext read size: four maximal records, so that a body arriving faster than it
/// is relayed costs a socket read per 64 KiB, not per record. Held by every upstream TLS
/// connection, so bounded by `keepalive` like the connections themselves.
const TLS_READ: usize = 64 * 1024;

/// Room for one maximal record and its header, as first capacity of outgoing ciphertext.
const TLS_RECORD: usize = 16 * 1024 + 5;

/// The most plaintext one TLS record carries.
const MAX_PLAINTEXT: usize = 16 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

pub struct Tls {
    sock: TcpStream,
    conn: ClientConnection,
    /// Ciphertext read from the socket; `[pos, len)` is not yet fed to rustls.
    inbuf: Vec<u8>,
    pos: usize,
    /// A failure met after some plaintext was returned: the next read reports it.
    failed: Option<io::Error>,
}

impl Transport {
    /// Connects (no timeout here: the caller wraps it) and, for TLS, completes the handshake.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<(&Arc<ClientConfig>, &str)>,
    ) -> io::Result<Transport> {
        let sock = TcpStream::connect(addr).await?;
        let _ = sock.set_nodelay(true);
        let Some((config, host)) = tls else {
            return Ok(Transport::Plain(sock));
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        let mut tls = Box::new(Tls {
            sock,
            conn,
            inbuf: Vec::with_capacity(TLS_READ),
            pos: 0,
            failed: None,
        });
        if let Err(e) = tls.handshake().await {
            let _ = tls.sock.shutdown(Shutdown::Both);
            return Err(e);
        }
        Ok(Transport::Tls(tls))
    }

    /// Reads at most `max` bytes into `buf[len..capacity]`; `Ok(0)` is end of stream (or no
    /// room: callers never ask with a full buffer or `max == 0`).
    pub async fn read(&mut self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        let end = buf.capacity().min(start.saturating_add(max));
        if start >= end {
            return (Ok(0), buf);
        }
        match self {
            Transport::Plain(s) => {
                let (res, slice) = s.read(buf.slice(start..end)).await;
                (res, slice.into_inner())
            }
            Transport::Tls(t) => t.read(buf, end).await,
        }
    }

    /// Writes a request head; `Bytes` so a retry on a fresh connection resends it without
    /// a copy.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Transport::Plain(s) => crate::sock::write_all(s, buf).await,
            Transport::Tls(t) => {
                let res = t.write_all(&buf).await;
                (res, buf)
            }
        }
    }

    /// Ends the connection for good; any operation still in flight completes with an error.
    pub fn shutdown(&self) {
        let _ = self.stream().shutdown(Shutdown::Both);
    }

    /// The socket of a plain connection; `None` for TLS, whose bytes need decrypting.
    pub fn plain_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Transport::Plain(s) => Some(crate::sock::socket_fd(s)),
            Transport::Tls(_) => None,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream().as_raw_fd()
    }

    /// The address this connection was made to.
    pub fn peer(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&crate::sock::socket_fd(self.stream()))
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    fn stream(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    /// True when the TLS layer holds bytes not yet read: such a connection is not idle.
    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.pos < t.inbuf.len(),
        }
    }
}

impl Tls {
    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.flush().await?;
            if self.conn.is_handshaking() && self.conn.wants_read() {
                self.fill().await?;
            }
        }
        self.flush().await
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = Vec::with_capacity(TLS_RECORD);
            self.conn.write_tls(&mut out)?;
            let (res, _) = self.sock.write_all(out).await;
            res?;
        }
        Ok(())
    }

    /// Feeds buffered ciphertext to rustls, reading the socket only when none is left.
    /// `Ok(false)` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.pos >= self.inbuf.len() {
            let mut inbuf = std::mem::take(&mut self.inbuf);
            inbuf.clear();
            let (res, back) = self.sock.read(inbuf).await;
            self.inbuf = back;
            self.pos = 0;
            if res? == 0 {
                return Ok(false);
            }
        }
        self.feed()?;
        Ok(true)
    }

    /// Hands rustls as much buffered ciphertext as it takes, and decrypts it.
    fn feed(&mut self) -> io::Result<()> {
        let mut pending = &self.inbuf[self.pos..];
        let before = pending.len();
        self.conn.read_tls(&mut pending)?;
        self.pos += before - pending.len();
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    }

    /// Decrypted bytes into `buf[len..end]`: at least one, unless at end of stream, and as
    /// many as the ciphertext already read holds, so that one socket read is one relay
    /// write however many records it carried. A failure after some bytes is reported by
    /// the next call, those bytes being good.
    async fn read(&mut self, mut buf: Vec<u8>, end: usize) -> (io::Result<usize>, Vec<u8>) {
        if let Some(e) = self.failed.take() {
            return (Err(e), buf);
        }
        let first = buf.len();
        loop {
            let start = buf.len();
            // Zeroed only as far as one record's plaintext reaches: `end` may be a megabyte off.
            buf.resize(end.min(start.saturating_add(MAX_PLAINTEXT)), 0);
            let got = self.conn.reader().read(&mut buf[start..]);
            let res = match got {
                Ok(n) => {
                    buf.truncate(start + n);
                    if n > 0 && buf.len() < end {
                        continue;
                    }
                    return (Ok(buf.len() - first), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(start);
                    if buf.len() == first {
                        // Nothing yet: wait for the socket.
                        match self.fill().await {
                            Ok(true) => self.flush().await,
                            Ok(false) => return (Ok(0), buf),
                            Err(e) => Err(e),
                        }
                    } else if self.pos < self.inbuf.len() {
                        // More records already read: decrypt them too.
                        let at = self.pos;
                        match self.feed() {
                            Ok(()) if self.pos == at => return (Ok(buf.len() - first), buf),
                            fed => fed,
                        }
                    } else {
                        return (Ok(buf.len() - first), buf);
                    }
                }
                Err(e) => {
                    buf.truncate(start);
                    Err(e)
                }
            };
            if let Err(e) = res {
                if buf.len() == first {
                    return (Err(e), buf);
                }
                self.failed = Some(e);
                return (Ok(buf.len() - first), buf);
            }
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)?;
        self.flush().await
    }
}

/// The TLS client configuration of one `s3` block: the system's web roots, or the CA
/// certificates of `tls_ca_file`.
pub fn client_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate found", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
