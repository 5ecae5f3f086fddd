//! One upstream connection: plain TCP or TLS. The ring's sockets lend buffers rather than
//! implement AsyncRead/AsyncWrite, so TLS is driven by hand: rustls's unbuffered API through the handshake, then the record
//! layer of [`super::record`], which opens records in the caller's own buffer. Reads append
//! into the spare capacity of the caller's buffer and hand it back, `(result, buf)` style;
//! neither path copies a body byte in user space.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ClientConfig;

use crate::rt::net::TcpStream;

use super::record::{self, Opened, Session};

/// First capacity for the handshake's incoming flights; they may grow to
/// [`MAX_HANDSHAKE_BUFFER`], as rustls joins a long certificate chain in place.
const TLS_READ: usize = 64 * 1024;
const MAX_HANDSHAKE_BUFFER: usize = 4 * TLS_READ;

/// Room for one maximal record and its header, as first capacity of outgoing ciphertext.
const TLS_RECORD: usize = 16 * 1024 + 5;

/// The least spare room in which records are opened in place; with less, they are opened
/// in the connection's own buffer and copied out.
const ROOM_IN_PLACE: usize = 2 * record::MAX_RECORD;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

pub struct Tls {
    sock: TcpStream,
    session: Session<KernelConnection<ClientConnectionData>>,
    /// Ciphertext not opened yet: the start of a record, or records the last caller had no
    /// room for.
    carry: Vec<u8>,
    /// Plaintext opened but not taken yet, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer's close_notify arrived: reads find the end of the stream.
    closed: bool,
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
        match Tls::handshake(&sock, config, name).await {
            Ok((session, carry)) => Ok(Transport::Tls(Box::new(Tls {
                sock,
                session,
                carry,
                plain: Vec::new(),
                plain_pos: 0,
                closed: false,
                failed: None,
            }))),
            Err(e) => {
                let _ = sock.shutdown(Shutdown::Both);
                Err(e)
            }
        }
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
            Transport::Plain(s) => s.read(buf, start..end).await,
            Transport::Tls(t) => t.read(buf, end).await,
        }
    }

    /// Writes a request head, handing the buffer back for the next one.
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
            Transport::Plain(s) => Some(s.as_fd()),
            Transport::Tls(_) => None,
        }
    }

    /// The socket's descriptor number, which tests compare.
    #[cfg(test)]
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.stream())
    }

    /// The address this connection was made to.
    pub fn peer(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(self.stream())
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

    /// Whether an idle connection can take a request: nothing came on it but TLS records
    /// that carry no data, which are opened here (a TLS 1.3 server sends session tickets
    /// and KeyUpdates when it likes, after a response too). Any byte on a plain connection,
    /// data, a close, an error or the end of the stream mean it cannot. Never blocks.
    pub fn settle_idle(&mut self) -> bool {
        match self {
            Transport::Plain(s) => matches!(waiting(s), Waiting::Nothing),
            Transport::Tls(t) => t.settle_idle(),
        }
    }

    /// True when the TLS layer holds bytes not yet read: such a connection is not idle.
    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => !t.carry.is_empty() || t.plain_pos < t.plain.len(),
        }
    }
}

/// What a non-blocking peek finds on an idle socket.
enum Waiting {
    Nothing,
    Bytes,
    /// The end of the stream or an error.
    Gone,
}

fn waiting(sock: &TcpStream) -> Waiting {
    let peek = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    match rustix::net::recv(sock, &mut [0u8; 1][..], peek) {
        Err(Errno::AGAIN) => Waiting::Nothing,
        Ok((1, _)) => Waiting::Bytes,
        _ => Waiting::Gone,
    }
}

/// What the handshake does after rustls looked at the bytes so far.
enum Step {
    Again,
    Transmit,
    Receive,
    Done,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends the handshake record rustls has ready to `out`.
fn encode(data: &mut EncodeTlsData<'_, ClientConnectionData>, out: &mut Vec<u8>) -> io::Result<()> {
    let at = out.len();
    let mut room = TLS_RECORD;
    loop {
        out.resize(at + room, 0);
        match data.encode(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

impl Tls {
    /// Drives rustls through the handshake, then takes the traffic keys from it. Returns
    /// the session and the ciphertext that came after the handshake's last record.
    async fn handshake(
        sock: &TcpStream,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<(Session<KernelConnection<ClientConnectionData>>, Vec<u8>)> {
        let mut conn =
            UnbufferedClientConnection::new(Arc::clone(config), name).map_err(tls_error)?;
        let mut incoming: Vec<u8> = Vec::with_capacity(TLS_READ);
        let mut outgoing: Vec<u8> = Vec::with_capacity(TLS_RECORD);
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming);
            let step = match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, &mut outgoing)?;
                    Step::Again
                }
                ConnectionState::TransmitTlsData(data) => {
                    // Marked sent before it is: nothing reads the connection in between.
                    data.done();
                    Step::Transmit
                }
                ConnectionState::BlockedHandshake => Step::Receive,
                ConnectionState::WriteTraffic(_) => Step::Done,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: closed during the handshake",
                    ))
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS: unexpected {other:?} during the handshake"),
                    ))
                }
            };
            incoming.drain(..discard);
            match step {
                Step::Again => {}
                Step::Transmit => {
                    let (res, back) = crate::sock::write_all(sock, outgoing).await;
                    outgoing = back;
                    outgoing.clear();
                    res?;
                }
                Step::Receive => {
                    if incoming.len() == incoming.capacity() {
                        if incoming.capacity() >= MAX_HANDSHAKE_BUFFER {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "TLS: handshake flight too long",
                            ));
                        }
                        incoming.reserve(incoming.capacity());
                    }
                    let at = incoming.len();
                    let cap = incoming.capacity();
                    let (res, back) = sock.read(incoming, at..cap).await;
                    incoming = back;
                    if res? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS: closed during the handshake",
                        ));
                    }
                }
                Step::Done => break,
            }
        }
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
        Ok((Session::from_rustls(secrets, kernel)?, incoming))
    }

    /// Plaintext into `buf[len..end]`: at least one byte, unless at end of stream, and as
    /// many as the ciphertext already read holds, so that one socket read is one relay
    /// write however many records it carried. A failure after some bytes is reported by
    /// the next call, those bytes being good.
    async fn read(&mut self, mut buf: Vec<u8>, end: usize) -> (io::Result<usize>, Vec<u8>) {
        if let Some(e) = self.failed.take() {
            return (Err(e), buf);
        }
        if self.plain_pos < self.plain.len() {
            let n = self.take_plain(&mut buf, end);
            return (Ok(n), buf);
        }
        if self.closed {
            return (Ok(0), buf);
        }
        let first = buf.len();
        if buf.capacity() - first >= ROOM_IN_PLACE {
            let (res, mut buf) = self.fill(buf, first, end).await;
            // The last record may have reached past `end`: its rest waits in `plain`.
            if buf.len() > end {
                self.plain.clear();
                self.plain.extend_from_slice(&buf[end..]);
                self.plain_pos = 0;
                buf.truncate(end);
            }
            return (res.map(|_| buf.len() - first), buf);
        }
        // Too little room to open a record in place: open into `plain` and copy out.
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        plain.reserve(ROOM_IN_PLACE);
        let cap = plain.capacity();
        let (res, plain) = self.fill(plain, 0, cap).await;
        self.plain = plain;
        self.plain_pos = 0;
        match res {
            Ok(0) => (Ok(0), buf),
            Ok(_) => {
                let n = self.take_plain(&mut buf, end);
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    /// See [`Transport::settle_idle`]. Reads what two records can fill at most; the start of
    /// a record waits in `carry` for the next read, which opens what follows it.
    fn settle_idle(&mut self) -> bool {
        if self.closed || self.failed.is_some() || self.plain_pos < self.plain.len() {
            return false;
        }
        // Records carried from the last read are opened even when nothing more came.
        let more = match waiting(&self.sock) {
            Waiting::Gone => return false,
            Waiting::Nothing if self.carry.is_empty() => return true,
            Waiting::Nothing => false,
            Waiting::Bytes => true,
        };
        let mut buf = std::mem::take(&mut self.carry);
        if more {
            buf.reserve(2 * record::MAX_RECORD);
            let read = rustix::net::recv(&self.sock, spare_capacity(&mut buf), RecvFlags::DONTWAIT);
            if !matches!(read, Ok((n, _)) if n > 0) {
                return false;
            }
        }
        let mut r = 0;
        loop {
            match record::record_len(&buf[r..]) {
                Ok(Some(len)) if r + len <= buf.len() => {
                    let opened = self.session.open(&mut buf, r, r);
                    if !matches!(opened, Ok(Opened::Control | Opened::Data(0))) {
                        return false;
                    }
                    r += len;
                }
                Ok(_) => break,
                Err(_) => return false,
            }
        }
        // Only a record's start is kept, not the room read into.
        self.carry = buf[r..].to_vec();
        true
    }

    /// Moves opened plaintext into `buf`, up to `end`.
    fn take_plain(&mut self, buf: &mut Vec<u8>, end: usize) -> usize {
        let n = end
            .saturating_sub(buf.len())
            .min(self.plain.len() - self.plain_pos);
        buf.extend_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        n
    }

    /// Reads ciphertext into `buf[first..]` behind what was carried over and opens it in
    /// place, until some plaintext is there (it may reach past `end` by the rest of one
    /// record); what was not opened is carried to the next call. Needs room for two
    /// records in `buf`.
    async fn fill(
        &mut self,
        mut buf: Vec<u8>,
        first: usize,
        end: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        buf.extend_from_slice(&self.carry);
        self.carry.clear();
        loop {
            let mut w = first;
            let mut r = first;
            while w < end {
                let len = match record::record_len(&buf[r..]) {
                    Ok(Some(len)) if r + len <= buf.len() => len,
                    Ok(_) => break,
                    Err(e) => return self.fail(e, buf, first, w),
                };
                match self.session.open(&mut buf, w, r) {
                    Ok(Opened::Data(n)) => w += n,
                    Ok(Opened::Control) => {}
                    Ok(Opened::Closed) => self.closed = true,
                    Err(e) => return self.fail(e, buf, first, w),
                }
                r += len;
                if self.closed {
                    break;
                }
            }
            if w > first || self.closed {
                if !self.closed {
                    self.carry.extend_from_slice(&buf[r..]);
                }
                buf.truncate(w);
                return (Ok(w - first), buf);
            }
            // Nothing for the caller yet: keep the start of the next record and read on.
            let len = buf.len();
            buf.copy_within(r..len, first);
            buf.truncate(first + len - r);
            let at = buf.len();
            let read_end = buf.capacity().min(end.max(at + record::MAX_RECORD));
            let (res, back) = self.sock.read(buf, at..read_end).await;
            buf = back;
            match res {
                Ok(0) if buf.len() > first => {
                    buf.truncate(first);
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: the stream ended inside a record",
                    );
                    return (Err(e), buf);
                }
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => {
                    buf.truncate(first);
                    return (Err(e), buf);
                }
            }
        }
    }

    /// A failure: reported now when no plaintext came before it, else by the next read.
    fn fail(
        &mut self,
        e: io::Error,
        mut buf: Vec<u8>,
        first: usize,
        w: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        buf.truncate(w);
        self.carry.clear();
        if w == first {
            return (Err(e), buf);
        }
        self.failed = Some(e);
        (Ok(w - first), buf)
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + TLS_RECORD);
        self.session.seal(data, &mut out)?;
        let (res, _) = crate::sock::write_all(&self.sock, out).await;
        res
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
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The record layer takes the traffic keys from rustls after the handshake.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::Command;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ServerConfig, ServerConnection, SupportedProtocolVersion};

    /// A CA and a `localhost` leaf signed by it, made by openssl in a fresh directory.
    fn certs(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tailgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr -subj /CN=localhost
            printf 'subjectAltName=DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
            openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf";
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    fn server_config(
        dir: &std::path::Path,
        version: &'static SupportedProtocolVersion,
    ) -> Arc<ServerConfig> {
        let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// The client's bytes as the server read them: its records can be counted.
    struct Tap {
        sock: std::net::TcpStream,
        seen: Vec<u8>,
    }

    impl Read for Tap {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.sock.read(buf)?;
            self.seen.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sock.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.sock.flush()
        }
    }

    fn records(wire: &[u8]) -> usize {
        let mut n = 0;
        let mut rest = wire;
        while let Ok(Some(len)) = record::record_len(rest) {
            rest = &rest[len.min(rest.len())..];
            n += 1;
        }
        n
    }

    fn body(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
    }

    /// A TLS server for one connection on a loopback port, run by `script` on its own
    /// thread; the client side connects with [`connect`].
    fn serve(
        dir: &std::path::Path,
        version: &'static SupportedProtocolVersion,
        script: impl FnOnce(&mut rustls::StreamOwned<ServerConnection, Tap>) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(dir, version);
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = ServerConnection::new(config).unwrap();
            let mut stream = rustls::StreamOwned::new(
                conn,
                Tap {
                    sock,
                    seen: Vec::new(),
                },
            );
            script(&mut stream);
        });
        (addr, server)
    }

    /// A TLS transport to `addr` trusting the CA in `dir`, its first request line sent.
    async fn connect(addr: SocketAddr, dir: &std::path::Path, line: &[u8]) -> Transport {
        let config = client_config(Some(&dir.join("ca.pem"))).unwrap();
        let mut t = Transport::connect(addr, Some((&config, "localhost")))
            .await
            .unwrap();
        let (res, _) = t.write_all(line.to_vec()).await;
        res.unwrap();
        t
    }

    fn read_line(s: &mut impl Read) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        line
    }

    /// Reads until `want` bytes came or the stream ended, each read with a buffer of
    /// `cap` bytes asked for at most `max`. The error, if any, comes with the bytes before.
    async fn read_all(
        t: &mut Transport,
        want: usize,
        cap: usize,
        max: usize,
    ) -> (Vec<u8>, Option<io::Error>) {
        let mut got = Vec::new();
        while got.len() < want {
            let (res, buf) = t.read(Vec::with_capacity(cap), max).await;
            match res {
                Ok(0) => break,
                Ok(n) => {
                    assert_eq!(n, buf.len());
                    assert!(n <= max, "{n} > {max}");
                    got.extend_from_slice(&buf);
                }
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[test]
    fn key_updates_from_a_rustls_server_are_followed_and_answered() {
        let dir = certs("keyupdate");
        let (addr, server) = serve(&dir, &rustls::version::TLS13, |s| {
            assert_eq!(read_line(s), b"one");
            s.write_all(&body(100_000, 1)).unwrap();
            // KeyUpdate with update_requested: later records are under the next key.
            s.conn.refresh_traffic_keys().unwrap();
            s.write_all(&body(100_000, 2)).unwrap();
            s.flush().unwrap();
            let before = s.sock.seen.len();
            assert_eq!(read_line(s), b"two");
            // The client answered the request for a KeyUpdate ahead of its next record.
            assert_eq!(records(&s.sock.seen[before..]), 2);
            s.write_all(&body(50_000, 3)).unwrap();
            s.conn.send_close_notify();
            s.flush().unwrap();
        });
        crate::rt::start(async {
            let mut t = connect(
                addr, &dir, b"one
",
            )
            .await;
            let (got, err) = read_all(&mut t, 200_000, 256 * 1024, usize::MAX).await;
            assert!(err.is_none(), "{err:?}");
            assert!(got[..100_000] == body(100_000, 1)[..]);
            assert!(got[100_000..] == body(100_000, 2)[..]);
            let (res, _) = t.write_all(b"two\n".to_vec()).await;
            res.unwrap();
            // Then the end: close_notify.
            let (got, err) = read_all(&mut t, usize::MAX, 256 * 1024, usize::MAX).await;
            assert!(err.is_none(), "{err:?}");
            assert!(got == body(50_000, 3));
            assert!(!t.has_buffered());
        })
        .unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Waits up to 5 s for a byte to read on `t`'s socket.
    async fn readable(t: &Transport) {
        for _ in 0..1000 {
            if let Waiting::Bytes = waiting(t.stream()) {
                return;
            }
            crate::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("nothing came");
    }

    #[test]
    fn records_without_data_on_an_idle_connection_leave_it_usable() {
        let dir = certs("idle");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (addr, server) = serve(&dir, &rustls::version::TLS13, move |s| {
            assert_eq!(read_line(s), b"one");
            s.write_all(&body(1000, 1)).unwrap();
            s.flush().unwrap();
            // Once the client has read the response: a KeyUpdate that asks for one back.
            wait.recv().unwrap();
            s.conn.refresh_traffic_keys().unwrap();
            s.flush().unwrap();
            let before = s.sock.seen.len();
            assert_eq!(read_line(s), b"two");
            assert_eq!(records(&s.sock.seen[before..]), 2);
            s.write_all(&body(1000, 2)).unwrap();
            s.flush().unwrap();
            wait.recv().unwrap();
            s.write_all(b"unasked").unwrap();
            s.flush().unwrap();
            let _ = wait.recv();
        });
        crate::rt::start(async {
            let mut t = connect(addr, &dir, b"one\n").await;
            let (got, err) = read_all(&mut t, 1000, 64 * 1024, usize::MAX).await;
            assert!(err.is_none() && got == body(1000, 1), "{err:?}");
            assert!(t.settle_idle(), "nothing has come");
            go.send(()).unwrap();
            readable(&t).await;
            assert!(t.settle_idle(), "a KeyUpdate leaves the connection usable");
            assert!(!t.has_buffered());
            let (res, _) = t.write_all(b"two\n".to_vec()).await;
            res.unwrap();
            let (got, err) = read_all(&mut t, 1000, 64 * 1024, usize::MAX).await;
            assert!(err.is_none() && got == body(1000, 2), "{err:?}");
            go.send(()).unwrap();
            readable(&t).await;
            assert!(!t.settle_idle(), "data nobody asked for ends it");
            go.send(()).unwrap();
        })
        .unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn small_rooms_and_short_asks_get_every_byte_in_order() {
        let dir = certs("rooms");
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (addr, server) = serve(&dir, version, |s| {
                assert_eq!(read_line(s), b"go");
                s.write_all(&body(300_000, 4)).unwrap();
                s.flush().unwrap();
                assert_eq!(read_line(s), b"again");
                s.write_all(&body(10, 5)).unwrap();
                s.flush().unwrap();
            });
            crate::rt::start(async {
                let mut t = connect(
                    addr, &dir, b"go
",
                )
                .await;
                let mut got = Vec::new();
                // Too little room to open records in place; a big room asked for less
                // than a record (the rest waits); then big reads.
                let (part, err) = read_all(&mut t, 50_000, 1000, usize::MAX).await;
                assert!(err.is_none());
                got.extend_from_slice(&part);
                let (part, err) = read_all(&mut t, 50_000, 256 * 1024, 3000).await;
                assert!(err.is_none());
                got.extend_from_slice(&part);
                let rest = 300_000 - got.len();
                let (part, err) = read_all(&mut t, rest, 256 * 1024, rest).await;
                assert!(err.is_none());
                got.extend_from_slice(&part);
                assert!(got == body(300_000, 4), "{version:?}");
                let (res, _) = t.write_all(b"again\n".to_vec()).await;
                res.unwrap();
                let (got, _) = read_all(&mut t, 10, 256 * 1024, 10).await;
                assert_eq!(got, body(10, 5));
            })
            .unwrap();
            server.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_tampered_record_fails_the_read_after_the_good_bytes() {
        let dir = certs("tamper");
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (addr, server) = serve(&dir, version, |s| {
                assert_eq!(read_line(s), b"go");
                s.write_all(&body(20_000, 6)).unwrap();
                s.flush().unwrap();
                // One more record, a bit of its ciphertext flipped on the wire.
                s.conn.writer().write_all(b"forged?").unwrap();
                let mut wire = Vec::new();
                s.conn.write_tls(&mut wire).unwrap();
                let last = wire.len() - 3;
                wire[last] ^= 0x20;
                s.sock.sock.write_all(&wire).unwrap();
                // Keep the connection open until the client is done.
                let _ = s.sock.sock.read(&mut [0u8; 1]);
            });
            crate::rt::start(async {
                let mut t = connect(
                    addr, &dir, b"go
",
                )
                .await;
                let (got, err) = read_all(&mut t, usize::MAX, 256 * 1024, usize::MAX).await;
                assert!(got == body(20_000, 6), "{version:?}: {} bytes", got.len());
                let err = err.unwrap();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
                assert!(err.to_string().contains("bad_record_mac"), "{err}");
                t.shutdown();
            })
            .unwrap();
            server.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
