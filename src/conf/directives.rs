//! The directive table: name, context, arity and value parser for every directive, and the
//! defaults, all in one place (nginx's `ngx_command_t` plus `merge_loc_conf`). Turns the
//! lexer's tokens into a tree of blocks, then the tree into a typed [`Config`].

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::lexer::{tokenize, Env, Spanned, Token};
use super::{
    Addressing, Config, Endpoint, Handler, Http, Location, LocationMatch, LogLevel, LogTarget,
    Scheme, S3,
};

/// An error at a 1-based line.
type Error = (usize, String);

pub(super) fn parse(src: &str, env: &dyn Env) -> Result<Config, Error> {
    let tokens = tokenize(src, env).map_err(|e| (e.line, e.msg))?;
    let last_line = tokens.last().map_or(1, |t| t.line);
    let mut iter = tokens.into_iter().peekable();
    let nodes = tree(&mut iter, None)?;
    main(&nodes, last_line, env)
}

struct Node {
    name: String,
    args: Vec<String>,
    line: usize,
    block: Option<Vec<Node>>,
}

fn tree(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<Spanned>>,
    open_line: Option<usize>,
) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::new();
    loop {
        let Some(first) = tokens.next() else {
            return match open_line {
                Some(line) => Err((line, "unexpected end of file, expecting \"}\"".into())),
                None => Ok(nodes),
            };
        };
        let name = match first.token {
            Token::Word(w) => w,
            Token::Close if open_line.is_some() => return Ok(nodes),
            Token::Close => return Err((first.line, "unexpected \"}\"".into())),
            Token::Semicolon => return Err((first.line, "unexpected \";\"".into())),
            Token::Open => return Err((first.line, "unexpected \"{\"".into())),
        };
        let mut args = Vec::new();
        loop {
            let Some(t) = tokens.next() else {
                return Err((
                    first.line,
                    "unexpected end of file, expecting \";\" or \"}\"".into(),
                ));
            };
            match t.token {
                Token::Word(w) => args.push(w),
                Token::Semicolon => {
                    nodes.push(Node {
                        name,
                        args,
                        line: first.line,
                        block: None,
                    });
                    break;
                }
                Token::Open => {
                    let block = tree(tokens, Some(first.line))?;
                    nodes.push(Node {
                        name,
                        args,
                        line: first.line,
                        block: Some(block),
                    });
                    break;
                }
                Token::Close => return Err((t.line, "unexpected \"}\"".into())),
            }
        }
    }
}

// === the table ===

#[derive(Clone, Copy)]
enum Ctx {
    Main,
    Http,
    S3,
    Location,
}

struct Spec {
    name: &'static str,
    ctx: Ctx,
    /// Inclusive bounds on the argument count.
    args: (usize, usize),
    block: bool,
    /// May appear more than once in its block.
    multi: bool,
}

const fn d(name: &'static str, ctx: Ctx, min: usize, max: usize) -> Spec {
    Spec {
        name,
        ctx,
        args: (min, max),
        block: false,
        multi: false,
    }
}

const SPECS: &[Spec] = &[
    d("worker_threads", Ctx::Main, 1, 1),
    d("error_log", Ctx::Main, 1, 2),
    d("pid", Ctx::Main, 1, 1),
    d("shutdown_timeout", Ctx::Main, 1, 1),
    Spec {
        block: true,
        ..d("http", Ctx::Main, 0, 0)
    },
    Spec {
        multi: true,
        ..d("listen", Ctx::Http, 1, 1)
    },
    d("access_log", Ctx::Http, 1, 1),
    d("worker_connections", Ctx::Http, 1, 1),
    d("client_header_timeout", Ctx::Http, 1, 1),
    d("client_header_buffer_size", Ctx::Http, 1, 1),
    d("keepalive_timeout", Ctx::Http, 1, 1),
    d("keepalive_requests", Ctx::Http, 1, 1),
    d("send_timeout", Ctx::Http, 1, 1),
    d("relay_buffer_size", Ctx::Http, 1, 1),
    d("relay_splice", Ctx::Http, 1, 1),
    d("relay_large_buffers", Ctx::Http, 2, 2),
    d("tcp_notsent_lowat", Ctx::Http, 1, 1),
    d("manifest_cache_ttl", Ctx::Http, 1, 1),
    d("manifest_cache_size", Ctx::Http, 1, 1),
    d("max_ranges", Ctx::Http, 1, 1),
    d("tail_cache_size", Ctx::Http, 1, 1),
    Spec {
        block: true,
        multi: true,
        ..d("s3", Ctx::Http, 1, 1)
    },
    Spec {
        block: true,
        multi: true,
        ..d("location", Ctx::Http, 1, 2)
    },
    d("endpoint", Ctx::S3, 1, 1),
    d("region", Ctx::S3, 1, 1),
    d("bucket", Ctx::S3, 1, 1),
    d("addressing", Ctx::S3, 1, 1),
    d("access_key_id", Ctx::S3, 1, 1),
    d("secret_access_key", Ctx::S3, 1, 1),
    d("session_token", Ctx::S3, 1, 1),
    d("tls_ca_file", Ctx::S3, 1, 1),
    d("connect_timeout", Ctx::S3, 1, 1),
    d("read_timeout", Ctx::S3, 1, 1),
    d("keepalive", Ctx::S3, 1, 1),
    d("keepalive_timeout", Ctx::S3, 1, 1),
    d("retries", Ctx::S3, 1, 1),
    d("retry_backoff", Ctx::S3, 1, 1),
    d("resolve_interval", Ctx::S3, 1, 1),
    d("composite", Ctx::Location, 1, 1),
    d("object", Ctx::Location, 1, 1),
    d("stub_status", Ctx::Location, 0, 0),
    d("metrics", Ctx::Location, 0, 0),
];

/// Checks name, context, arity, block shape and duplicates of every node of one block.
fn check_block(nodes: &[Node], ctx: Ctx) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for n in nodes {
        let spec = SPECS.iter().find(|s| {
            s.name == n.name && std::mem::discriminant(&s.ctx) == std::mem::discriminant(&ctx)
        });
        let Some(spec) = spec else {
            return Err(if SPECS.iter().any(|s| s.name == n.name) {
                (
                    n.line,
                    format!("\"{}\" directive is not allowed here", n.name),
                )
            } else {
                (n.line, format!("unknown directive \"{}\"", n.name))
            });
        };
        if spec.block != n.block.is_some() {
            let msg = if spec.block {
                format!("directive \"{}\" has no opening \"{{\"", n.name)
            } else {
                format!("directive \"{}\" is not terminated by \";\"", n.name)
            };
            return Err((n.line, msg));
        }
        if n.args.len() < spec.args.0 || n.args.len() > spec.args.1 {
            return Err((
                n.line,
                format!("invalid number of arguments in \"{}\" directive", n.name),
            ));
        }
        if !spec.multi && !seen.insert(n.name.as_str()) {
            return Err((n.line, format!("\"{}\" directive is duplicate", n.name)));
        }
    }
    Ok(())
}

fn find<'a>(nodes: &'a [Node], name: &str) -> Option<&'a Node> {
    nodes.iter().find(|n| n.name == name)
}

/// Applies `parse` to the single argument of directive `name` when present, else `default`.
fn value<T>(
    nodes: &[Node],
    name: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, Error> {
    match find(nodes, name) {
        Some(n) => {
            parse(&n.args[0]).map_err(|msg| (n.line, format!("{msg} in \"{name}\" directive")))
        }
        None => Ok(default),
    }
}

// === main and http ===

fn main(nodes: &[Node], last_line: usize, env: &dyn Env) -> Result<Config, Error> {
    check_block(nodes, Ctx::Main)?;
    let worker_threads = value(nodes, "worker_threads", 0, |v| {
        if v == "auto" {
            Ok(0)
        } else {
            positive(v)
        }
    })?;
    let worker_threads = if worker_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        worker_threads
    };
    let error_log = match find(nodes, "error_log") {
        Some(n) => {
            let target = match n.args[0].as_str() {
                "stderr" => LogTarget::Stderr,
                path => LogTarget::File(PathBuf::from(path)),
            };
            let level = match n.args.get(1).map(String::as_str) {
                None | Some("error") | Some("crit") | Some("alert") | Some("emerg") => {
                    LogLevel::Error
                }
                Some("warn") => LogLevel::Warn,
                Some("notice") => LogLevel::Notice,
                Some("info") => LogLevel::Info,
                Some("debug") => LogLevel::Debug,
                Some(other) => {
                    return Err((n.line, format!("invalid log level \"{other}\"")));
                }
            };
            (target, level)
        }
        None => (LogTarget::Stderr, LogLevel::Error),
    };
    let pid = value(nodes, "pid", None, |v| Ok(Some(PathBuf::from(v))))?;
    let shutdown_timeout = value(nodes, "shutdown_timeout", Duration::from_secs(60), time)?;
    let Some(http_node) = find(nodes, "http") else {
        return Err((last_line, "no \"http\" block".into()));
    };
    let http = http(http_node, env)?;
    Ok(Config {
        worker_threads,
        error_log,
        pid,
        shutdown_timeout,
        http,
    })
}

fn http(node: &Node, env: &dyn Env) -> Result<Http, Error> {
    let nodes = node.block.as_deref().unwrap_or(&[]);
    check_block(nodes, Ctx::Http)?;
    let mut listen = Vec::new();
    for n in nodes.iter().filter(|n| n.name == "listen") {
        listen.push(listen_addr(&n.args[0]).map_err(|m| (n.line, m))?);
    }
    if listen.is_empty() {
        return Err((
            node.line,
            "no \"listen\" directive in \"http\" block".into(),
        ));
    }
    let mut s3 = Vec::new();
    for n in nodes.iter().filter(|n| n.name == "s3") {
        if s3.iter().any(|s: &S3| s.name == n.args[0]) {
            return Err((n.line, format!("duplicate s3 block \"{}\"", n.args[0])));
        }
        s3.push(s3_block(n, env)?);
    }
    let mut locations: Vec<Location> = Vec::new();
    for n in nodes.iter().filter(|n| n.name == "location") {
        let loc = location(n, &s3)?;
        if locations.iter().any(|l| l.matcher == loc.matcher) {
            return Err((n.line, "duplicate location".into()));
        }
        locations.push(loc);
    }
    let kb = |k: usize| k * 1024;
    let client_header_buffer_size = value(nodes, "client_header_buffer_size", kb(8), |v| {
        at_least(size(v)?, 256)
    })?;
    Ok(Http {
        listen,
        access_log: value(nodes, "access_log", None, |v| {
            Ok((v != "off").then(|| PathBuf::from(v)))
        })?,
        worker_connections: value(nodes, "worker_connections", 10240, positive)?,
        client_header_timeout: value(nodes, "client_header_timeout", secs(60), time)?,
        client_header_buffer_size,
        keepalive_timeout: value(nodes, "keepalive_timeout", secs(75), time)?,
        keepalive_requests: value(nodes, "keepalive_requests", 1000, |v| {
            positive(v).map(|n| n as u64)
        })?,
        send_timeout: value(nodes, "send_timeout", secs(60), time)?,
        relay_buffer_size: value(nodes, "relay_buffer_size", kb(64), |v| {
            at_least(size(v)?, 4096)
        })?,
        relay_large_buffers: match find(nodes, "relay_large_buffers") {
            Some(n) => {
                let at = |msg: String| {
                    (
                        n.line,
                        format!("{msg} in \"relay_large_buffers\" directive"),
                    )
                };
                let count = number(&n.args[0]).map_err(at)?;
                let size = size(&n.args[1])
                    .and_then(|v| at_least(v, 4096))
                    .map_err(at)?;
                (count, size)
            }
            None => (0, 1 << 20),
        },
        relay_splice: value(nodes, "relay_splice", false, flag)?,
        tcp_notsent_lowat: value(nodes, "tcp_notsent_lowat", None, notsent_lowat)?,
        manifest_cache_ttl: value(nodes, "manifest_cache_ttl", secs(5), time)?,
        manifest_cache_size: value(nodes, "manifest_cache_size", 1024, number)?,
        max_ranges: value(nodes, "max_ranges", 16, positive)?,
        tail_cache_size: value(nodes, "tail_cache_size", 0, |v| size(v).map(|n| n as u64))?,
        s3,
        locations,
    })
}

fn location(node: &Node, s3: &[S3]) -> Result<Location, Error> {
    let matcher = match node.args.as_slice() {
        [p] => LocationMatch::Prefix(p.clone()),
        [eq, p] if eq == "=" => LocationMatch::Exact(p.clone()),
        [m, _] => return Err((node.line, format!("invalid location modifier \"{m}\""))),
        _ => {
            return Err((
                node.line,
                "invalid number of arguments in \"location\" directive".into(),
            ))
        }
    };
    let path = match &matcher {
        LocationMatch::Exact(p) | LocationMatch::Prefix(p) => p,
    };
    if !path.starts_with('/') {
        return Err((
            node.line,
            format!("location \"{path}\" must start with \"/\""),
        ));
    }
    let nodes = node.block.as_deref().unwrap_or(&[]);
    check_block(nodes, Ctx::Location)?;
    let mut handler = None;
    for n in nodes {
        if handler.is_some() {
            return Err((
                n.line,
                "only one of \"composite\", \"object\", \"stub_status\", \"metrics\" per location"
                    .into(),
            ));
        }
        let by_name = |kind: fn(usize) -> Handler| {
            s3.iter()
                .position(|s| s.name == n.args[0])
                .map(kind)
                .ok_or_else(|| (n.line, format!("no s3 block named \"{}\"", n.args[0])))
        };
        handler = Some(match n.name.as_str() {
            "composite" => by_name(Handler::Composite)?,
            "object" => by_name(Handler::Object)?,
            "stub_status" => Handler::StubStatus,
            _ => Handler::Metrics,
        });
    }
    let Some(handler) = handler else {
        return Err((
            node.line,
            "location has no handler (composite, object, stub_status or metrics)".into(),
        ));
    };
    Ok(Location { matcher, handler })
}

/// An `s3` block. What it leaves out is found the way AWS tools find it: the region in
/// `AWS_REGION` (else `us-east-1`), the endpoint in `AWS_ENDPOINT_URL` (else AWS's regional
/// one), the keys in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` with
/// `AWS_SESSION_TOKEN` beside them; only the bucket must be given.
fn s3_block(node: &Node, env: &dyn Env) -> Result<S3, Error> {
    let nodes = node.block.as_deref().unwrap_or(&[]);
    check_block(nodes, Ctx::S3)?;
    let name = &node.args[0];
    let plain = |v: &str| -> Result<String, String> {
        if v.is_empty() || v.bytes().any(|b| b.is_ascii_control()) {
            Err("empty value or control characters".into())
        } else {
            Ok(v.to_string())
        }
    };
    // A variable of the environment, set and not empty, checked as `plain` does.
    let from_env = |var: &str| -> Result<Option<String>, Error> {
        match env.var(var).filter(|v| !v.is_empty()) {
            Some(v) => plain(&v)
                .map(Some)
                .map_err(|m| (node.line, format!("{m} in {var} (for s3 block \"{name}\")"))),
            None => Ok(None),
        }
    };
    let region = match value(nodes, "region", None, |v| plain(v).map(Some))? {
        Some(r) => r,
        None => from_env("AWS_REGION")?.unwrap_or_else(|| "us-east-1".to_string()),
    };
    let (endpoint, endpoint_line) = match find(nodes, "endpoint") {
        Some(n) => (
            endpoint(&n.args[0]).map_err(|m| (n.line, format!("{m} in \"endpoint\" directive")))?,
            n.line,
        ),
        None => {
            let (url, origin) = match from_env("AWS_ENDPOINT_URL")? {
                Some(url) => (url, "AWS_ENDPOINT_URL"),
                None => (aws_endpoint(&region), "the default endpoint"),
            };
            let e = endpoint(&url).map_err(|m| {
                (
                    node.line,
                    format!("{m} in {origin} (for s3 block \"{name}\")"),
                )
            })?;
            (e, node.line)
        }
    };
    let Some(bucket) = find(nodes, "bucket") else {
        return Err((
            node.line,
            format!("no \"bucket\" directive in s3 block \"{name}\""),
        ));
    };
    let bucket = plain(&bucket.args[0])
        .map_err(|m| (bucket.line, format!("{m} in \"bucket\" directive")))?;
    let addressing = value(nodes, "addressing", Addressing::Path, |v| match v {
        "path" => Ok(Addressing::Path),
        "virtual" => Ok(Addressing::Virtual),
        _ => Err(format!("invalid value \"{v}\" (path or virtual)")),
    })?;
    // Where a failure to resolve the host is reported: with virtual-hosted addressing the
    // name is the bucket's (a provider may serve buckets from addresses of their own).
    let line = match addressing {
        Addressing::Path => endpoint_line,
        Addressing::Virtual => {
            let line = find(nodes, "addressing").map_or(node.line, |n| n.line);
            if endpoint.host.parse::<std::net::IpAddr>().is_ok() {
                return Err((
                    line,
                    "virtual-hosted addressing needs a host name in \"endpoint\", not an IP address".into(),
                ));
            }
            line
        }
    };
    let given = |directive: &str| -> Result<Option<String>, Error> {
        value(nodes, directive, None, |v| plain(v).map(Some))
    };
    // The keys come as a pair, from the block or from the environment, and a session token
    // from where they came unless the block names one.
    let (access_key_id, secret_access_key, env_token) =
        match (given("access_key_id")?, given("secret_access_key")?) {
            (Some(id), Some(secret)) => (id, secret, None),
            (None, None) => match (
                from_env("AWS_ACCESS_KEY_ID")?,
                from_env("AWS_SECRET_ACCESS_KEY")?,
            ) {
                (Some(id), Some(secret)) => (id, secret, from_env("AWS_SESSION_TOKEN")?),
                _ => {
                    return Err((
                        node.line,
                        format!(
                            "s3 block \"{name}\" has no credentials: \"access_key_id\" and \
                             \"secret_access_key\", or AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY in the environment"
                        ),
                    ))
                }
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err((
                    node.line,
                    format!(
                        "s3 block \"{name}\" needs both \"access_key_id\" and \"secret_access_key\""
                    ),
                ))
            }
        };
    let session_token = given("session_token")?.or(env_token);
    let tls_ca_file = value(nodes, "tls_ca_file", None, |v| Ok(Some(PathBuf::from(v))))?;
    if tls_ca_file.is_some() && endpoint.scheme == Scheme::Http {
        if let Some(n) = find(nodes, "tls_ca_file") {
            return Err((n.line, "\"tls_ca_file\" needs an https endpoint".into()));
        }
    }
    let mut s3 = S3 {
        name: node.args[0].clone(),
        endpoint,
        region,
        bucket,
        addressing,
        access_key_id,
        secret_access_key,
        session_token,
        tls_ca_file,
        connect_timeout: value(nodes, "connect_timeout", secs(5), time)?,
        read_timeout: value(nodes, "read_timeout", secs(30), time)?,
        keepalive: value(nodes, "keepalive", 32, number)?,
        keepalive_timeout: value(nodes, "keepalive_timeout", secs(20), time)?,
        retries: value(nodes, "retries", 3, |v| {
            number(v).map(|n| n.min(100) as u32)
        })?,
        retry_backoff: value(nodes, "retry_backoff", Duration::from_millis(50), time)?,
        resolve_interval: value(nodes, "resolve_interval", Some(secs(30)), |v| {
            if v == "off" {
                return Ok(None);
            }
            match time(v)? {
                t if t < secs(1) => Err(format!("interval \"{v}\" is below the minimum 1s")),
                t => Ok(Some(t)),
            }
        })?,
    };
    // Resolved now, so that no worker ever blocks on DNS.
    let host = s3.host();
    s3.endpoint.addrs = super::lookup(&host, s3.endpoint.port)
        .map_err(|e| (line, format!("cannot resolve \"{host}\": {e}")))?;
    if s3.endpoint.addrs.is_empty() {
        return Err((line, format!("\"{host}\" resolves to no address")));
    }
    Ok(s3)
}

/// AWS's S3 endpoint for `region`.
fn aws_endpoint(region: &str) -> String {
    format!("https://s3.{region}.amazonaws.com")
}

// === value parsers ===

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn number(v: &str) -> Result<usize, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number \"{v}\""));
    }
    v.parse()
        .map_err(|_| format!("number \"{v}\" is too large"))
}

/// nginx flags: `on` or `off`.
fn flag(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("invalid value \"{v}\" (on or off)")),
    }
}

/// `off`, or a size from 1 byte to 1 GiB (`TCP_NOTSENT_LOWAT` takes a C int).
fn notsent_lowat(v: &str) -> Result<Option<u32>, String> {
    if v == "off" {
        return Ok(None);
    }
    let n = size(v)?;
    match u32::try_from(n) {
        Ok(n @ 1..=0x4000_0000) => Ok(Some(n)),
        _ => Err(format!("\"{v}\" must be off or from 1 to 1g")),
    }
}

fn positive(v: &str) -> Result<usize, String> {
    match number(v)? {
        0 => Err(format!("\"{v}\" must be at least 1")),
        n => Ok(n),
    }
}

fn at_least(n: usize, min: usize) -> Result<usize, String> {
    if n < min {
        Err(format!("value {n} is below the minimum {min}"))
    } else {
        Ok(n)
    }
}

/// nginx sizes: bytes, or a number followed by `k`, `m` or `g` (either case).
pub(super) fn size(v: &str) -> Result<usize, String> {
    let (digits, mult) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1usize << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    number(digits)
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size \"{v}\""))
}

/// nginx times: a sequence of `<n><unit>` with units `ms`, `s`, `m`, `h`, `d`; a bare number
/// is seconds.
pub(super) fn time(v: &str) -> Result<Duration, String> {
    let bad = || format!("invalid time \"{v}\"");
    if v.is_empty() {
        return Err(bad());
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b's') => (1000, 1),
                Some(b'm') => (60_000, 1),
                Some(b'h') => (3_600_000, 1),
                Some(b'd') => (86_400_000, 1),
                _ => return Err(bad()),
            }
        };
        let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
        rest = &rest[len..];
    }
    Ok(total)
}

fn listen_addr(v: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = v.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let mut addrs = v
        .to_socket_addrs()
        .map_err(|e| format!("invalid listen address \"{v}\": {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("listen address \"{v}\" resolves to nothing"))
}

/// `http[s]://host[:port][/]`; its addresses are left for the s3 block to resolve.
fn endpoint(v: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = if let Some(r) = v.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = v.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!(
            "invalid URL \"{v}\": expecting http:// or https://"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "invalid URL \"{v}\": expecting scheme://host[:port]"
        ));
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("invalid URL \"{v}\": unclosed \"[\""))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("invalid port in URL \"{v}\""))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("invalid URL \"{v}\"")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("invalid port in URL \"{v}\""))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err(format!("invalid host in URL \"{v}\""));
    }
    Ok(Endpoint {
        scheme,
        host,
        port,
        addrs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ConfError, Config};
    use super::*;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            (name == "SECRET").then(|| "s3cr3t".to_string())
        }
    }

    const S3: &str = "s3 b { endpoint http://127.0.0.1:9000; bucket apks; access_key_id AK; secret_access_key $SECRET; }";

    fn conf(http_body: &str) -> Result<Config, ConfError> {
        Config::parse("t.conf", &format!("http {{\n{http_body}\n}}\n"), &NoEnv)
    }

    fn err(src: &str) -> String {
        Config::parse("t.conf", src, &NoEnv)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn example_conf_parses_with_every_value() {
        let src =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tailgate.conf"))
                .unwrap();
        struct All;
        impl Env for All {
            fn var(&self, name: &str) -> Option<String> {
                Some(match name {
                    "TAILGATE_LISTEN" => "127.0.0.1:0".into(),
                    "TAILGATE_S3_ENDPOINT" => "http://127.0.0.1:9000".into(),
                    _ => "x".into(),
                })
            }
        }
        let c = Config::parse("conf/tailgate.conf", &src, &All).unwrap();
        assert_eq!(c.http.s3.len(), 1);
        assert_eq!(c.http.s3[0].keepalive, 32);
        assert_eq!(c.http.s3[0].keepalive_timeout, secs(20));
        assert_eq!(c.http.client_header_buffer_size, 8192);
        assert_eq!(c.http.locations.len(), 4);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = conf(&format!(
            "listen 127.0.0.1:0; {S3} location /apk/ {{ composite b; }}"
        ))
        .unwrap();
        assert_eq!(c.http.relay_buffer_size, 64 * 1024);
        assert_eq!(c.http.max_ranges, 16);
        assert_eq!(c.http.manifest_cache_ttl, secs(5));
        assert_eq!(c.http.tail_cache_size, 0);
        assert!(!c.http.relay_splice);
        assert_eq!(c.http.relay_large_buffers, (0, 1 << 20));
        assert_eq!(c.http.s3[0].retry_backoff, Duration::from_millis(50));
        assert_eq!(c.http.s3[0].resolve_interval, Some(secs(30)));
        assert_eq!(c.http.s3[0].secret_access_key, "s3cr3t");
        assert_eq!(c.http.s3[0].region, "us-east-1");
        assert_eq!(c.http.locations[0].handler, Handler::Composite(0));
        assert!(c.worker_threads >= 1);
    }

    #[test]
    fn resolve_interval_is_a_time_of_at_least_a_second_or_off() {
        let with = |v: &str| {
            conf(&format!(
                "listen 1;\ns3 b {{ endpoint http://127.0.0.1:9000; bucket apks; access_key_id AK; secret_access_key AK;\n resolve_interval {v}; }}"
            ))
        };
        let interval = |v: &str| with(v).map(|c| c.http.s3[0].resolve_interval);
        assert_eq!(interval("off").ok(), Some(None));
        assert_eq!(interval("5m").ok(), Some(Some(secs(300))));
        assert_eq!(
            with("500ms").unwrap_err().to_string(),
            "t.conf:4: interval \"500ms\" is below the minimum 1s in \"resolve_interval\" directive"
        );
    }

    #[test]
    fn tcp_notsent_lowat_is_a_size_up_to_a_gigabyte_or_off() {
        let with = |v: &str| conf(&format!("listen 1;\ntcp_notsent_lowat {v}; {S3}"));
        let lowat = |v: &str| with(v).map(|c| c.http.tcp_notsent_lowat);
        assert_eq!(lowat("off").ok(), Some(None));
        assert_eq!(lowat("128k").ok(), Some(Some(128 << 10)));
        assert_eq!(lowat("1g").ok(), Some(Some(1 << 30)));
        for bad in ["0", "2g"] {
            assert_eq!(
                with(bad).unwrap_err().to_string(),
                format!("t.conf:3: \"{bad}\" must be off or from 1 to 1g in \"tcp_notsent_lowat\" directive")
            );
        }
        assert_eq!(
            with("lots").unwrap_err().to_string(),
            "t.conf:3: invalid size \"lots\" in \"tcp_notsent_lowat\" directive"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("http {\n listne 1;\n}", "t.conf:2: unknown directive \"listne\""),
            ("http {\n listen 1;\n region x;\n}", "t.conf:3: \"region\" directive is not allowed here"),
            ("listen 1;\nhttp { listen 1; }", "t.conf:1: \"listen\" directive is not allowed here"),
            ("http {\n listen 1;\n location /a/ {\n  composite nosuch;\n }\n}", "t.conf:4: no s3 block named \"nosuch\""),
            ("http {\n listen 1;\n send_timeout 5x;\n}", "t.conf:3: invalid time \"5x\" in \"send_timeout\" directive"),
            ("http {\n listen 1;\n relay_buffer_size 1q;\n}", "t.conf:3: invalid size \"1q\" in \"relay_buffer_size\" directive"),
            ("http {\n listen 1;\n relay_large_buffers 8 1x;\n}", "t.conf:3: invalid size \"1x\" in \"relay_large_buffers\" directive"),
            ("http {\n listen 1;\n relay_large_buffers 8;\n}", "t.conf:3: invalid number of arguments in \"relay_large_buffers\" directive"),
            ("http {\n listen 1;\n\n relay_splice yes;\n}", "t.conf:4: invalid value \"yes\" (on or off) in \"relay_splice\" directive"),
            ("http {\n listen 1;\n send_timeout 1s;\n send_timeout 2s;\n}", "t.conf:4: \"send_timeout\" directive is duplicate"),
            ("http {\n listen 1;\n send_timeout;\n}", "t.conf:3: invalid number of arguments in \"send_timeout\" directive"),
            ("http {\n}\n", "t.conf:1: no \"listen\" directive in \"http\" block"),
            ("worker_threads 2;\n", "t.conf:1: no \"http\" block"),
            ("http {\n listen 1;\n", "t.conf:1: unexpected end of file, expecting \"}\""),
            ("http {\n listen 1;\n s3 b {\n  endpoint ftp://x;\n }\n}", "t.conf:4: invalid URL \"ftp://x\": expecting http:// or https:// in \"endpoint\" directive"),
            ("http {\n listen 1;\n s3 b {\n  endpoint http://127.0.0.1:99999;\n }\n}", "t.conf:4: invalid port in URL \"http://127.0.0.1:99999\" in \"endpoint\" directive"),
            ("http {\n listen 1;\n location /a/ {\n }\n}", "t.conf:3: location has no handler (composite, object, stub_status or metrics)"),
            ("http {\n listen 1;\n location ~ /a/ {\n stub_status;\n }\n}", "t.conf:3: invalid location modifier \"~\""),
            ("http {\n listen 1;\n key $NOPE;\n}", "t.conf:3: environment variable \"NOPE\" is not set"),
            ("http {\n listen 1;\n keepalive_timeout 5s {\n }\n}", "t.conf:3: directive \"keepalive_timeout\" is not terminated by \";\""),
            ("http;", "t.conf:1: directive \"http\" has no opening \"{\""),
        ];
        for (src, want) in cases {
            assert_eq!(&err(src), want, "for {src:?}");
        }
    }

    #[test]
    fn sizes_and_times_parse_like_nginx() {
        assert_eq!(size("8k"), Ok(8192));
        assert_eq!(size("1M"), Ok(1 << 20));
        assert_eq!(size("2g"), Ok(2 << 30));
        assert_eq!(size("100"), Ok(100));
        assert!(size("k").is_err());
        assert!(size("-1").is_err());
        assert!(size("99999999999999999999g").is_err());
        assert_eq!(time("10s"), Ok(secs(10)));
        assert_eq!(time("30"), Ok(secs(30)));
        assert_eq!(time("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(time("1m30s"), Ok(secs(90)));
        assert_eq!(time("1h"), Ok(secs(3600)));
        assert!(time("1x").is_err());
        assert!(time("s").is_err());
        assert!(time("").is_err());
    }

    #[test]
    fn virtual_hosted_addressing_resolves_the_bucket_host() {
        let with = |endpoint: &str, addressing: &str| {
            conf(&format!(
                "listen 1;\ns3 b {{ endpoint {endpoint}; bucket apks; access_key_id AK; secret_access_key AK;\n addressing {addressing}; }}"
            ))
        };
        let c = with("http://localhost:9000", "virtual").unwrap();
        let b = &c.http.s3[0];
        assert_eq!(b.host(), "apks.localhost");
        assert_eq!(
            b.endpoint.addrs,
            super::super::lookup("localhost", 9000).unwrap()
        );
        let c = with("http://localhost:9000", "path").unwrap();
        assert_eq!(c.http.s3[0].host(), "localhost");
        assert_eq!(
            with("http://127.0.0.1:9000", "virtual")
                .unwrap_err()
                .to_string(),
            "t.conf:4: virtual-hosted addressing needs a host name in \"endpoint\", not an IP address"
        );
        assert_eq!(
            with("http://localhost:9000", "vhost")
                .unwrap_err()
                .to_string(),
            "t.conf:4: invalid value \"vhost\" (path or virtual) in \"addressing\" directive"
        );
        for (addressing, expected) in [
            (
                "virtual",
                "t.conf:4: cannot resolve \"apks.tailgate-test.invalid\"",
            ),
            ("path", "t.conf:3: cannot resolve \"tailgate-test.invalid\""),
        ] {
            let unknown = with("http://tailgate-test.invalid:9000", addressing)
                .unwrap_err()
                .to_string();
            assert!(unknown.starts_with(expected), "{unknown}");
        }
    }

    #[test]
    fn names_under_localhost_are_loopback() {
        let local = super::super::lookup("localhost", 443).unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback()));
        for name in ["apks.localhost", "a.b.LOCALHOST"] {
            assert_eq!(super::super::lookup(name, 443).unwrap(), local, "{name}");
        }
        assert_eq!(
            super::super::lookup("127.0.0.1", 80).unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))]
        );
        for name in [".localhost", "notlocalhost.invalid"] {
            assert!(super::super::lookup(name, 80).is_err(), "{name}");
        }
    }

    #[test]
    fn endpoint_urls_are_checked() {
        let e = endpoint("https://127.0.0.1").unwrap();
        assert_eq!((e.scheme, e.port), (Scheme::Https, 443));
        assert_eq!(e.authority("127.0.0.1"), "127.0.0.1");
        let e = endpoint("http://127.0.0.1:9000/").unwrap();
        assert_eq!(e.authority("b.127.0.0.1"), "b.127.0.0.1:9000");
        let e = endpoint("http://[::1]:9000").unwrap();
        assert_eq!(e.authority("::1"), "[::1]:9000");
        for bad in [
            "http://",
            "http://h/path",
            "http://u@h",
            "127.0.0.1:9000",
            "http://h:x",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    /// An environment of the given variables only.
    struct Vars(&'static [(&'static str, &'static str)]);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn s3_with(block: &str, env: &Vars) -> Result<S3, String> {
        let src = format!("http {{\n listen 1;\n s3 b {{ {block} }}\n}}\n");
        Config::parse("t.conf", &src, env)
            .map(|c| c.http.s3[0].clone())
            .map_err(|e| e.to_string())
    }

    const AWS_ENV: Vars = Vars(&[
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("AWS_ACCESS_KEY_ID", "ENVKEY"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ("AWS_SESSION_TOKEN", "envtoken"),
    ]);

    #[test]
    fn an_s3_block_takes_what_it_leaves_out_from_the_aws_environment() {
        let s = s3_with("bucket apks;", &AWS_ENV).unwrap();
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(
            (s.endpoint.scheme, s.endpoint.host.as_str(), s.endpoint.port),
            (Scheme::Http, "127.0.0.1", 9000)
        );
        assert!(!s.endpoint.addrs.is_empty());
        assert_eq!(
            (
                s.access_key_id.as_str(),
                s.secret_access_key.as_str(),
                s.session_token.as_deref()
            ),
            ("ENVKEY", "envsecret", Some("envtoken"))
        );
    }

    #[test]
    fn what_an_s3_block_says_wins_over_the_environment() {
        let s = s3_with(
            "endpoint http://127.0.0.1:9001; region r1; bucket apks; access_key_id AK; secret_access_key SK;",
            &AWS_ENV,
        )
        .unwrap();
        assert_eq!(s.region, "r1");
        assert_eq!(s.endpoint.port, 9001);
        // The environment's token belongs to the environment's keys.
        assert_eq!(
            (
                s.access_key_id.as_str(),
                s.secret_access_key.as_str(),
                s.session_token
            ),
            ("AK", "SK", None)
        );
        let s = s3_with(
            "endpoint http://127.0.0.1:9001; bucket apks; access_key_id AK; secret_access_key SK; session_token T;",
            &AWS_ENV,
        )
        .unwrap();
        assert_eq!(s.session_token.as_deref(), Some("T"));
        assert_eq!(
            aws_endpoint("eu-west-1"),
            "https://s3.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn an_s3_block_without_keys_or_bucket_is_refused_at_its_line() {
        let none = Vars(&[]);
        let at = "endpoint http://127.0.0.1:9000; bucket apks;";
        assert_eq!(
            s3_with(at, &none).unwrap_err(),
            "t.conf:3: s3 block \"b\" has no credentials: \"access_key_id\" and \
             \"secret_access_key\", or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
             environment"
        );
        // Half of a pair is not completed from the environment.
        assert_eq!(
            s3_with(&format!("{at} access_key_id AK;"), &AWS_ENV).unwrap_err(),
            "t.conf:3: s3 block \"b\" needs both \"access_key_id\" and \"secret_access_key\""
        );
        let only_id = Vars(&[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "")]);
        assert!(s3_with(at, &only_id)
            .unwrap_err()
            .contains("has no credentials"));
        assert_eq!(
            s3_with("endpoint http://127.0.0.1:9000;", &AWS_ENV).unwrap_err(),
            "t.conf:3: no \"bucket\" directive in s3 block \"b\""
        );
        let bad = Vars(&[("AWS_ENDPOINT_URL", "127.0.0.1:9000")]);
        assert!(s3_with("bucket apks;", &bad)
            .unwrap_err()
            .starts_with("t.conf:3: "));
        assert!(s3_with("bucket apks;", &bad)
            .unwrap_err()
            .ends_with("in AWS_ENDPOINT_URL (for s3 block \"b\")"));
    }

    #[test]
    fn exact_and_prefix_locations_are_kept_apart() {
        let c = conf(&format!(
            "listen 1; {S3} location /apk/ {{ composite b; }} location = /apk/ {{ stub_status; }} location /f/ {{ object b; }}"
        ))
        .unwrap();
        assert_eq!(
            c.http.locations[1].matcher,
            LocationMatch::Exact("/apk/".into())
        );
        assert_eq!(c.http.locations[2].handler, Handler::Object(0));
        assert!(conf("listen 1; location /a/ { stub_status; metrics; }").is_err());
    }
}
