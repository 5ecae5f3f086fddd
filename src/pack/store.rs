//! Where `pack` writes: a local directory, or S3 through blocking SigV4 requests (the same
//! request heads and response checks as the server, over std sockets and rustls streams:
//! pack is a one-shot command, not a worker).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::ServerName;

use crate::conf::{Scheme, S3};
use crate::upstream::response::{self, Meta, Parsed};
use crate::upstream::s3::Ask;
use crate::upstream::{s3, transport};

pub(super) enum Store {
    Dir(PathBuf),
    S3(Box<s3::Signer>),
}

/// What a PUT or HEAD found: the ETag exactly as the store gives it.
pub(super) struct Stored {
    pub etag: String,
    pub length: u64,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Store {
    /// Uploads `len` bytes read from `body` as `key`; returns the ETag.
    pub(super) fn put(
        &self,
        key: &str,
        body: &mut dyn Read,
        len: u64,
        md5_etag: &str,
    ) -> Result<String, String> {
        match self {
            Store::Dir(dir) => {
                let path = dir.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                let mut f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let copied = io::copy(&mut body.take(len), &mut f)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if copied != len {
                    return Err(format!(
                        "{}: short input ({copied} of {len} bytes)",
                        path.display()
                    ));
                }
                Ok(md5_etag.to_string())
            }
            Store::S3(signer) => {
                let conf = signer.conf();
                let mut head = Vec::new();
                let ask = Ask {
                    content_length: Some(len),
                    ..Ask::whole("PUT", key)
                };
                signer.request_head(&ask, SystemTime::now(), &mut head)?;
                let mut conn = connect(conf)?;
                conn.write_all(&head)
                    .map_err(|e| format!("PUT {key}: {e}"))?;
                let copied = io::copy(&mut body.take(len), &mut conn)
                    .map_err(|e| format!("PUT {key}: {e}"))?;
                if copied != len {
                    return Err(format!("PUT {key}: short input ({copied} of {len} bytes)"));
                }
                conn.flush().map_err(|e| format!("PUT {key}: {e}"))?;
                let (resp, _) =
                    read_response(&mut *conn, 64 * 1024).map_err(|e| format!("PUT {key}: {e}"))?;
                if resp.status != 200 {
                    return Err(format!("PUT {key}: S3 answered {}", resp.status));
                }
                resp.etag
                    .ok_or_else(|| format!("PUT {key}: no ETag in the response"))
            }
        }
    }

    /// The object's ETag and length, or `None` when it does not exist.
    pub(super) fn head(&self, key: &str) -> Result<Option<Stored>, String> {
        match self {
            Store::Dir(_) => Ok(None),
            Store::S3(signer) => {
                let conf = signer.conf();
                let mut head = Vec::new();
                signer.request_head(&Ask::whole("HEAD", key), SystemTime::now(), &mut head)?;
                let mut conn = connect(conf)?;
                conn.write_all(&head)
                    .map_err(|e| format!("HEAD {key}: {e}"))?;
                let (resp, _) =
                    read_head_only(&mut *conn).map_err(|e| format!("HEAD {key}: {e}"))?;
                match resp.status {
                    200 => Ok(resp.etag.map(|etag| Stored {
                        etag,
                        length: resp.content_length.unwrap_or(0),
                    })),
                    404 => Ok(None),
                    s => Err(format!("HEAD {key}: S3 answered {s}")),
                }
            }
        }
    }

    /// A small object's bytes, or `None` when it does not exist.
    pub(super) fn get(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        match self {
            Store::Dir(dir) => match std::fs::read(dir.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{key}: {e}")),
            },
            Store::S3(signer) => {
                let conf = signer.conf();
                let mut head = Vec::new();
                signer.request_head(&Ask::whole("GET", key), SystemTime::now(), &mut head)?;
                let mut conn = connect(conf)?;
                conn.write_all(&head)
                    .map_err(|e| format!("GET {key}: {e}"))?;
                let (resp, body) =
                    read_response(&mut *conn, max).map_err(|e| format!("GET {key}: {e}"))?;
                match resp.status {
                    200 => Ok(Some(body)),
                    404 => Ok(None),
                    s => Err(format!("GET {key}: S3 answered {s}")),
                }
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.display().to_string(),
            Store::S3(signer) => {
                let c = signer.conf();
                format!(
                    "s3://{} at {}://{}:{}",
                    c.bucket,
                    scheme_name(c.endpoint.scheme),
                    c.endpoint.host,
                    c.endpoint.port
                )
            }
        }
    }
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

fn connect(conf: &S3) -> Result<Box<dyn Stream>, String> {
    let mut last = String::from("no address");
    for addr in &conf.endpoint.addrs {
        match TcpStream::connect_timeout(addr, conf.connect_timeout) {
            Ok(tcp) => {
                let _ = tcp.set_read_timeout(Some(conf.read_timeout));
                let _ = tcp.set_write_timeout(Some(conf.read_timeout));
                return match conf.endpoint.scheme {
                    Scheme::Http => Ok(Box::new(tcp)),
                    Scheme::Https => {
                        let config = transport::client_config(conf.tls_ca_file.as_deref())?;
                        let name = ServerName::try_from(conf.host()).map_err(|e| e.to_string())?;
                        let tls = rustls::ClientConnection::new(Arc::clone(&config), name)
                            .map_err(|e| e.to_string())?;
                        Ok(Box::new(rustls::StreamOwned::new(tls, tcp)))
                    }
                };
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

fn read_head_only(conn: &mut dyn Stream) -> io::Result<(Meta, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match response::parse(&buf) {
            Ok(Parsed::Complete(h)) => {
                let rest = buf.split_off(h.len);
                return Ok((h.meta(&buf), rest));
            }
            Ok(Parsed::Partial) => {}
            Err(r) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{r:?}"))),
        }
    }
}

fn read_response(conn: &mut dyn Stream, max: usize) -> io::Result<(Meta, Vec<u8>)> {
    let (head, mut body) = read_head_only(conn)?;
    let len = head.content_length.unwrap_or(0);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response body of {len} bytes is over {max}"),
            )
        })?;
    let mut chunk = [0u8; 8192];
    while body.len() < len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short response body",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((head, body))
}

/// Reads `[0, len)` of a file through `f` in large chunks (hashing the base APK).
pub(super) fn for_each_chunk(path: &Path, len: u64, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut file = File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}
