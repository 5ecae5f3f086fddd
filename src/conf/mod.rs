//! The configuration: an immutable [`Config`] built only by the parser in [`directives`],
//! so later code takes it as proof that every value is valid and every reference resolves.
//! One generation per load; `check` and `serve` share this exact path.

mod directives;
mod lexer;

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use lexer::{Env, ProcessEnv};

/// A configuration error, printed as nginx does: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.msg)
    }
}

impl std::error::Error for ConfError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Number of worker threads, each with its own io_uring runtime and listener; >= 1.
    pub worker_threads: usize,
    pub error_log: (LogTarget, LogLevel),
    pub pid: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub http: Http,
}

#[derive(Debug, Clone)]
pub struct Http {
    /// At least one address.
    pub listen: Vec<SocketAddr>,
    pub access_log: Option<PathBuf>,
    pub worker_connections: usize,
    pub client_header_timeout: Duration,
    /// Hard cap on a whole request head, request line included; >= 256.
    pub client_header_buffer_size: usize,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u64,
    pub send_timeout: Duration,
    /// One relay buffer; >= 4 KiB.
    pub relay_buffer_size: usize,
    /// How many large buffers a worker may have in use, and their size (>= 4 KiB).
    pub relay_large_buffers: (usize, usize),
    /// Plain-HTTP bodies move socket to socket through a pipe (`splice`).
    pub relay_splice: bool,
    /// `TCP_NOTSENT_LOWAT` of a client socket while a long body is sent to it: how many
    /// written bytes may wait unsent in the kernel before a write waits; `None` leaves the
    /// kernel's default.
    pub tcp_notsent_lowat: Option<u32>,
    pub manifest_cache_ttl: Duration,
    pub manifest_cache_size: usize,
    /// >= 1.
    pub max_ranges: usize,
    pub tail_cache_size: u64,
    pub s3: Vec<S3>,
    /// Exact locations are tried first, then the longest matching prefix (nginx order).
    pub locations: Vec<Location>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP literal as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The addresses of the block's [`S3::host`], resolved when the conf is loaded (and
    /// again on every reload); never empty.
    pub addrs: Vec<SocketAddr>,
}

/// The addresses of `host` from the system's resolver, but a name under `localhost` gets
/// `localhost`'s own (RFC 6761 §6.3, as curl and systemd-resolved answer it), so
/// virtual-hosted addressing works against a local S3. Blocks on DNS.
pub fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let local = host.len() > ".localhost".len()
        && host
            .get(host.len() - ".localhost".len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(".localhost"));
    let name = if local { "localhost" } else { host };
    Ok((name, port).to_socket_addrs()?.collect())
}

impl Endpoint {
    /// The `Host` header value for `host`: the port is left out when it is the scheme's default.
    pub fn authority(&self, host: &str) -> String {
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[derive(Clone)]
pub struct S3 {
    pub name: String,
    pub endpoint: Endpoint,
    pub region: String,
    pub bucket: String,
    pub addressing: Addressing,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Idle pooled connections per worker.
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// How often the endpoint's host name is looked up again; `None`: only at load.
    pub resolve_interval: Option<Duration>,
}

impl S3 {
    /// The host requests go to: the endpoint's, or `bucket.host` with virtual-hosted
    /// addressing. Connections are made to its addresses, TLS checks its name, and it is the
    /// `Host` of every request.
    pub fn host(&self) -> String {
        match self.addressing {
            Addressing::Path => self.endpoint.host.clone(),
            Addressing::Virtual => format!("{}.{}", self.bucket, self.endpoint.host),
        }
    }
}

/// Credentials never reach a log line, not even through `{:?}`.
impl fmt::Debug for S3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key_id", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Index into [`Http::s3`].
    Composite(usize),
    /// Index into [`Http::s3`].
    Object(usize),
    StubStatus,
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub matcher: LocationMatch,
    pub handler: Handler,
}

impl Config {
    /// Reads and parses `path`; errors name the path as given.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfError {
            file: file.clone(),
            line: 0,
            msg: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &src, env)
    }

    pub fn parse(file: &str, src: &str, env: &dyn Env) -> Result<Config, ConfError> {
        directives::parse(src, env).map_err(|(line, msg)| ConfError {
            file: file.to_string(),
            line,
            msg,
        })
    }
}
