//! Integration harness: the real `tailgate` binary, a real `s3s-fs` (which verifies SigV4),
//! ephemeral ports, a temp dir per test, children killed on drop, readiness polled with a
//! deadline. Objects are uploaded with curl's own SigV4 signer, not ours.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod relay;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const AK: &str = "tailgate-test-ak";
pub const SK: &str = "tailgate-test-secret";
pub const BUCKET: &str = "apks";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tailgate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped on drop: SIGTERM first, so that an nginx master stops its
/// workers instead of leaving them orphaned, then SIGKILL if it is still there after 3 s.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            #[allow(clippy::disallowed_methods)] // waiting for a child to exit
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A port that was free a moment ago, never the same one twice in this test binary: the
/// kernel may hand a released port out again, and tests run in parallel.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        #[allow(clippy::disallowed_methods)] // polling a child's readiness
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TAILGATE_S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let tools =
        std::env::var("TAILGATE_TOOLS").unwrap_or_else(|_| format!("{home}/.cache/tailgate-tools"));
    let p = PathBuf::from(tools).join("bin/s3s-fs");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

/// A running s3s-fs with one bucket.
pub struct S3 {
    pub addr: SocketAddr,
    /// The authority path-style requests go to.
    pub host: String,
    _proc: Proc,
    pub dir: TempDir,
}

impl S3 {
    pub fn start() -> S3 {
        Self::start_with(&[])
    }

    /// Accepting virtual-hosted requests on `localhost:<port>` (and path-style ones there).
    pub fn start_virtual() -> S3 {
        Self::start_with(&["--domain", "localhost:{port}"])
    }

    /// With extra s3s-fs options; `{port}` in them becomes the port.
    pub fn start_with(extra: &[&str]) -> S3 {
        let dir = TempDir::new("s3");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("s3s-fs.log")).unwrap();
        let child = Command::new(s3s_fs_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                AK,
                "--secret-key",
                SK,
            ])
            .args(extra.iter().map(|a| a.replace("{port}", &port.to_string())))
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let host = if extra.is_empty() {
            addr.to_string()
        } else {
            format!("localhost:{port}")
        };
        let s3 = S3 {
            addr,
            host,
            _proc: Proc(child),
            dir,
        };
        wait_for_port(addr, "s3s-fs");
        let (status, _) = s3.curl(&["-X", "PUT"], &format!("/{BUCKET}"));
        assert_eq!(status, 200, "create bucket");
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs a signed curl against `path`; returns the status and the response headers.
    fn curl(&self, extra: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(format!("{AK}:{SK}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(extra)
            .arg(format!("http://{}{}", self.host, path))
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&out.stdout).into_owned();
        // Skip any interim `100 Continue` head: the final one comes last.
        let headers = dump
            .rsplit("HTTP/1.1 ")
            .next()
            .unwrap_or_default()
            .to_string();
        let status = headers
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, headers)
    }

    /// Uploads `bytes` as `key`; returns the ETag exactly as S3 sent it (quotes included).
    pub fn put(&self, key: &str, bytes: &[u8]) -> String {
        let file = self.dir.path().join(format!(
            "upload-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, bytes).unwrap();
        let (status, headers) =
            self.curl(&["-T", file.to_str().unwrap()], &format!("/{BUCKET}/{key}"));
        let _ = std::fs::remove_file(&file);
        assert_eq!(status, 200, "PUT {key}: {headers}");
        headers
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
            })
            .expect("ETag in PUT response")
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A package uploaded as head + tails + manifest; `full[variant]` is the stitched body.
pub struct Package {
    pub name: String,
    pub head: Vec<u8>,
    pub tails: Vec<(String, Vec<u8>)>,
}

impl Package {
    pub fn full(&self, variant: &str) -> Vec<u8> {
        let tail = &self.tails.iter().find(|(v, _)| v == variant).unwrap().1;
        let mut v = self.head.clone();
        v.extend_from_slice(tail);
        v
    }
}

/// Uploads `head` and each tail, then the manifest (the order `pack` uses).
pub fn upload_package(s3: &S3, name: &str, head: Vec<u8>, tails: Vec<(&str, Vec<u8>)>) -> Package {
    let head_etag = s3.put(&format!("{name}/base.apk"), &head);
    let tail_etags: Vec<String> = tails
        .iter()
        .map(|(variant, tail)| s3.put(&format!("{name}/tails/{variant}"), tail))
        .collect();
    let entries: Vec<(&str, usize, &str)> = tails
        .iter()
        .zip(&tail_etags)
        .map(|((variant, tail), etag)| (*variant, tail.len(), etag.as_str()))
        .collect();
    let manifest = manifest_json(name, (head.len(), &head_etag), &entries);
    s3.put(&format!("{name}/manifest.json"), manifest.as_bytes());
    Package {
        name: name.to_string(),
        head,
        tails: tails.into_iter().map(|(v, t)| (v.to_string(), t)).collect(),
    }
}

/// Package `name`'s manifest: its head at `{name}/base.apk` and each tail (variant, length,
/// ETag) at `{name}/tails/{variant}`, with the ETags their store gave them.
pub fn manifest_json(name: &str, head: (usize, &str), tails: &[(&str, usize, &str)]) -> String {
    let entries: Vec<String> = tails
        .iter()
        .map(|(variant, len, etag)| {
            format!(
                r#""{variant}": {{"key": "{name}/tails/{variant}", "offset": 0, "length": {len}, "etag": {}}}"#,
                serde_json_string(etag)
            )
        })
        .collect();
    format!(
        r#"{{"format": "tailgate/1", "content_type": "application/vnd.android.package-archive",
            "last_modified": "2026-11-25T10:00:00Z",
            "head": {{"key": "{name}/base.apk", "offset": 0, "length": {}, "etag": {}}},
            "tails": {{ {} }} }}"#,
        head.0,
        serde_json_string(head.1),
        entries.join(", ")
    )
}

fn serde_json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running tailgate; its stderr goes to `error.log` in its dir.
pub struct Tailgate {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub proc: Proc,
}

/// The conf used by most tests: one composite and one object location on `endpoint`, and
/// tailgate's metrics at `/metrics`.
pub fn conf(endpoint: &str, secret: &str, extra_http: &str, extra_s3: &str) -> String {
    format!(
        "worker_threads 2;\nerror_log stderr info;\nhttp {{\n listen 127.0.0.1:0;\n client_header_timeout 5s;\n {extra_http}\n \
         s3 apks {{\n  endpoint {endpoint};\n  bucket {BUCKET};\n  access_key_id {AK};\n  secret_access_key {secret};\n  {extra_s3}\n }}\n \
         location /apk/ {{ composite apks; }}\n location /files/ {{ object apks; }}\n \
         location = /metrics {{ metrics; }}\n}}\n"
    )
}

impl Tailgate {
    pub fn start(conf: &str) -> Tailgate {
        Self::start_in(conf, None, &[])
    }

    /// With `hosts` in place of `/etc/hosts` for tailgate alone, and names looked up there
    /// only (both bind-mounted in a mount namespace of its own, which takes root): names
    /// that the test can point elsewhere while tailgate runs, by rewriting `hosts` in place.
    pub fn start_with_hosts(conf: &str, hosts: &Path) -> Tailgate {
        Self::start_in(conf, Some(hosts), &[])
    }

    /// With `env` added to the environment tailgate starts in.
    pub fn start_with_env(conf: &str, env: &[(&str, &str)]) -> Tailgate {
        Self::start_in(conf, None, env)
    }

    fn start_in(conf: &str, hosts: Option<&Path>, env: &[(&str, &str)]) -> Tailgate {
        let dir = TempDir::new("tg");
        let conf_path = dir.path().join("tailgate.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log_path = dir.path().join("error.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let bin = env!("CARGO_BIN_EXE_tailgate");
        let mut cmd = match hosts {
            None => Command::new(bin),
            Some(h) => {
                let nsswitch = dir.path().join("nsswitch.conf");
                std::fs::write(&nsswitch, "hosts: files\n").unwrap();
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/nsswitch.conf && shift && exec \"$@\"",
                ])
                .arg(h)
                .arg(&nsswitch)
                .arg(bin);
                c
            }
        };
        let child = cmd
            .envs(env.iter().copied())
            .args(["serve", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(a) = text.lines().find_map(|l| l.split("listening on ").nth(1)) {
                break a.trim().parse::<SocketAddr>().unwrap();
            }
            assert!(Instant::now() < deadline, "tailgate did not start: {text}");
            #[allow(clippy::disallowed_methods)] // polling a child's readiness
            std::thread::sleep(Duration::from_millis(20));
        };
        wait_for_port(addr, "tailgate");
        Tailgate { addr, dir, proc }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A counter or gauge from tailgate's own metrics, by the start of its line; the sum
    /// over its labels when the start leaves them open (`tailgate_connections{state=`).
    pub fn metric(&self, line_prefix: &str) -> u64 {
        let r = self.get("/metrics", &[]);
        let text = String::from_utf8(r.body).unwrap();
        let values: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!values.is_empty(), "no {line_prefix} in:\n{text}");
        values.iter().sum()
    }

    /// Waits (up to 5 s) for a metric to read `value`: a gauge settles just after the
    /// response that moved it has reached its client.
    pub fn wait_for_metric(&self, line_prefix: &str, value: u64) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.metric(line_prefix) != value {
            assert!(Instant::now() < until, "{line_prefix} never read {value}");
            #[allow(clippy::disallowed_methods)] // a test's thread, not a worker
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One GET on a fresh connection.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut c = self.client();
        c.send(&request("GET", path, headers));
        c.response(false).unwrap()
    }
}

pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client on one connection, for keep-alive and pipelining tests.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::on(TcpStream::connect(addr).unwrap())
    }

    /// A client on a stream connected already (say, with socket options of the test's).
    pub fn on(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A client whose socket has a 16 KiB receive buffer, so the server's writes wait on
    /// its reads rather than filling a large window.
    pub fn narrow(addr: SocketAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.connect(&addr.into()).unwrap();
        Client::on(sock.into())
    }

    /// GETs `path` and reads the response at about 80 KB/s for 3.5 s, then at full speed:
    /// on a narrow client, a write of 128 KiB or more to it takes over a second.
    pub fn slow_get(&mut self, path: &str) -> Response {
        self.send(&request("GET", path, &[]));
        self.trickle(
            8 * 1024,
            Duration::from_millis(100),
            Duration::from_millis(3500),
        );
        self.response(false).unwrap()
    }

    /// Reads at most `chunk` bytes every `every` for `span`, a client that drains slowly; the
    /// bytes are kept for the next `response`.
    pub fn trickle(&mut self, chunk: usize, every: Duration, span: Duration) {
        let until = Instant::now() + span;
        let mut piece = vec![0u8; chunk];
        while Instant::now() < until {
            match self.stream.read(&mut piece) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.buf.extend_from_slice(&piece[..n]),
            }
            #[allow(clippy::disallowed_methods)] // a test's client thread, not a worker
            std::thread::sleep(every);
        }
    }

    /// Reads one response (`head_only` for HEAD). `None` when the connection ends first.
    /// A body shorter than Content-Length is returned short (truncation is visible).
    pub fn response(&mut self, head_only: bool) -> Option<Response> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        self.buf.drain(..end);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if head_only || status == 304 {
            0
        } else {
            resp.header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        while self.buf.len() < len {
            if !self.fill() {
                break;
            }
        }
        let take = len.min(self.buf.len());
        resp.body = self.buf.drain(..take).collect();
        Some(resp)
    }

    /// True when the server closed the connection (EOF within the timeout).
    pub fn closed(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1];
        let first = self.stream.read(&mut b);
        let closed = match &first {
            Ok(0) => true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            // A reset may follow a FIN.
            _ => {
                matches!(self.stream.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            }
        };
        if !closed {
            eprintln!("connection not closed within {within:?}: read gave {first:?} ({b:?})");
        }
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        closed
    }
}

/// Lines of `ss` for TCP sockets in CLOSE-WAIT owned by process `pid`.
pub fn close_wait_of(pid: u32) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-Htanp", "state", "close-wait"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect()
}

/// Debian's nginx run as our own process, with everything inside its prefix.
pub struct Nginx {
    pub addr: SocketAddr,
    pub dir: TempDir,
    _proc: Proc,
}

impl Nginx {
    /// `server` is the body of one `server {}` block; `{listen}` in it becomes the address
    /// and `{http}` extra text goes in the `http {}` block.
    pub fn start(http_extra: &str, server: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let p = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = format!(
            "daemon off;\nworker_processes 1;\nuser nobody nogroup;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {p}/tmp/body;\n proxy_temp_path {p}/tmp/proxy;\n \
             fastcgi_temp_path {p}/tmp/fastcgi;\n uwsgi_temp_path {p}/tmp/uwsgi;\n scgi_temp_path {p}/tmp/scgi;\n \
             {http_extra}\n server {{\n{}\n }}\n}}\n",
            server.replace("{listen}", &addr.to_string())
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        Self::run(dir, &format!("{p}/nginx.conf"), addr, Stdio::null())
    }

    /// Starts nginx with prefix `dir` and conf `conf` (absolute or prefix-relative).
    fn run(dir: TempDir, conf: &str, addr: SocketAddr, stderr: Stdio) -> Nginx {
        let p = dir.path().display().to_string();
        let child = Command::new("nginx")
            .args(["-p", &p, "-c", conf])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx (run scripts/setup.sh)");
        let n = Nginx {
            addr,
            dir,
            _proc: Proc(child),
        };
        wait_for_port(addr, "nginx");
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Waits up to `within` for no CLOSE-WAIT socket of process `pid`; returns what is left.
pub fn close_wait_settles(pid: u32, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = close_wait_of(pid);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        #[allow(clippy::disallowed_methods)] // polling the kernel's socket table
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A slow client: a small receive buffer, a pause between reads, and longer pauses once the
/// body reaches given sizes. Reads until `expect` body bytes or EOF.
pub struct SlowClient {
    pub rcvbuf: usize,
    pub read_size: usize,
    pub per_read: Duration,
    /// (body bytes received, pause): each taken once, in order.
    pub pauses: Vec<(usize, Duration)>,
}

pub struct SlowResult {
    pub head: String,
    pub body: Vec<u8>,
    /// (time, body bytes so far) after every read.
    pub timeline: Vec<(Instant, usize)>,
    /// The connection ended (EOF or reset) before `expect` bytes.
    pub cut_short: bool,
}

impl SlowClient {
    pub fn get(&self, addr: SocketAddr, path: &str, expect: usize) -> SlowResult {
        self.get_until(addr, path, expect, &|| true, Duration::ZERO)
    }

    /// As [`get`](Self::get), but each pause, once its duration is over, goes on until
    /// `done()` or for at most `extra` more: a pause meant to outlast a peer's timeout
    /// waits for the evidence that it fired instead of guessing how long the kernel
    /// keeps the window trickling open.
    pub fn get_until(
        &self,
        addr: SocketAddr,
        path: &str,
        expect: usize,
        done: &dyn Fn() -> bool,
        extra: Duration,
    ) -> SlowResult {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(self.rcvbuf).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = sock.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(&request("GET", path, &[])).unwrap();
        let mut raw = Vec::new();
        let mut timeline = Vec::new();
        let mut head_len = None;
        let mut pauses = self.pauses.iter().peekable();
        let mut chunk = vec![0u8; self.read_size];
        let mut cut_short = true;
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            raw.extend_from_slice(&chunk[..n]);
            if head_len.is_none() {
                head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
            }
            let body = raw.len().saturating_sub(head_len.unwrap_or(raw.len()));
            timeline.push((Instant::now(), body));
            if head_len.is_some() && body >= expect {
                cut_short = false;
                break;
            }
            #[allow(clippy::disallowed_methods)] // the client is slow on purpose
            {
                if let Some((_, d)) = pauses.next_if(|(at, _)| body >= *at) {
                    std::thread::sleep(*d);
                    let deadline = Instant::now() + extra;
                    while !done() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                std::thread::sleep(self.per_read);
            }
        }
        let head_len = head_len.unwrap_or(raw.len());
        let body = raw.split_off(head_len);
        SlowResult {
            head: String::from_utf8_lossy(&raw).into_owned(),
            body,
            timeline,
            cut_short,
        }
    }
}

impl Nginx {
    /// A complete nginx.conf (paths relative to the prefix), run in the foreground; `logs`,
    /// `tmp` and `cache` are created writable for the workers (which run as nobody).
    pub fn start_full(conf: &str, addr: SocketAddr) -> Nginx {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("front");
        for d in ["logs", "tmp", "cache", "conf"] {
            let p = dir.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let text = format!("daemon off;\nuser nobody nogroup;\n{conf}");
        std::fs::write(dir.path().join("conf/nginx.conf"), text).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        Self::run(dir, "conf/nginx.conf", addr, stderr.into())
    }
}

/// Established TCP connections whose peer is `addr`, owned by process `pid`.
pub fn established_to(pid: u32, addr: SocketAddr) -> usize {
    let out = Command::new("ss")
        .args(["-Htanp", "state", "established"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter(|l| l.split_whitespace().nth(3) == Some(&addr.to_string()))
        .count()
}

/// For the TLS tests: a CA and a leaf for 127.0.0.1/localhost signed by it (webpki does
/// not take a self-signed leaf as an anchor).
pub fn make_certs(dir: &Path, name: &str) {
    let d = dir.display();
    let script = format!(
        "set -e; cd {d}
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}-ca.key -out {name}-ca.pem -days 2 \
           -subj /CN={name}-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}-leaf.key -out {name}-leaf.csr -subj /CN=localhost
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=serverAuth\\n' > {name}-ext.cnf
         openssl x509 -req -in {name}-leaf.csr -CA {name}-ca.pem -CAkey {name}-ca.key -CAcreateserial -out {name}-leaf.pem -days 2 -extfile {name}-ext.cnf"
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nginx (OpenSSL) HTTPS front of `s3`, speaking `protocols`, plus any further `ssl_*`
/// directives (e.g. to pin a cipher suite).
/// nginx with an `ssl` listener in front of `s3`; `log_format tls` logs each request's
/// protocol and whether its session was resumed (`r`), for an `access_log` in `extra`.
pub fn tls_gateway(s3: &S3, dir: &Path, protocols: &str, extra: &str) -> Nginx {
    let d = dir.display();
    Nginx::start(
        &format!(
            "upstream s3 {{ server {}; keepalive 8; }}\n log_format tls '$ssl_protocol $ssl_session_reused';",
            s3.addr
        ),
        &format!(
            "  listen {{listen}} ssl;\n  ssl_certificate {d}/gw-leaf.pem;\n  ssl_certificate_key {d}/gw-leaf.key;\n  \
             ssl_protocols {protocols};\n  {extra}\n  location / {{\n   proxy_pass http://s3;\n   proxy_http_version 1.1;\n   \
             proxy_set_header Connection \"\";\n   proxy_set_header Host $http_host;\n  }}"
        ),
    )
}
