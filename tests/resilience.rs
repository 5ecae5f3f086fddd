//! SPEC §1 and §4: a download arrives whole or visibly broken, whatever the client speed and
//! whatever the S3 side does, and no socket is left in CLOSE-WAIT. Real tailgate, real
//! s3s-fs, real nginx as the "S3 gateway", and a fault relay.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::relay::{Event, Fault, Relay};
use common::*;

const MIB: usize = 1024 * 1024;
const HEAD: usize = 64 * MIB;

/// nginx in front of s3s-fs as the origin story's gateway: a tiny send buffer, 2 s send and
/// keep-alive timeouts, and a reset for timed-out connections.
fn gateway(s3: &S3) -> Nginx {
    gateway_with(
        s3,
        "listen {listen} sndbuf=16k;\n  send_timeout 2s;\n  keepalive_timeout 2s;\n  reset_timedout_connection on;",
    )
}

/// nginx proxying to s3s-fs over a keep-alive pool; `server` holds the `listen` line and
/// the timeouts.
fn gateway_with(s3: &S3, server: &str) -> Nginx {
    Nginx::start(
        &format!("upstream s3 {{ server {}; keepalive 16; }}", s3.addr),
        &format!(
            "  {server}\n  location / {{\n   proxy_pass http://s3;\n   proxy_http_version 1.1;\n   \
             proxy_set_header Connection \"\";\n   proxy_set_header Host $http_host;\n   \
             proxy_max_temp_file_size 0;\n  }}"
        ),
    )
}

fn slow(pauses: Vec<(usize, Duration)>) -> SlowClient {
    SlowClient {
        rcvbuf: 16 * 1024,
        read_size: 16 * 1024,
        per_read: Duration::from_micros(200),
        pauses,
    }
}

fn assert_no_close_wait(tg: &Tailgate) {
    let left = close_wait_settles(tg.proc.0.id(), Duration::from_secs(5));
    assert!(left.is_empty(), "CLOSE-WAIT sockets left: {left:?}");
}

#[test]
fn the_origin_story_through_a_resetting_gateway() {
    // 1. Two composites of 64 MiB: one with a small tail, one with a 1.5 MiB tail. The
    //    head is larger than what the kernel buffers between gateway and client can absorb
    //    (tcp_rmem max 32 MiB here), so a paused client does stall the gateway's sends.
    let s3 = S3::start();
    let small = upload_package(
        &s3,
        "story/small",
        bytes(HEAD, 11),
        vec![("ch", bytes(40_000, 12))],
    );
    let large = upload_package(
        &s3,
        "story/large",
        bytes(HEAD, 13),
        vec![("ch", bytes(1536 * 1024, 14))],
    );
    // 2. The gateway resets any connection left unread for 2 s; tailgate keeps idle pooled
    //    connections longer than the gateway does, so the gateway's FIN must be noticed.
    let gw = gateway(&s3);
    let tg = Tailgate::start(&conf(
        &format!("http://{}", gw.addr),
        SK,
        "",
        "keepalive_timeout 20s; read_timeout 5s;",
    ));
    // 3. A slow client with a small receive buffer pauses in the head, and for the large tail
    //    once more inside the tail. The pause is long: while tailgate does not read, the
    //    kernel still trickles its receive window open (collapsing queued buffers) for
    //    several seconds, and every trickle restarts the gateway's send_timeout; only once
    //    the window is really shut do the gateway's 2 s run out. So each first pause lasts
    //    until the gateway has logged a timed-out send (at most 40 s).
    let pause = Duration::from_secs(3);
    let timeouts = || gw.error_log().matches("timed out").count();
    let before = timeouts();
    let cut = move || timeouts() > before;
    let r = slow(vec![(8 * MIB, pause)]).get_until(
        tg.addr,
        "/apk/story/small/ch.apk",
        HEAD + 40_000,
        &cut,
        Duration::from_secs(40),
    );
    assert!(
        !r.cut_short && r.body == small.full("ch"),
        "small-tail body differs ({} bytes)",
        r.body.len()
    );
    let before = timeouts();
    let cut = move || timeouts() > before;
    let r = slow(vec![
        (8 * MIB, pause),
        (HEAD + 512 * 1024, Duration::from_secs(4)),
    ])
    .get_until(
        tg.addr,
        "/apk/story/large/ch.apk",
        HEAD + 1536 * 1024,
        &cut,
        Duration::from_secs(40),
    );
    assert!(
        !r.cut_short && r.body == large.full("ch"),
        "large-tail body differs ({} bytes)",
        r.body.len()
    );
    // 4. The pauses did bite: the gateway cut connections and tailgate resumed.
    let resumes = tg.log().matches("resumed").count();
    assert!(
        resumes >= 2,
        "{resumes} downloads resumed, want both: {}\n--- gateway:\n{}",
        tg.log(),
        gw.error_log()
    );
    // 5. After the gateway's idle timeout, nothing of tailgate's is left in CLOSE-WAIT.
    std::thread::sleep(Duration::from_secs(3));
    assert_no_close_wait(&tg);
}

#[test]
fn idle_pooled_connections_closed_by_the_gateway_do_not_linger() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "idle", bytes(MIB, 21), vec![("a", bytes(1000, 22))]);
    let gw = gateway(&s3);
    let tg = Tailgate::start(&conf(
        &format!("http://{}", gw.addr),
        SK,
        "",
        "keepalive_timeout 60s; retries 0;",
    ));
    assert!(tg.get("/apk/idle/a.apk", &[]).body == pkg.full("a"));
    // The gateway closes its side after 2 s; the sweep must close ours within about 1 s.
    std::thread::sleep(Duration::from_secs(3));
    let left = close_wait_of(tg.proc.0.id());
    assert!(left.is_empty(), "pooled sockets in CLOSE-WAIT: {left:?}");
    // And the next request is not sent on a dead connection (retries 0: no second chance).
    assert!(tg.get("/apk/idle/a.apk", &[]).body == pkg.full("a"));
}

fn relay_setup(extra_s3: &str) -> (S3, Relay, Tailgate, Package) {
    relay_setup_with("", extra_s3)
}

/// The relay modes a body can take: socket to socket (`relay_splice on`), through the
/// relay buffer, and through a large buffer (the 6 MiB head is long enough for one).
const MODES: [&str; 3] = [
    "relay_splice on;",
    "relay_splice off;",
    "relay_large_buffers 1 128k;",
];

/// Spliced body bytes, to show which mode a test ran in.
fn spliced(tg: &Tailgate) -> u64 {
    tg.metric("tailgate_spliced_bytes_total")
}

fn relay_setup_with(extra_http: &str, extra_s3: &str) -> (S3, Relay, Tailgate, Package) {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "f",
        bytes(6 * MIB, 31),
        vec![("ch", bytes(300_000, 32))],
    );
    let relay = Relay::start(s3.addr);
    let tg = Tailgate::start(
        &conf(
            &relay.endpoint(),
            SK,
            extra_http,
            &format!(
                "read_timeout 1s; {} {extra_s3}",
                if extra_s3.contains("retry_backoff") {
                    ""
                } else {
                    "retry_backoff 20ms;"
                }
            ),
        )
        .replace("worker_threads 2;", "worker_threads 1;"),
    );
    (s3, relay, tg, pkg)
}

fn head_ranges(relay: &Relay, what: &str) -> Vec<String> {
    relay
        .requests()
        .into_iter()
        .filter(|r| r.2.contains(what))
        .filter_map(|r| r.3)
        .collect()
}

#[test]
fn resets_closes_and_stalls_are_resumed_at_the_exact_offset() {
    for mode in MODES {
        resumed_at_the_exact_offset(mode);
    }
}

fn resumed_at_the_exact_offset(mode: &str) {
    let (_s3, relay, tg, pkg) = relay_setup_with(mode, "retries 3;");
    let full = pkg.full("ch");
    let cases = [
        ("/f/base.apk", Fault::ResetAfter(MIB as u64)),
        ("/f/base.apk", Fault::CloseAfter(3 * MIB as u64)),
        (
            "/f/base.apk",
            Fault::StallAfter(2 * MIB as u64, Duration::from_secs(3)),
        ),
        ("/f/tails/ch", Fault::ResetAfter(100_000)),
        ("/f/tails/ch", Fault::CloseAfter(1000)),
    ];
    for (path, fault) in cases {
        // A fault can land on a request tailgate sent on a pooled connection that failed
        // before tailgate read a byte of its response (then retried at once, unfaulted, as
        // it should be); such a round shows no resume, and the case is run again.
        let mut resumed = false;
        for _round in 0..3 {
            let before = head_ranges(&relay, path).len();
            let resumes = tg.metric("tailgate_upstream_resumes_total");
            relay.add_rule(path, fault.clone(), 1);
            let r = tg.get("/apk/f/ch.apk", &[]);
            assert_eq!(r.status, 200, "{mode} {fault:?}");
            assert!(
                r.body == full,
                "{mode} {fault:?}: body differs ({} of {} bytes)",
                r.body.len(),
                full.len()
            );
            relay.clear_rules();
            if tg.metric("tailgate_upstream_resumes_total") == resumes {
                continue;
            }
            // The resumed request asks for exactly the bytes the client had not been sent.
            let ranges = head_ranges(&relay, path);
            assert!(ranges.len() >= before + 2, "{mode} {fault:?}: {ranges:?}");
            let resumed_at: u64 = ranges[ranges.len() - 1]
                .strip_prefix("bytes=")
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                resumed_at > 0,
                "{mode} {fault:?}: resumed from 0: {ranges:?}"
            );
            resumed = true;
            break;
        }
        assert!(resumed, "{mode} {fault:?}: no resume in three rounds");
    }
    // The 6 MiB head went socket to socket, less the first bytes read with its head.
    let spliced = spliced(&tg);
    if mode == "relay_splice on;" {
        assert!(spliced > 5 * MIB as u64, "{mode}: {spliced} bytes spliced");
    } else {
        assert_eq!(spliced, 0, "{mode}");
    }
    assert_no_close_wait(&tg);
}

#[test]
fn slow_down_before_the_head_is_retried_then_502_when_spent() {
    let (_s3, relay, tg, pkg) = relay_setup("retries 2;");
    relay.add_rule("/f/manifest.json", Fault::SlowDown, 1);
    relay.add_rule("/f/base.apk", Fault::SlowDown, 2);
    let r = tg.get("/apk/f/ch.apk", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == pkg.full("ch"));
    relay.add_rule("/f/base.apk", Fault::SlowDown, 3);
    let r = tg.get("/apk/f/ch.apk", &[]);
    assert_eq!(r.status, 502, "retries spent before the head: 502");
    assert_no_close_wait(&tg);
}

/// Requests that miss the same manifest together (the first ones, or all those in flight
/// when it expires) share one fetch, and its outcome: the manifest's GET stalls and is
/// closed, 20 requests wait for it meanwhile. With a retry, the stalled GET and its retry
/// serve them all; without, all 20 get its failure and S3 saw one GET, not 20.
#[test]
fn requests_missing_a_manifest_together_share_one_fetch() {
    for (retries, status, gets) in [("retries 1;", 206, 2), ("retries 0;", 502, 1)] {
        let (_s3, relay, tg, pkg) = relay_setup(retries);
        let stall = Fault::StallAfter(0, Duration::from_millis(600));
        relay.add_rule("/f/manifest.json", stall, 1);
        let responses: Vec<Response> = std::thread::scope(|s| {
            let all: Vec<_> = (0..20)
                .map(|_| s.spawn(|| tg.get("/apk/f/ch.apk", &[("Range", "bytes=0-99")])))
                .collect();
            all.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for r in &responses {
            assert_eq!(r.status, status, "{retries}");
            if status == 206 {
                assert!(r.body == pkg.full("ch")[..100]);
            }
        }
        let manifest_gets = relay
            .requests()
            .iter()
            .filter(|(_, _, line, _)| line.contains("/f/manifest.json"))
            .count();
        assert_eq!(manifest_gets, gets, "{retries}");
    }
}

/// Past half its time to live, the first request to see a manifest fetches the next one
/// while the others keep using it. Here that fetch stalls and then fails (twice: a pooled
/// connection that fails before any byte is retried once on a fresh one): the requests
/// meanwhile are answered at once, the refreshing one too once its fetch failed (the
/// entry is still within its time to live), and only after it expires is it fetched again.
#[test]
fn aging_manifests_are_refreshed_while_the_others_keep_using_them() {
    let (_s3, relay, tg, pkg) = relay_setup_with("manifest_cache_ttl 2s;", "retries 0;");
    let range = [("Range", "bytes=0-99")];
    let manifest_gets = || {
        relay
            .requests()
            .iter()
            .filter(|(_, _, line, _)| line.contains("/f/manifest.json"))
            .count()
    };
    let t0 = Instant::now();
    assert_eq!(tg.get("/apk/f/ch.apk", &range).status, 206);
    std::thread::sleep(Duration::from_millis(1100));
    relay.add_rule(
        "/f/manifest.json",
        Fault::StallAfter(0, Duration::from_millis(300)),
        2,
    );
    std::thread::scope(|s| {
        let refresher = s.spawn(|| {
            let at = Instant::now();
            let r = tg.get("/apk/f/ch.apk", &range);
            (r, at.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..5 {
            let at = Instant::now();
            let r = tg.get("/apk/f/ch.apk", &range);
            assert_eq!(r.status, 206);
            assert!(r.body == pkg.full("ch")[..100]);
            assert!(
                at.elapsed() < Duration::from_millis(300),
                "{:?}",
                at.elapsed()
            );
        }
        let (r, took) = refresher.join().unwrap();
        assert_eq!(r.status, 206, "the entry is still good");
        assert!(
            took >= Duration::from_millis(500),
            "{took:?}: it waited for its fetch"
        );
    });
    assert_eq!(manifest_gets(), 3);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the test ran too slowly to tell"
    );
    assert!(
        tg.log().contains("refreshing the manifest of f: upstream"),
        "{}",
        tg.log()
    );
    std::thread::sleep(
        Duration::from_secs(2).saturating_sub(t0.elapsed()) + Duration::from_millis(100),
    );
    assert_eq!(tg.get("/apk/f/ch.apk", &range).status, 206);
    assert_eq!(manifest_gets(), 4, "expired: fetched again");
}

#[test]
fn a_stall_before_the_head_with_retries_spent_is_a_504() {
    let (_s3, relay, tg, _pkg) = relay_setup("retries 0;");
    let _ = tg.get("/apk/f/ch.apk", &[("Range", "bytes=0-0")]);
    relay.add_rule(
        "/f/base.apk",
        Fault::StallAfter(0, Duration::from_secs(3)),
        1,
    );
    let r = tg.get("/apk/f/ch.apk", &[("Range", "bytes=0-0")]);
    assert_eq!(r.status, 504);
}

#[test]
fn retries_spent_after_the_head_truncate_loudly() {
    for mode in MODES {
        truncated_loudly(mode);
    }
}

fn truncated_loudly(mode: &str) {
    let (_s3, relay, tg, pkg) = relay_setup_with(mode, "retries 2;");
    relay.add_rule("/f/base.apk", Fault::CloseAfter(500_000), 3);
    let mut c = tg.client();
    c.send(&request("GET", "/apk/f/ch.apk", &[]));
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 200);
    let full = pkg.full("ch");
    assert_eq!(r.header("content-length").unwrap(), full.len().to_string());
    assert!(r.body.len() < full.len(), "{mode}: the body must be short");
    assert!(r.body == full[..r.body.len()], "{mode}: never a wrong byte");
    assert!(
        c.closed(Duration::from_secs(5)),
        "{mode}: the connection is closed at once"
    );
    assert!(tg.log().contains("truncated"), "{}", tg.log());
    assert_no_close_wait(&tg);
}

#[test]
fn an_object_replaced_mid_download_is_a_loud_truncation() {
    let (s3, relay, tg, pkg) = relay_setup("retries 3; retry_backoff 1500ms;");
    let full = pkg.full("ch");
    relay.add_rule("/f/base.apk", Fault::CloseAfter(MIB as u64), 1);
    let addr = tg.addr;
    let download = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(&request("GET", "/apk/f/ch.apk", &[]));
        let r = c.response(false).unwrap();
        (r, c.closed(Duration::from_secs(10)))
    });
    // Once the faulty connection is gone (tailgate is in its 1.5 s backoff), replace the head.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay
        .events()
        .iter()
        .any(|e| matches!(e, Event::Close { .. }))
    {
        assert!(Instant::now() < deadline, "the fault never fired");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.put("f/base.apk", &bytes(6 * MIB, 99));
    let (r, closed) = download.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body.len() < full.len(),
        "the body must be short, got all {} bytes",
        r.body.len()
    );
    assert!(
        r.body == full[..r.body.len()],
        "never a byte of the new object"
    );
    assert!(closed, "the connection is closed");
    assert_no_close_wait(&tg);
}

#[test]
fn a_failure_on_a_reused_connection_gets_a_free_retry() {
    let (_s3, relay, tg, pkg) = relay_setup("retries 0;");
    let mut c = tg.client();
    c.send(&request("GET", "/apk/f/ch.apk", &[("Range", "bytes=0-9")]));
    assert_eq!(c.response(false).unwrap().status, 206);
    // The pooled connection dies as the next request is sent on it: no response byte.
    relay.add_rule("/f/base.apk", Fault::CloseAfter(0), 1);
    c.send(&request(
        "GET",
        "/apk/f/ch.apk",
        &[("Range", "bytes=10-19")],
    ));
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, pkg.full("ch")[10..20]);
}

/// A slow upstream's bytes reach the client as they come: tailgate gathers small reads into
/// larger client writes only while the bytes keep coming within milliseconds of each other.
#[test]
fn a_slow_upstreams_bytes_are_relayed_as_they_come() {
    let (_s3, relay, tg, pkg) = relay_setup("");
    let head = pkg.head.len();
    let want = &pkg.full("ch")[head..head + 16384];
    // S3's answer comes in pieces of 4 KiB, 300 ms apart: each must reach the client alone,
    // not wait for the next.
    relay.add_rule(
        "/f/tails/ch",
        Fault::Pace(4096, Duration::from_millis(300)),
        1,
    );
    let mut c = tg.client();
    let range = format!("bytes={head}-{}", head + 16383);
    c.send(&request(
        "GET",
        "/apk/f/ch.apk",
        &[("Range", range.as_str())],
    ));
    let mut got = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = std::io::Read::read(&mut c.stream, &mut buf).unwrap();
        assert!(n > 0, "connection closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        arrivals.push(got.len() - end - 4 - arrivals.iter().sum::<usize>());
        if got.len() - end - 4 >= want.len() {
            assert!(got.starts_with(b"HTTP/1.1 206"));
            assert!(got[end + 4..] == *want);
            break;
        }
    }
    // Body bytes per client read: at most one piece each.
    assert!(arrivals.len() >= 4, "{arrivals:?}");
    assert!(arrivals.iter().all(|&n| n <= 4096), "{arrivals:?}");
}

#[test]
fn clients_that_abort_or_stall_release_their_upstream_connection() {
    for mode in MODES {
        aborting_clients_release_upstream(mode);
    }
}

fn aborting_clients_release_upstream(mode: &str) {
    let (_s3, relay, tg, pkg) = relay_setup_with(mode, "retries 0;");
    // 1. A client reads 100 KB of a 6 MiB body and goes away.
    {
        let mut c = tg.client();
        c.send(&request("GET", "/apk/f/ch.apk", &[]));
        let mut got = 0;
        let mut buf = [0u8; 16384];
        while got < 100_000 {
            got += std::io::Read::read(&mut c.stream, &mut buf).unwrap();
        }
    }
    // 2. Its upstream connection is closed, not pooled half-read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.open_now.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "{mode}: upstream connection still open: {:?}",
            relay.events()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 3. The next downloads are whole and exact.
    for _ in 0..2 {
        assert!(tg.get("/apk/f/ch.apk", &[]).body == pkg.full("ch"));
    }
    assert_no_close_wait(&tg);
}

#[test]
fn a_client_slower_than_send_timeout_is_cut() {
    for mode in MODES {
        cut_after_send_timeout(mode);
    }
}

fn cut_after_send_timeout(mode: &str) {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "st",
        bytes(16 * MIB, 41),
        vec![("ch", bytes(1000, 42))],
    );
    let relay = Relay::start(s3.addr);
    let tg = Tailgate::start(&conf(
        &relay.endpoint(),
        SK,
        &format!("send_timeout 1s; {mode}"),
        "",
    ));
    let r = slow(vec![(2 * MIB, Duration::from_secs(3))]).get(
        tg.addr,
        "/apk/st/ch.apk",
        16 * MIB + 1000,
    );
    assert!(r.cut_short, "{mode}: the connection must be closed");
    let full = pkg.full("ch");
    assert!(r.body.len() < full.len() && r.body == full[..r.body.len()]);
    assert_no_close_wait(&tg);
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.open_now.load(Ordering::SeqCst) > 1 {
        assert!(
            Instant::now() < deadline,
            "{mode}: upstream connections left open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes tailgate has written to the client at `client` (the client's own address) that
/// its kernel has not sent yet, from `ss`; 0 when `ss` shows none.
fn unsent_to(client: SocketAddr) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htni", "dst", &client.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|f| f.strip_prefix("notsent:"))
        .map_or(0, |n| n.parse().unwrap())
}

/// The most tailgate left unsent over `stall` to a client that read nothing after sending
/// `req`, which is then read whole.
fn most_unsent_while_stalled(
    client: &mut Client,
    me: SocketAddr,
    req: &[u8],
    stall: Duration,
) -> (usize, Response) {
    client.send(req);
    let mut most = 0;
    let until = Instant::now() + stall;
    while Instant::now() < until {
        most = most.max(unsent_to(me));
        std::thread::sleep(Duration::from_millis(20));
    }
    (most, client.response(false).unwrap())
}

/// In each relay mode with `extra_http`, on one connection with a small receive buffer:
/// the most tailgate leaves unsent to the client while it stalls on a whole 12 MiB download,
/// then on a 1 MiB range; both then arrive byte for byte.
fn most_unsent_to_a_stalled_client(extra_http: &str) -> Vec<(usize, usize)> {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "lw",
        bytes(12 * MIB, 51),
        vec![("ch", bytes(1000, 52))],
    );
    let full = pkg.full("ch");
    let mut most = Vec::new();
    for mode in MODES {
        let tg = Tailgate::start(&conf(
            &s3.endpoint(),
            SK,
            &format!("{extra_http} {mode}"),
            "",
        ));
        let mut client = Client::narrow(tg.addr);
        let me = client.stream.local_addr().unwrap();
        let stall = Duration::from_millis(1500);
        let whole = request("GET", "/apk/lw/ch.apk", &[]);
        let (long, r) = most_unsent_while_stalled(&mut client, me, &whole, stall);
        assert!(r.body == full, "{mode}: body differs");
        let range = request("GET", "/apk/lw/ch.apk", &[("Range", "bytes=0-1048575")]);
        let (short, r) = most_unsent_while_stalled(&mut client, me, &range, stall);
        assert!(
            r.status == 206 && r.body == full[..MIB],
            "{mode}: range differs"
        );
        most.push((long, short));
    }
    most
}

#[test]
fn tcp_notsent_lowat_keeps_a_stalled_clients_bytes_out_of_the_kernel_on_long_bodies() {
    // The limit is checked before each new socket buffer (up to 64 KiB on loopback), so
    // the kernel may hold one more.
    let bound = 16 * 1024 + 64 * 1024;
    let on = most_unsent_to_a_stalled_client("tcp_notsent_lowat 16k;");
    let off = most_unsent_to_a_stalled_client("");
    for ((mode, (long, short)), (long_off, _)) in MODES.iter().zip(on).zip(off) {
        assert!(long <= bound, "{mode}: {long} bytes unsent with the limit");
        assert!(
            short > 2 * bound,
            "{mode}: the limit stayed on for a 1 MiB body ({short})"
        );
        assert!(
            long_off > 2 * bound,
            "{mode}: only {long_off} bytes unsent without it"
        );
    }
}

#[test]
fn a_pooled_connection_closed_just_after_its_response_is_replaced() {
    // The gateway closes idle connections 200 ms after a response: well inside the second
    // in which tailgate reuses a returned connection without checking it first.
    let s3 = S3::start();
    let pkg = upload_package(&s3, "fresh", bytes(MIB, 41), vec![("a", bytes(1000, 42))]);
    let gw = gateway_with(&s3, "listen {listen};\n  keepalive_timeout 200ms;");
    let tg = Tailgate::start(
        &conf(
            &format!("http://{}", gw.addr),
            SK,
            "",
            "keepalive_timeout 60s; retries 0;",
        )
        .replace("worker_threads 2;", "worker_threads 1;"),
    );
    for _ in 0..3 {
        assert!(tg.get("/apk/fresh/a.apk", &[("Range", "bytes=0-9")]).body == pkg.full("a")[..10]);
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = tg.get("/apk/fresh/a.apk", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == pkg.full("a"));
    assert!(
        !tg.log().contains("upstream:"),
        "no upstream error: {}",
        tg.log()
    );
}

#[test]
fn a_slow_client_goes_on_through_a_small_buffer_and_gets_every_byte() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "sl", bytes(4 * MIB, 61), vec![("ch", bytes(1000, 62))]);
    let full = pkg.full("ch");
    for mode in MODES {
        // Little kernel buffering on either side, so tailgate's writes wait on the reader.
        let tg = Tailgate::start(&conf(
            &s3.endpoint(),
            SK,
            &format!("relay_buffer_size 256k; tcp_notsent_lowat 16k; {mode}"),
            "",
        ));
        let fast = tg.get("/apk/sl/ch.apk", &[]);
        assert!(fast.body == full, "{mode}: fast body differs");
        let metric = "tailgate_slow_client_responses_total ";
        assert_eq!(tg.metric(metric), 0, "{mode}: a fast client counted slow");

        // The 128 KiB large buffer and the 256 KiB relay buffer both take over a second to
        // drain at about 80 KB/s; what the response holds is read while it is under way.
        let gauge = "tailgate_relay_buffer_bytes ";
        let mut client = Client::narrow(tg.addr);
        client.send(&request("GET", "/apk/sl/ch.apk", &[]));
        let step = Duration::from_millis(100);
        client.trickle(8 * 1024, step, Duration::from_millis(500));
        let before = tg.metric(gauge);
        // The first write may go mostly to the kernel; the second one is slow for sure.
        let spliced_mode = mode.contains("relay_splice on");
        let mut after = before;
        for _ in 0..if spliced_mode { 4 } else { 20 } {
            client.trickle(8 * 1024, step, Duration::from_millis(500));
            after = tg.metric(gauge);
            if after == 64 * 1024 {
                break;
            }
        }
        // Counted as soon as it is seen, not when the download ends.
        let slow_under_way = tg.metric(metric);
        let r = client.response(false).unwrap();
        assert_eq!(r.status, 200, "{mode}");
        assert!(r.body == full, "{mode}: slow body differs");
        let slow = tg.metric(metric);
        if spliced_mode {
            // Spliced bodies hold no buffer past their first bytes.
            assert!(slow <= 1, "{mode}: {slow}");
            assert_eq!(after, 0, "{mode}: buffer bytes held while spliced");
        } else {
            assert_eq!(
                (slow_under_way, slow),
                (1, 1),
                "{mode}: the slow client was not seen"
            );
            let first = if mode.contains("large") { 128 } else { 256 } * 1024;
            assert_eq!(
                (before, after),
                (first, 64 * 1024),
                "{mode}: buffer bytes held"
            );
        }
        tg.wait_for_metric(gauge, 0);
        // The worker's buffers still serve the next fast client byte for byte.
        assert!(tg.get("/apk/sl/ch.apk", &[]).body == full, "{mode}");
        assert!(
            tg.get("/apk/sl/ch.apk", &[("Range", "bytes=100-400099")])
                .body
                == full[100..400_100],
            "{mode}"
        );
    }
}
