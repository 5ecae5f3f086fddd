//! The core serving path end to end: the real binary against a real s3s-fs.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const HEAD_LEN: usize = 3 * 1024 * 1024 + 17;

fn setup() -> (S3, Tailgate, Package) {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "apps/foo/1.2.3",
        bytes(HEAD_LEN, 1),
        vec![
            ("huawei", bytes(5000, 2)),
            ("xiaomi", bytes(70_000, 3)),
            ("empty", Vec::new()),
        ],
    );
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    (s3, tg, pkg)
}

fn ranges_of(spec: &str, len: usize) -> Vec<(usize, usize)> {
    // Test-side oracle for single ranges of the shapes used below (inclusive bounds).
    let set = spec.strip_prefix("bytes=").unwrap();
    set.split(',')
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap();
            if a.is_empty() {
                let n: usize = b.parse().unwrap();
                (len.saturating_sub(n), len - 1)
            } else {
                let a: usize = a.parse().unwrap();
                let b = if b.is_empty() {
                    len - 1
                } else {
                    b.parse::<usize>().unwrap().min(len - 1)
                };
                (a, b)
            }
        })
        .collect()
}

#[test]
fn whole_bodies_and_single_ranges_are_byte_exact() {
    let (_s3, tg, pkg) = setup();
    for variant in ["huawei", "xiaomi", "empty"] {
        let full = pkg.full(variant);
        let path = format!("/apk/apps/foo/1.2.3/{variant}.apk");
        let r = tg.get(&path, &[]);
        assert_eq!(r.status, 200, "{variant}");
        assert_eq!(r.header("content-length").unwrap(), full.len().to_string());
        assert!(r.body == full, "{variant}: whole body differs");
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.android.package-archive")
        );
        assert_eq!(
            r.header("last-modified"),
            Some("Wed, 25 Nov 2026 10:00:00 GMT")
        );
        assert_eq!(
            r.header("content-disposition"),
            Some(&*format!("attachment; filename=\"{variant}.apk\""))
        );
        assert!(r.header("etag").unwrap().starts_with("\"tg-"));

        let len = full.len();
        let h = HEAD_LEN;
        let specs = [
            "bytes=0-0".to_string(),
            "bytes=0-99".to_string(),
            format!("bytes={}-{}", h - 10, h + 9), // across the boundary
            format!("bytes={}-{}", h - 1, h),      // the two bytes at the seam
            format!("bytes={}-", h),               // exactly the tail
            format!("bytes={}-", h - 1),
            "bytes=-1".to_string(),
            "bytes=-4096".to_string(),
            format!("bytes=-{}", len + 100), // suffix longer than body
            format!("bytes=100-{}", len + 1_000_000), // end clamped
            format!("bytes=1048576-{}", 2 * 1048576 - 1),
            format!("bytes={}-{}", len - 1, len - 1),
        ];
        for spec in specs {
            let r = tg.get(&path, &[("Range", &spec)]);
            let (a, b) = ranges_of(&spec, len)[0];
            if a >= len {
                assert_eq!(r.status, 416, "{variant} {spec}");
                continue;
            }
            assert_eq!(r.status, 206, "{variant} {spec}");
            assert_eq!(
                r.header("content-range").unwrap(),
                format!("bytes {a}-{b}/{len}"),
                "{variant} {spec}"
            );
            assert_eq!(
                r.header("accept-ranges"),
                Some("bytes"),
                "Accept-Ranges on 206 too"
            );
            assert!(r.body == full[a..=b], "{variant} {spec}: body differs");
        }
    }
}

#[test]
fn unsatisfiable_invalid_and_multiple_ranges() {
    let (_s3, tg, pkg) = setup();
    let full = pkg.full("huawei");
    let len = full.len();
    let path = "/apk/apps/foo/1.2.3/huawei.apk";
    for spec in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 10),
        "bytes=-0".into(),
    ] {
        let r = tg.get(path, &[("Range", &spec)]);
        assert_eq!(r.status, 416, "{spec}");
        assert_eq!(r.header("content-range").unwrap(), format!("bytes */{len}"));
    }
    for spec in [
        "bytes=5-4",
        "bytes=abc",
        "items=0-1",
        "bytes=0-5,",
        "bytes=0-10,5-20",
    ] {
        let r = tg.get(path, &[("Range", spec)]);
        assert_eq!(r.status, 200, "{spec} is ignored");
        assert!(r.body == full);
    }
    // Two parts, one in the head and one across the seam, as multipart/byteranges.
    let spec = format!("bytes=0-9,{}-{}", HEAD_LEN - 5, HEAD_LEN + 4);
    let r = tg.get(path, &[("Range", &spec)]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
    let mut want = Vec::new();
    for (a, b) in ranges_of(&spec, len) {
        want.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/vnd.android.package-archive\r\nContent-Range: bytes {a}-{b}/{len}\r\n\r\n").as_bytes(),
        );
        want.extend_from_slice(&full[a..=b]);
    }
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(r.body == want, "multipart body differs");
}

#[test]
fn head_requests_ignore_range_and_send_no_body() {
    let (_s3, tg, pkg) = setup();
    let mut c = tg.client();
    c.send(&request(
        "HEAD",
        "/apk/apps/foo/1.2.3/xiaomi.apk",
        &[("Range", "bytes=0-1")],
    ));
    let r = c.response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length").unwrap(),
        pkg.full("xiaomi").len().to_string()
    );
    // The connection carries on: nothing but the head was sent.
    c.send(&request(
        "GET",
        "/apk/apps/foo/1.2.3/huawei.apk",
        &[("Range", "bytes=0-3")],
    ));
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, pkg.full("huawei")[..4]);
}

#[test]
fn conditionals_follow_rfc_9110_order() {
    let (_s3, tg, pkg) = setup();
    let path = "/apk/apps/foo/1.2.3/huawei.apk";
    let etag = tg
        .get(path, &[("Range", "bytes=0-0")])
        .header("etag")
        .unwrap()
        .to_string();
    let lm = "Wed, 25 Nov 2026 10:00:00 GMT";
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![("If-None-Match", &etag)], 304),
        (vec![("If-None-Match", "\"other\"")], 200),
        (vec![("If-Modified-Since", lm)], 304),
        (
            vec![("If-Modified-Since", "Tue, 24 Nov 2026 10:00:00 GMT")],
            200,
        ),
        (vec![("If-Match", "\"other\"")], 412),
        (vec![("If-Match", &etag)], 200),
        (
            vec![("If-Unmodified-Since", "Tue, 24 Nov 2026 10:00:00 GMT")],
            412,
        ),
        (
            vec![("If-Match", "\"other\""), ("If-None-Match", &etag)],
            412,
        ),
        (vec![("Range", "bytes=0-9"), ("If-Range", &etag)], 206),
        (vec![("Range", "bytes=0-9"), ("If-Range", "\"other\"")], 200),
        (vec![("Range", "bytes=0-9"), ("If-Range", lm)], 206),
        (
            vec![
                ("Range", "bytes=0-9"),
                ("If-Range", "Tue, 24 Nov 2026 10:00:00 GMT"),
            ],
            200,
        ),
    ];
    let full = pkg.full("huawei");
    let mut c = tg.client();
    for (headers, want) in cases {
        c.send(&request("GET", path, &headers));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, want, "{headers:?}");
        match want {
            200 => assert!(r.body == full),
            206 => assert_eq!(r.body, full[..10]),
            304 => {
                assert_eq!(r.header("etag"), Some(etag.as_str()));
                assert!(r.body.is_empty());
            }
            _ => {}
        }
    }
}

#[test]
fn not_found_and_method_errors_keep_the_connection() {
    let (_s3, tg, _pkg) = setup();
    let mut c = tg.client();
    for (method, path, want) in [
        ("GET", "/apk/apps/foo/1.2.3/nosuch.apk", 404),
        ("GET", "/apk/apps/nopkg/huawei.apk", 404),
        ("GET", "/nowhere", 404),
        ("GET", "/files/no/such/key", 404),
        ("POST", "/apk/apps/foo/1.2.3/huawei.apk", 405),
        ("DELETE", "/files/x", 405),
    ] {
        c.send(&request(method, path, &[]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, want, "{method} {path}");
        if want == 405 {
            assert_eq!(r.header("allow"), Some("GET, HEAD"));
        }
    }
    c.send(&request(
        "GET",
        "/apk/apps/foo/1.2.3/huawei.apk",
        &[("Range", "bytes=0-0")],
    ));
    assert_eq!(c.response(false).unwrap().status, 206);
}

#[test]
fn malformed_requests_are_answered_and_closed() {
    let (_s3, tg, _pkg) = setup();
    for (raw, want) in [
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("get / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        ("GET /apk/../files/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ] {
        let mut c = tg.client();
        c.send(raw.as_bytes());
        let r = c.response(false).unwrap();
        assert_eq!(r.status, want, "{raw:?}");
        assert!(
            c.closed(std::time::Duration::from_secs(5)),
            "{raw:?} must close"
        );
    }
}

#[test]
fn keep_alive_and_pipelining() {
    let (_s3, tg, pkg) = setup();
    let mut c = tg.client();
    let full = pkg.full("xiaomi");
    for _ in 0..3 {
        c.send(&request("GET", "/apk/apps/foo/1.2.3/xiaomi.apk", &[]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == full);
    }
    // Three requests in one write; the answers come back in order.
    let mut raw = Vec::new();
    raw.extend(request(
        "GET",
        "/apk/apps/foo/1.2.3/huawei.apk",
        &[("Range", "bytes=0-4")],
    ));
    raw.extend(request("HEAD", "/apk/apps/foo/1.2.3/huawei.apk", &[]));
    raw.extend(request(
        "GET",
        "/apk/apps/foo/1.2.3/xiaomi.apk",
        &[("Range", "bytes=-3")],
    ));
    c.send(&raw);
    let a = c.response(false).unwrap();
    let b = c.response(true).unwrap();
    let d = c.response(false).unwrap();
    assert_eq!((a.status, b.status, d.status), (206, 200, 206));
    assert_eq!(a.body, pkg.full("huawei")[..5]);
    assert_eq!(d.body, full[full.len() - 3..]);
    // HTTP/1.0 closes after the response unless it asks for keep-alive.
    let mut c = tg.client();
    c.send(b"GET /apk/apps/foo/1.2.3/huawei.apk HTTP/1.0\r\nRange: bytes=0-0\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 206);
    assert!(c.closed(std::time::Duration::from_secs(5)));
    let mut c = tg.client();
    c.send(b"GET /apk/apps/foo/1.2.3/huawei.apk HTTP/1.0\r\nConnection: keep-alive\r\nRange: bytes=0-0\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /apk/apps/foo/1.2.3/huawei.apk HTTP/1.0\r\nRange: bytes=1-1\r\n\r\n");
    assert_eq!(c.response(false).unwrap().body, pkg.full("huawei")[1..2]);
}

/// Small answers go out with a plain `send` until the client's socket is full, and the rest
/// of an answer then through the ring: a client that lags behind a long pipelined batch
/// gets every answer whole and in order.
#[test]
fn pipelined_small_answers_to_a_lagging_reader_arrive_whole_and_in_order() {
    let (s3, _tg, pkg) = setup();
    // Ranges in a cached tail: answers as fast as tailgate can write them.
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "tail_cache_size 1m;", ""));
    let full = pkg.full("xiaomi");
    let mut c = tg.client();
    // Under keepalive_requests (1000); up to 12,000 bytes each, under send_now's bound.
    let specs: Vec<(usize, usize)> = (0..900)
        .map(|i| {
            let a = HEAD_LEN + (i * 7919) % 50_000;
            (a, a + (i * 37) % 12_000)
        })
        .collect();
    let mut raw = Vec::new();
    for (a, b) in &specs {
        let range = format!("bytes={a}-{b}");
        raw.extend(request(
            "GET",
            "/apk/apps/foo/1.2.3/xiaomi.apk",
            &[("Range", &range)],
        ));
    }
    // Written from a thread: tailgate stops reading requests while it cannot answer them.
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &raw));
    #[allow(clippy::disallowed_methods)] // a test thread, not a worker
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (i, (a, b)) in specs.iter().enumerate() {
        let r = c
            .response(false)
            .unwrap_or_else(|| panic!("answer {i} missing"));
        assert_eq!(r.status, 206, "answer {i}");
        assert!(r.body == full[*a..=*b], "answer {i}: bytes {a}-{b} differ");
    }
    sender.join().unwrap().unwrap();
}

#[test]
fn plain_objects_are_served_as_one_segment() {
    let s3 = S3::start();
    let data = bytes(200_000, 9);
    let etag = s3.put("raw/blob.bin", &data);
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let r = tg.get("/files/raw/blob.bin", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body == data);
    let r = tg.get("/files/raw/blob.bin", &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[1000..2000]);
}

#[test]
fn empty_composite_is_an_empty_200() {
    let s3 = S3::start();
    upload_package(&s3, "nothing", Vec::new(), vec![("none", Vec::new())]);
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let r = tg.get("/apk/nothing/none.apk", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("0"));
    let r = tg.get("/apk/nothing/none.apk", &[("Range", "bytes=0-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
}

#[test]
fn a_wrong_secret_is_refused_by_s3_and_answered_502() {
    let s3 = S3::start();
    upload_package(&s3, "p", bytes(1000, 1), vec![("a", bytes(10, 2))]);
    let tg = Tailgate::start(&conf(&s3.endpoint(), "not-the-secret", "", ""));
    let r = tg.get("/apk/p/a.apk", &[]);
    assert_eq!(r.status, 502);
    assert!(tg.log().contains("status 403"), "{}", tg.log());
}

#[test]
fn an_s3_block_of_a_bucket_alone_takes_endpoint_and_keys_from_the_aws_environment() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "p", bytes(1000, 1), vec![("a", bytes(10, 2))]);
    let conf = format!(
        "error_log stderr info;\nhttp {{\n listen 127.0.0.1:0;\n s3 apks {{ bucket {BUCKET}; }}\n location /apk/ {{ composite apks; }}\n}}\n"
    );
    let endpoint = s3.endpoint();
    let env = |secret| {
        [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", AK),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ]
    };
    // s3s-fs checks every signature: the keys signed with are the environment's.
    let tg = Tailgate::start_with_env(&conf, &env(SK));
    let r = tg.get("/apk/p/a.apk", &[]);
    assert_eq!(r.status, 200, "{}", tg.log());
    assert_eq!(r.body, pkg.full("a"));
    let tg = Tailgate::start_with_env(&conf, &env("not-the-secret"));
    assert_eq!(tg.get("/apk/p/a.apk", &[]).status, 502);
    assert!(tg.log().contains("status 403"), "{}", tg.log());
}

#[test]
fn s3_down_before_the_head_is_a_502() {
    // A port that is bound but not listening: connections are refused, and no server a
    // parallel test starts can take it (a port merely found free could be).
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    holder.bind(&any.into()).unwrap();
    let port = holder.local_addr().unwrap().as_socket().unwrap().port();
    let tg = Tailgate::start(&conf(
        &format!("http://127.0.0.1:{port}"),
        SK,
        "",
        "retries 1; retry_backoff 10ms;",
    ));
    let r = tg.get("/apk/p/a.apk", &[]);
    assert_eq!(r.status, 502);
}

#[test]
fn check_reports_file_and_line() {
    let dir = TempDir::new("check");
    let good = dir.path().join("good.conf");
    std::fs::write(&good, conf("http://127.0.0.1:9", SK, "", "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, conf("http://127.0.0.1:9", SK, "listne 1;", "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6: unknown directive \"listne\"",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn client_timeouts_and_request_limits_act_as_in_nginx() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let s3 = S3::start();
    upload_package(&s3, "t", bytes(1000, 1), vec![("a", bytes(10, 2))]);
    let tg = Tailgate::start(
        &conf(
            &s3.endpoint(),
            SK,
            "keepalive_requests 3; keepalive_timeout 1s;",
            "",
        )
        .replace("client_header_timeout 5s;", "client_header_timeout 1500ms;"),
    );
    // keepalive_requests: the third response says close, and the connection ends.
    let mut c = tg.client();
    for i in 1..=3 {
        c.send(&request("GET", "/apk/t/a.apk", &[("Range", "bytes=0-0")]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("connection"),
            if i == 3 { Some("close") } else { None },
            "request {i}"
        );
    }
    assert!(c.closed(Duration::from_secs(3)));
    // keepalive_timeout: an idle connection is closed after about a second.
    let mut c = tg.client();
    c.send(&request("GET", "/apk/t/a.apk", &[]));
    c.response(false).unwrap();
    let idle = Instant::now();
    assert!(c.closed(Duration::from_secs(5)));
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    // client_header_timeout counts from the first byte: a head trickled a byte every 200 ms
    // is cut after 1.5 s in total, although no single gap is long.
    let mut s = std::net::TcpStream::connect(tg.addr).unwrap();
    let start = Instant::now();
    let mut cut = false;
    for b in
        b"GET /apk/t/a.apk HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        #[allow(clippy::disallowed_methods)] // a slowloris client
        std::thread::sleep(Duration::from_millis(200));
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let ended = matches!(s.read(&mut buf), Ok(0))
            || matches!(s.read(&mut buf), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        if ended {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickled head was never cut");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
}
