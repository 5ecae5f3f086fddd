//! Operations (SPEC §6): access log, stub_status, Prometheus metrics, reload and graceful
//! stop with a download in flight, the OpenResty front config in front of tailgate, and
//! memory given back after a burst.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

fn signal(tg: &Tailgate, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &tg.proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A download read at a steady, slow pace on its own thread.
fn download_in_flight(
    addr: std::net::SocketAddr,
    path: &'static str,
    len: usize,
    per_read_ms: u64,
) -> std::thread::JoinHandle<SlowResult> {
    std::thread::spawn(move || {
        SlowClient {
            rcvbuf: 64 * 1024,
            read_size: 64 * 1024,
            per_read: Duration::from_millis(per_read_ms),
            pauses: vec![],
        }
        .get(addr, path, len)
    })
}

/// A draining process's download in flight arrives whole, then the process exits.
fn finishes_then_exits(slow: std::thread::JoinHandle<SlowResult>, full: &[u8], tg: &mut Tailgate) {
    let res = slow.join().unwrap();
    assert!(
        !res.cut_short && res.body == full,
        "drained download differs ({} bytes)",
        res.body.len()
    );
    wait_for("exit after the drain", Duration::from_secs(5), || {
        tg.proc.0.try_wait().unwrap().is_some()
    });
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_log_stub_status_and_metrics() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "o", bytes(2 * MIB, 1), vec![("a", bytes(1000, 2))]);
    let dir = TempDir::new("ops");
    let access = dir.path().join("access.log");
    let tg = Tailgate::start(
        &conf(
            &s3.endpoint(),
            SK,
            &format!("access_log {};", access.display()),
            "",
        )
        .replace(
            "location /files/",
            "location = /status { stub_status; }\n location /files/",
        ),
    );
    let full = pkg.full("a");
    assert!(
        tg.get(
            "/apk/o/a.apk",
            &[("User-Agent", "test-agent/1.0"), ("Referer", "http://ref/")]
        )
        .body
            == full
    );
    assert_eq!(
        tg.get("/apk/o/a.apk", &[("Range", "bytes=0-99")]).status,
        206
    );
    assert_eq!(tg.get("/apk/o/none.apk", &[]).status, 404);

    // 1. Access log: nginx combined plus upstream time, upstream bytes and resumes, within 1 s.
    let mut lines = Vec::new();
    wait_for("3 access-log lines", Duration::from_secs(2), || {
        lines = std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= 3
    });
    // Two workers write them: find each by its status rather than its position.
    let by_status = |code: &str| {
        lines
            .iter()
            .map(|l| regex_lite(l))
            .find(|f| f[2] == code)
            .unwrap()
    };
    let re = by_status("200");
    assert_eq!(re[0], "127.0.0.1", "{re:?}");
    assert_eq!(re[1], "GET /apk/o/a.apk HTTP/1.1");
    assert_eq!(re[2], "200");
    assert_eq!(re[3], full.len().to_string());
    assert_eq!(re[4], "http://ref/");
    assert_eq!(re[5], "test-agent/1.0");
    assert!(re[6].parse::<f64>().is_ok(), "upstream time {:?}", re[6]);
    assert_eq!(re[7], full.len().to_string());
    assert_eq!(re[8], "0");
    assert_eq!(by_status("206")[3], "100");
    assert_eq!(by_status("404")[1], "GET /apk/o/none.apk HTTP/1.1");
    assert_eq!(by_status("404")[6], "-", "no upstream body for a 404");

    // 2. stub_status, byte for byte nginx's format.
    let mut c = tg.client();
    c.send(&request("GET", "/status", &[]));
    let r = c.response(false).unwrap();
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), 5, "{text:?}");
    let active: u64 = lines[0]
        .strip_prefix("Active connections: ")
        .unwrap()
        .strip_suffix(' ')
        .unwrap()
        .parse()
        .unwrap();
    assert!(active >= 1);
    assert_eq!(lines[1], "server accepts handled requests");
    let nums: Vec<u64> = lines[2]
        .trim()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3);
    assert!(
        nums[0] >= 4 && nums[1] == nums[0] && nums[2] >= 4,
        "{nums:?}"
    );
    assert!(lines[2].starts_with(' ') && lines[2].ends_with(' '));
    let rww: Vec<&str> = lines[3].split(' ').collect();
    assert_eq!(
        (rww[0], rww[2], rww[4], rww[6]),
        ("Reading:", "Writing:", "Waiting:", ""),
        "{:?}",
        lines[3]
    );
    assert!(
        rww[3].parse::<u64>().unwrap() >= 1,
        "this request is being written"
    );
    assert_eq!(lines[4], "");

    // 3. metrics, parsed by the Prometheus project's own parser.
    c.send(&request("GET", "/metrics", &[]));
    let r = c.response(false).unwrap();
    let metrics = dir.path().join("metrics.txt");
    std::fs::write(&metrics, &r.body).unwrap();
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = s.value
print(json.dumps(out))
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prometheus parser: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let get = |k: &str| {
        parsed[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {parsed}"))
    };
    assert_eq!(get("tailgate_requests_total{\"status\": \"200\"}"), 2.0);
    assert_eq!(get("tailgate_requests_total{\"status\": \"206\"}"), 1.0);
    assert_eq!(get("tailgate_requests_total{\"status\": \"404\"}"), 1.0);
    assert!(get("tailgate_sent_bytes_total{}") >= (full.len() + 100) as f64);
    assert!(
        get("tailgate_upstream_requests_total{\"result\": \"ok\", \"segment\": \"head\"}") >= 2.0
    );
    assert!(
        get("tailgate_upstream_requests_total{\"result\": \"ok\", \"segment\": \"tail\"}") >= 1.0
    );
    assert!(
        get("tailgate_upstream_requests_total{\"result\": \"ok\", \"segment\": \"manifest\"}")
            >= 1.0
    );
    assert_eq!(get("tailgate_upstream_resumes_total{}"), 0.0);
    assert_eq!(get("tailgate_truncations_total{}"), 0.0);
    assert_eq!(get("tailgate_upstream_connect_failures_total{}"), 0.0);
    // One request after another: each of the two workers opened at most one connection to S3
    // and every later S3 request found it in the pool.
    let opened = get("tailgate_upstream_connections_opened_total{}");
    assert!((1.0..=2.0).contains(&opened), "{opened} connections opened");
    assert_eq!(
        get("tailgate_relay_buffer_bytes{}"),
        0.0,
        "no response under way"
    );
    assert!(get("tailgate_upstream_pool_connections{\"state\": \"idle\"}") >= 1.0);
    assert_eq!(
        get("tailgate_upstream_pool_connections{\"state\": \"active\"}"),
        0.0
    );
    assert!(get("tailgate_connections{\"state\": \"writing\"}") >= 1.0);
    assert!(get("tailgate_request_duration_seconds{\"quantile\": \"0.99\"}") > 0.0);
    assert!(get("tailgate_first_byte_seconds{\"quantile\": \"0.5\"}") > 0.0);
    assert!(get("tailgate_request_duration_seconds_count{}") >= 4.0);

    // 4. No credential or signature in any log.
    let logs = format!("{}{}", tg.log(), std::fs::read_to_string(&access).unwrap());
    assert!(
        !logs.contains(SK) && !logs.contains("Signature=") && !logs.contains(AK),
        "{logs}"
    );
}

/// Splits a combined+upstream line: addr, request, status, bytes, referer, agent,
/// upstream time, upstream bytes, resumes.
fn regex_lite(line: &str) -> Vec<String> {
    let (addr, rest) = line.split_once(" - - [").unwrap();
    let (_time, rest) = rest.split_once("] \"").unwrap();
    let (request, rest) = rest.split_once("\" ").unwrap();
    let mut it = rest.splitn(3, ' ');
    let status = it.next().unwrap();
    let bytes = it.next().unwrap();
    let rest = it.next().unwrap();
    let quoted: Vec<&str> = rest.split('"').collect();
    let tail: Vec<&str> = quoted[4].split_whitespace().collect();
    [
        addr, request, status, bytes, quoted[1], quoted[3], tail[0], tail[1], tail[2],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn reload_applies_to_new_requests_while_a_download_finishes_on_the_old_conf() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "r", bytes(48 * MIB, 3), vec![("a", bytes(1000, 4))]);
    let dir = TempDir::new("reload");
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let conf_path = tg.dir.path().join("tailgate.conf");
    // 1. A slow download in flight.
    let addr = tg.addr;
    let slow = download_in_flight(addr, "/apk/r/a.apk", 48 * MIB + 1000, 2);
    std::thread::sleep(Duration::from_millis(300));
    // 2. An invalid conf is refused and the running one kept.
    std::fs::write(&conf_path, "http { listne 1; }").unwrap();
    signal(&tg, "-HUP");
    wait_for("the reload error", Duration::from_secs(3), || {
        tg.log().contains("keeping the running configuration")
    });
    assert!(
        tg.log().contains("unknown directive \"listne\""),
        "{}",
        tg.log()
    );
    assert_eq!(
        tg.get("/apk/r/a.apk", &[("Range", "bytes=0-0")]).status,
        206
    );
    // 3. A valid conf with a new location and s3 block applies to new requests.
    let access = dir.path().join("access.log");
    let new_conf = conf(&s3.endpoint(), SK, &format!("access_log {};", access.display()), "").replace(
        "location /files/ { object apks; }",
        &format!(
            "s3 second {{ endpoint {}; bucket {BUCKET}; access_key_id {AK}; secret_access_key {SK}; }}\n location /v2/ {{ composite second; }}",
            s3.endpoint()
        ),
    );
    std::fs::write(&conf_path, new_conf).unwrap();
    signal(&tg, "-HUP");
    wait_for("generation 1", Duration::from_secs(3), || {
        tg.log().contains("generation 1 in use")
    });
    let r = tg.get("/v2/r/a.apk", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206, "{}", tg.log());
    assert_eq!(r.body, pkg.full("a")[..10]);
    assert_eq!(
        tg.get("/files/r/base.apk", &[]).status,
        404,
        "the removed location is gone"
    );
    wait_for(
        "an access-log line from the new conf",
        Duration::from_secs(3),
        || {
            std::fs::read_to_string(&access)
                .unwrap_or_default()
                .contains("/v2/r/a.apk")
        },
    );
    // 4. The download that started before both reloads is whole.
    let res = slow.join().unwrap();
    assert!(
        !res.cut_short && res.body == pkg.full("a"),
        "in-flight download differs ({} bytes)",
        res.body.len()
    );
    assert!(tg.proc.0.id() > 0);
}

#[test]
fn sigquit_drains_and_sigterm_exits_fast() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "q", bytes(32 * MIB, 5), vec![("a", bytes(1000, 6))]);
    let dir = TempDir::new("quit");
    let pid_file = dir.path().join("tailgate.pid");
    let mut tg = Tailgate::start(&format!(
        "pid {};\n{}",
        pid_file.display(),
        conf(&s3.endpoint(), SK, "", "")
    ));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        tg.proc.0.id().to_string()
    );
    let addr = tg.addr;
    let slow = download_in_flight(addr, "/apk/q/a.apk", 32 * MIB + 1000, 3);
    std::thread::sleep(Duration::from_millis(300));
    signal(&tg, "-QUIT");
    // New connections are no longer accepted...
    wait_for("the listener to close", Duration::from_secs(3), || {
        let Ok(mut c) = std::net::TcpStream::connect(addr) else {
            return true;
        };
        let _ = std::io::Write::write_all(&mut c, OK_REQUEST.as_bytes());
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(std::io::Read::read(&mut c, &mut b), Ok(0) | Err(_))
    });
    // ...while the download in flight completes, then the process exits.
    finishes_then_exits(slow, &pkg.full("a"), &mut tg);
    assert!(!pid_file.exists(), "pid file removed");

    let mut tg2 = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let started = Instant::now();
    signal(&tg2, "-TERM");
    wait_for("exit on SIGTERM", Duration::from_secs(2), || {
        tg2.proc.0.try_wait().unwrap().is_some()
    });
    assert!(started.elapsed() < Duration::from_secs(2));
}

const OK_REQUEST: &str = "GET /apk/q/a.apk HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\n\r\n";

/// Upgrading in place (README "Upgrading without a gap"): a second process binds the same
/// address beside the first (SO_REUSEPORT); after SIGQUIT to the first, its download in
/// flight finishes while every new connection is served by the second, and the pid file
/// is left to the second.
#[test]
fn a_new_process_takes_over_the_port_while_the_old_one_drains() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "q", bytes(32 * MIB, 7), vec![("a", bytes(1000, 8))]);
    let port = free_port();
    let dir = TempDir::new("upgrade");
    let pid_file = dir.path().join("tailgate.pid");
    let conf = format!(
        "pid {};\n{}",
        pid_file.display(),
        conf(&s3.endpoint(), SK, "", "")
            .replace("listen 127.0.0.1:0;", &format!("listen 127.0.0.1:{port};"))
    );
    let mut old = Tailgate::start(&conf);
    let slow = download_in_flight(old.addr, "/apk/q/a.apk", 32 * MIB + 1000, 3);
    std::thread::sleep(Duration::from_millis(300));
    let new = Tailgate::start(&conf);
    assert_eq!(new.addr, old.addr);
    let listening = |pid: u32| {
        let out = Command::new("ss").args(["-Hltnp"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(&format!(":{port} ")) && l.contains(&format!("pid={pid},")))
    };
    assert!(listening(old.proc.0.id()) && listening(new.proc.0.id()));
    signal(&old, "-QUIT");
    wait_for("the old listeners to close", Duration::from_secs(3), || {
        !listening(old.proc.0.id())
    });
    // Every new connection now reaches the new process.
    for _ in 0..200 {
        let mut c = Client::connect(new.addr);
        c.send(OK_REQUEST.as_bytes());
        let r = c.response(false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (206, &pkg.full("a")[..1]));
    }
    finishes_then_exits(slow, &pkg.full("a"), &mut old);
    assert_eq!(new.get("/apk/q/a.apk", &[]).body, pkg.full("a"));
    // The old process left the pid file the new one wrote.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.proc.0.id().to_string()
    );
}

#[test]
fn the_openresty_front_config_in_front_of_tailgate() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "front",
        bytes(5 * MIB + 123, 7),
        vec![("a", bytes(300_000, 8)), ("b", bytes(10, 9))],
    );
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let front_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/openresty.conf"))
        .unwrap()
        .replace("server 127.0.0.1:8080;", &format!("server {};", tg.addr))
        .replace("keepalive 32;", "keepalive 4;")
        .replace("listen 127.0.0.1:80;", &format!("listen {front_addr};"))
        .replace("worker_processes auto;", "worker_processes 1;");
    let front = Nginx::start_full(&text, front_addr);
    // Whole downloads (assembled by nginx from 1 MiB slices) and ranges, byte-identical.
    for round in 0..3 {
        for v in ["a", "b"] {
            let mut c = Client::connect(front.addr);
            c.send(&request("GET", &format!("/apk/front/{v}.apk"), &[]));
            let r = c.response(false).unwrap();
            assert_eq!(r.status, 200, "{v} round {round}: {}", front.error_log());
            assert!(r.body == pkg.full(v), "{v} round {round}: body differs");
            let spec = format!("bytes={}-{}", 5 * MIB - 7, 5 * MIB + 200);
            c.send(&request(
                "GET",
                &format!("/apk/front/{v}.apk"),
                &[("Range", &spec)],
            ));
            let r = c.response(false).unwrap();
            assert_eq!(r.status, 206);
            let end = (5 * MIB + 200).min(pkg.full(v).len() - 1);
            assert!(
                r.body == pkg.full(v)[5 * MIB - 7..=end],
                "{v}: range differs"
            );
        }
    }
    // The pool between nginx and tailgate stays within its size.
    let nginx_pids = Command::new("pgrep")
        .args(["-f", "nginx: worker process"])
        .output()
        .unwrap();
    let mut conns = 0;
    for pid in String::from_utf8_lossy(&nginx_pids.stdout)
        .lines()
        .filter_map(|p| p.trim().parse::<u32>().ok())
    {
        conns += established_to(pid, tg.addr);
    }
    assert!(
        (1..=4).contains(&conns),
        "{conns} connections from nginx to tailgate"
    );
}

#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let s3 = S3::start();
    let dir = TempDir::new("rotate");
    let access = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let tg = Tailgate::start(&conf(
        &s3.endpoint(),
        SK,
        &format!("access_log {};", access.display()),
        "",
    ));
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(tg.get("/apk/none/a.apk", &[]).status, 404);
    wait_for("the first line", Duration::from_secs(3), || {
        lines(&access) == 1
    });
    // logrotate renames the file; until told, tailgate keeps writing to the renamed one.
    std::fs::rename(&access, &rotated).unwrap();
    assert_eq!(tg.get("/apk/none/b.apk", &[]).status, 404);
    wait_for("a line in the renamed file", Duration::from_secs(3), || {
        lines(&rotated) == 2
    });
    signal(&tg, "-USR1");
    wait_for("the reopen", Duration::from_secs(3), || {
        tg.log().contains("log files reopened")
    });
    assert_eq!(tg.get("/apk/none/c.apk", &[]).status, 404);
    wait_for("a line in the new file", Duration::from_secs(3), || {
        lines(&access) == 1
    });
    assert!(std::fs::read_to_string(&access)
        .unwrap()
        .contains("/apk/none/c.apk"));
    assert_eq!(lines(&rotated), 2, "the rotated file is left alone");
}

/// nginx serving a package's objects from files as a fast S3 stand-in (it ignores the
/// signature), with a manifest carrying nginx's own ETags; s3s-fs hands a response's bytes
/// over too slowly for a relay buffer to fill.
fn file_origin(name: &str, head: &[u8]) -> (Nginx, TempDir) {
    let root = TempDir::new("origin");
    let dir = root.path().join(BUCKET).join(name);
    std::fs::create_dir_all(dir.join("tails")).unwrap();
    let etag = |path: &std::path::Path, bytes: &[u8]| {
        std::fs::write(path, bytes).unwrap();
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        format!("\"{secs:x}-{:x}\"", bytes.len())
    };
    let head_etag = etag(&dir.join("base.apk"), head);
    let tail_etag = etag(&dir.join("tails/c"), &bytes(4096, 9));
    let manifest = manifest_json(name, (head.len(), &head_etag), &[("c", 4096, &tail_etag)]);
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    let origin = Nginx::start(
        "",
        &format!("  listen {{listen}};\n  root {};", root.path().display()),
    );
    (origin, root)
}

/// 96 clients at once, each reading three 4 MiB ranges at full speed: 96 responses under
/// way, each moving through its own 1 MiB relay buffer. Returns the highest RSS seen, KiB.
fn burst(tg: &Tailgate, head: usize) -> u64 {
    let len = 4 * MIB;
    let start = std::sync::Arc::new(std::sync::Barrier::new(96));
    let clients: Vec<_> = (0..96)
        .map(|i| {
            let (addr, start) = (tg.addr, std::sync::Arc::clone(&start));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                for k in 0..3 {
                    let from = (i * 3 + k) * 37 * 1024 % (head - len);
                    let range = format!("bytes={from}-{}", from + len - 1);
                    c.send(&request("GET", "/apk/burst/c.apk", &[("Range", &range)]));
                    let r = c.response(false).unwrap();
                    assert_eq!((r.status, r.body.len()), (206, len));
                }
            })
        })
        .collect();
    let mut peak = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss_kib(tg.proc.0.id()));
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in clients {
        c.join().unwrap();
    }
    peak
}

#[test]
fn memory_a_burst_held_is_given_back_under_a_trickle_of_requests() {
    let head = 8 * MIB;
    let (origin, _root) = file_origin("burst", &bytes(head, 7));
    let endpoint = format!("http://{}", origin.addr);
    // One worker, whose pool keeps 16 of the buffers for the next burst.
    let tg = Tailgate::start(
        &conf(&endpoint, SK, "relay_buffer_size 1m;", "")
            .replace("worker_threads 2;", "worker_threads 1;"),
    );
    // The first burst's buffers are mapped on their own and unmapped when freed, which
    // raises glibc's mmap threshold; the second's come from its heap, which keeps them.
    burst(&tg, head);
    let peak = burst(&tg, head);
    // Most runs see 100 MiB; fewer of the buffers' pages are touched when the responses
    // drain as fast as they arrive.
    assert!(peak > 48 * 1024, "the burst held {peak} KiB");
    // A request every 100 ms: the process is never quiet for a second, yet the burst is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (addr, stop) = (tg.addr, std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.send(&request(
                    "GET",
                    "/apk/burst/c.apk",
                    &[("Range", "bytes=0-4095")],
                ));
                assert_eq!(c.response(false).unwrap().status, 206);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut rss = peak;
    while rss >= 40 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        rss = rss_kib(tg.proc.0.id());
    }
    let trims = tg.metric("tailgate_memory_trims_total");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    assert!(
        rss < 40 * 1024 && trims >= 1,
        "{rss} KiB 6 s after a burst that held {peak} KiB, {trims} trims"
    );
}
