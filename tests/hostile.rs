//! Every byte from a peer is treated as an attack (SPEC §3): a table of raw requests —
//! smuggling shapes, bad targets, bad headers, bodies, versions — each with the status it
//! must get and whether the connection must close; after each, a normal request must still
//! be served (on the same connection when it stays open).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const OK: &str = "GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\n\r\n";

fn cases() -> Vec<(&'static str, Vec<u8>, u16, bool)> {
    let g =
        |extra: &str| format!("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes();
    let line = |l: &str| format!("{l}\r\nHost: t\r\n\r\n").into_bytes();
    let long_target = format!("GET /apk/{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let long_header = format!(
        "GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let many_headers = format!(
        "GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-N: 1\r\n".repeat(101)
    );
    let big_chunk =
        b"GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n20000\r\n"
            .to_vec();
    let b = |s: &str| s.as_bytes().to_vec();
    vec![
        // served
        ("plain GET", g(""), 200, false),
        ("HEAD", b("HEAD /apk/h/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 200, false),
        ("HEAD with Range is whole", b("HEAD /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\n\r\n"), 200, false),
        ("empty Host on 1.1", b("GET /apk/h/a.apk HTTP/1.1\r\nHost:\r\n\r\n"), 200, false),
        ("Host with port", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t:8080\r\n\r\n"), 200, false),
        ("IPv6 Host", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 200, false),
        ("absolute-form", b("GET http://t/apk/h/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 200, false),
        ("leading empty line", b("\r\nGET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 200, false),
        ("HTTP/1.0 closes", b("GET /apk/h/a.apk HTTP/1.0\r\n\r\n"), 200, true),
        ("HTTP/1.0 keep-alive", b("GET /apk/h/a.apk HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 200, false),
        ("Connection: close", g("Connection: close\r\n"), 200, true),
        ("obs-text in a value", b"GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nUser-Agent: caf\xe9\r\n\r\n".to_vec(), 200, false),
        ("Expect: 100-continue", g("Expect: 100-continue\r\n"), 200, false),
        ("underscore header name", g("X_Forwarded: 1\r\n"), 200, false),
        ("Content-Length body discarded", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"), 200, false),
        ("repeated equal Content-Length", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"), 200, false),
        ("Content-Length list of equals", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc"), 200, false),
        ("chunked body discarded", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), 200, false),
        ("chunked with extension and trailer", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"), 200, false),
        ("query string ignored", b("GET /apk/h/a.apk?x=1&y=%zz HTTP/1.1\r\nHost: t\r\n\r\n"), 200, false),
        ("encoded variant", b("GET /apk/h/%61.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 200, false),
        // answered, connection kept
        ("unknown variant", b("GET /apk/h/zz.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 404, false),
        ("unknown package", b("GET /apk/nope/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 404, false),
        ("no location", b("GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n"), 404, false),
        ("double slash misses the prefix", b("GET //apk/h/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 404, false),
        ("POST", b("POST /apk/h/a.apk HTTP/1.1\r\nHost: t\r\n\r\n"), 405, false),
        ("POST with a body", b("POST /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd"), 405, false),
        ("PUT", line("PUT /apk/h/a.apk HTTP/1.1"), 405, false),
        ("DELETE", line("DELETE /files/x HTTP/1.1"), 405, false),
        ("OPTIONS *", line("OPTIONS * HTTP/1.1"), 405, false),
        ("TRACE never echoes", b("TRACE /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nX-Secret: s3cr3t\r\n\r\n"), 405, false),
        ("PATCH", line("PATCH /apk/h/a.apk HTTP/1.1"), 405, false),
        ("CONNECT", line("CONNECT t:443 HTTP/1.1"), 405, false),
        ("If-Match fails", g("If-Match: \"nope\"\r\n"), 412, false),
        ("unsatisfiable range", g("Range: bytes=999999-\r\n"), 416, false),
        ("If-None-Match *", g("If-None-Match: *\r\n"), 304, false),
        // malformed: answered and closed
        ("lowercase method", line("get /apk/h/a.apk HTTP/1.1"), 501, true),
        ("unknown method", line("BREW /apk/h/a.apk HTTP/1.1"), 501, true),
        ("HTTP/2.0", line("GET /apk/h/a.apk HTTP/2.0"), 505, true),
        ("HTTP/1.32", line("GET /apk/h/a.apk HTTP/1.32"), 505, true),
        ("HTTP/1", line("GET /apk/h/a.apk HTTP/1"), 400, true),
        ("HTTX", line("GET /apk/h/a.apk HTTX/1.1"), 400, true),
        ("double space in request line", line("GET  /apk/h/a.apk HTTP/1.1"), 400, true),
        ("no Host on 1.1", b("GET /apk/h/a.apk HTTP/1.1\r\n\r\n"), 400, true),
        ("two Hosts", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400, true),
        ("Host with a space", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: a b\r\n\r\n"), 400, true),
        ("Host with a slash", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400, true),
        ("asterisk target on GET", line("GET * HTTP/1.1"), 400, true),
        ("relative target", line("GET apk/h/a.apk HTTP/1.1"), 400, true),
        ("obs-fold", g("X-A: b\r\n c\r\n"), 400, true),
        ("space before colon", g("X-A : b\r\n"), 400, true),
        ("whitespace before the first header", b("GET /apk/h/a.apk HTTP/1.1\r\n Host: t\r\n\r\n"), 400, true),
        ("bare CR in a value", g("X-A: b\rc\r\n"), 400, true),
        ("NUL in a value", g("X-A: b\0c\r\n"), 400, true),
        ("control byte in a value", g("X-A: b\x01c\r\n"), 400, true),
        ("non-token header name", g("X(A): b\r\n"), 400, true),
        ("%00 in the target", line("GET /apk/h/a%00.apk HTTP/1.1"), 400, true),
        ("bad % escape", line("GET /apk/h/%zz.apk HTTP/1.1"), 400, true),
        ("encoded newline in the target", line("GET /apk/h/a%0a.apk HTTP/1.1"), 400, true),
        ("dot-dot", line("GET /apk/../files/h/base.apk HTTP/1.1"), 400, true),
        ("encoded dot-dot", line("GET /apk/%2e%2e/files/h/base.apk HTTP/1.1"), 400, true),
        ("encoded slash", line("GET /files/h%2Fbase.apk HTTP/1.1"), 400, true),
        ("encoded backslash", line("GET /files/h%5cbase.apk HTTP/1.1"), 400, true),
        ("overlong UTF-8 slash", line("GET /files/h%c0%afbase.apk HTTP/1.1"), 400, true),
        ("CL and TE", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, true),
        ("differing Content-Length", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400, true),
        ("signed Content-Length", g("Content-Length: +3\r\n"), 400, true),
        ("hex Content-Length", g("Content-Length: 0x3\r\n"), 400, true),
        ("Content-Length list that differs", g("Content-Length: 1, 2\r\n"), 400, true),
        ("TE on HTTP/1.0", b("GET /apk/h/a.apk HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, true),
        ("chunked not final", g("Transfer-Encoding: chunked, gzip\r\n"), 400, true),
        ("xchunked", g("Transfer-Encoding: xchunked\r\n"), 501, true),
        ("nbsp chunked", b"GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \xa0chunked\r\n\r\n".to_vec(), 501, true),
        ("malformed chunk size", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400, true),
        ("chunk without CRLF", b("GET /apk/h/a.apk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX"), 400, true),
        ("chunked body over the bound", big_chunk, 413, true),
        ("Content-Length over the bound", g("Content-Length: 70000\r\n"), 413, true),
        ("request line over the buffer", long_target.into_bytes(), 414, true),
        ("head over the buffer", long_header.into_bytes(), 431, true),
        ("101 header fields", many_headers.into_bytes(), 431, true),
    ]
}

fn setup() -> (S3, Tailgate, Vec<u8>) {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "h", bytes(5000, 71), vec![("a", bytes(100, 72))]);
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    (s3, tg, pkg.full("a"))
}

#[test]
fn every_hostile_request_gets_its_status_and_the_server_goes_on() {
    let (_s3, tg, full) = setup();
    let table = cases();
    assert!(table.len() >= 60, "{} cases", table.len());
    for (name, raw, status, closes) in table {
        let mut c = tg.client();
        // A peer may still be writing when the server answers and closes.
        let _ = c.stream.write_all(&raw);
        let head_only = raw.starts_with(b"HEAD");
        let r = c
            .response(head_only)
            .unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(r.status, status, "{name}");
        if name.starts_with("TRACE") {
            assert!(
                !String::from_utf8_lossy(&r.body).contains("s3cr3t"),
                "TRACE echoed"
            );
        }
        if status == 200 && !head_only {
            assert!(r.body == full, "{name}: body differs");
        }
        if closes {
            assert!(c.closed(Duration::from_secs(5)), "{name}: must close");
            c = tg.client();
        }
        c.send(OK.as_bytes());
        let after = c
            .response(false)
            .unwrap_or_else(|| panic!("{name}: no response to the next request"));
        assert_eq!(after.status, 206, "{name}: the next request");
        assert_eq!(after.body, full[..1], "{name}: the next request's body");
    }
}

/// tailgate under bash's `ulimit {limit}`, its stderr in `log`; returned once it listens.
fn start_under_ulimit(
    limit: &str,
    conf_path: &std::path::Path,
    log: &std::path::Path,
) -> (Proc, std::net::SocketAddr) {
    let child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit {limit} && exec {} serve -c {}",
            env!("CARGO_BIN_EXE_tailgate"),
            conf_path.display()
        ))
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = text.lines().find_map(|l| l.split("listening on ").nth(1)) {
            break a.trim().parse::<std::net::SocketAddr>().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tailgate did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for_port(addr, "tailgate");
    (proc, addr)
}

#[test]
fn worker_connections_and_the_fd_limit_refuse_cleanly() {
    use std::io::Read;
    let s3 = S3::start();
    let pkg = upload_package(&s3, "h", bytes(5000, 71), vec![("a", bytes(100, 72))]);
    // 1. worker_connections 3 on one worker: a fourth connection is closed at once.
    let tg = Tailgate::start(
        &conf(&s3.endpoint(), SK, "worker_connections 3;", "")
            .replace("worker_threads 2;", "worker_threads 1;"),
    );
    let held: Vec<Client> = (0..3).map(|_| tg.client()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = tg.client();
    extra
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(extra.stream.read(&mut b), Ok(0) | Err(_)),
        "over worker_connections must be closed"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tg.get("/apk/h/a.apk", &[]).body, pkg.full("a"));

    // 2. An fd limit far below the connections offered: no crash, and service resumes.
    let dir = TempDir::new("fdlimit");
    let conf_path = dir.path().join("t.conf");
    std::fs::write(
        &conf_path,
        conf(&s3.endpoint(), SK, "", "").replace("worker_threads 2;", "worker_threads 1;"),
    )
    .unwrap();
    let log = dir.path().join("error.log");
    let (mut proc, addr) = start_under_ulimit("-n 40", &conf_path, &log);
    // Connected before the flood, so that its request finds no descriptor for S3.
    let mut early = Client::connect(addr);
    let flood: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        proc.0.try_wait().unwrap().is_none(),
        "tailgate died at the fd limit"
    );
    early.send(OK.as_bytes());
    let r = early.response(false).unwrap();
    assert_eq!(r.status, 502, "no descriptor left to reach S3");
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Client::connect(addr);
    c.send(OK.as_bytes());
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 206);
    // Running out of descriptors is this host's shortage, not the address's failure.
    let mut m = Client::connect(addr);
    m.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let metrics = String::from_utf8(m.response(false).unwrap().body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tailgate_upstream_connect_failures_total 0"),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let accept_lines = text.lines().filter(|l| l.contains("accept:")).count();
    assert!(accept_lines >= 1, "the fd limit is logged");
    // Retried every 50 ms for about a second, but logged at most once a second.
    assert!(accept_lines <= 2, "{accept_lines} accept lines:\n{text}");
    assert!(
        text.contains("open file limit 40 is below"),
        "the limit is checked against worker_connections at start:\n{text}"
    );
    let shortage: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("on this host"))
        .collect();
    assert!(
        (1..=3).contains(&shortage.len()),
        "connects without a descriptor logged once a second, not once each:\n{text}"
    );
    assert!(!text.contains("tried after the other addresses"), "{text}");
}

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_one() {
    let max_open = |limits: &str| -> (String, String) {
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut f = line.split_whitespace().skip(3);
        (f.next().unwrap().to_string(), f.next().unwrap().to_string())
    };
    let (_, hard) = max_open(&std::fs::read_to_string("/proc/self/limits").unwrap());
    if hard.parse::<u64>().is_ok_and(|h| h <= 64) {
        eprintln!("skipped: the hard open file limit here is {hard}");
        return;
    }
    let s3 = S3::start();
    let dir = TempDir::new("fdraise");
    let conf_path = dir.path().join("t.conf");
    std::fs::write(&conf_path, conf(&s3.endpoint(), SK, "", "")).unwrap();
    let log = dir.path().join("error.log");
    let (proc, _) = start_under_ulimit("-Sn 64", &conf_path, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proc.0.id())).unwrap();
    assert_eq!(max_open(&limits), (hard.clone(), hard.clone()), "{limits}");
    assert!(
        text.contains(&format!("open file limit raised from 64 to {hard}")),
        "{text}"
    );
}
