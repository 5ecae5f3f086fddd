//! An endpoint's name and addresses: new connections spread over every address the name
//! resolves to, an address that refuses or never answers is passed over within the same
//! request and tried last for a while, and a name that moves is followed without a reload
//! (`resolve_interval`), idle connections to the old address closed. tailgate runs with
//! the test's own hosts file in place of /etc/hosts (a mount namespace of its own), so
//! the test decides what the name resolves to; the addresses are loopback ones, each a
//! relay in front of one s3s-fs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::relay::{Event, Relay};
use common::*;

const NAME: &str = "s3.tailgate.test";

/// Points `NAME` at `ips` by rewriting the hosts file in place (the same inode, which is
/// what the bind mount shows).
fn point_name(hosts: &Path, ips: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write(hosts, text).unwrap();
}

fn hosts_file(dir: &TempDir, ips: &[&str]) -> PathBuf {
    let path = dir.path().join("hosts");
    point_name(&path, ips);
    path
}

/// A relay to `s3` on `ip` and the given port (0: any free one).
fn relay_on(ip: [u8; 4], port: u16, s3: &S3) -> Relay {
    Relay::start_on(SocketAddr::from((ip, port)), s3.addr)
}

fn connections(relay: &Relay) -> usize {
    relay
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Open { .. }))
        .count()
}

/// One s3s-fs holding a package, a relay to it on 127.0.0.1 and one on 127.0.0.2 at the
/// same port, and a hosts file that points `NAME` at `ips`. Move out the fields a test
/// uses; the rest (the hosts file's directory, s3s-fs) live on in the binding.
struct Site {
    pkg: Package,
    a: Relay,
    b: Relay,
    port: u16,
    hosts: PathBuf,
    _dir: TempDir,
    _s3: S3,
}

fn site(package: &str, seed: u64, ips: &[&str]) -> Site {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        package,
        bytes(100_000 + seed as usize * 1000, seed),
        vec![("a", bytes(500 + seed as usize, seed + 1))],
    );
    let a = relay_on([127, 0, 0, 1], 0, &s3);
    let port = a.addr.port();
    let b = relay_on([127, 0, 0, 2], port, &s3);
    let dir = TempDir::new("hosts");
    let hosts = hosts_file(&dir, ips);
    Site {
        pkg,
        a,
        b,
        port,
        hosts,
        _dir: dir,
        _s3: s3,
    }
}

fn tailgate(s3_extra: &str, port: u16, hosts: &Path) -> Tailgate {
    let endpoint = format!("http://{NAME}:{port}");
    Tailgate::start_with_hosts(&conf(&endpoint, SK, "", s3_extra), hosts)
}

/// `times` downloads of `path`, each 200 with exactly `full`.
fn download(tg: &Tailgate, path: &str, full: &[u8], times: usize) {
    for _ in 0..times {
        let r = tg.get(path, &[]);
        assert_eq!(r.status, 200, "{}", tg.log());
        assert!(r.body == full, "body differs");
    }
}

/// The one failed address of the run was logged and counted once: the operator hears of
/// it, and not once per connection.
fn failed_once(tg: &Tailgate, line: &str) {
    let lines = tg.log().lines().filter(|l| l.contains(line)).count();
    assert_eq!(lines, 1, "{}", tg.log());
    assert_eq!(tg.metric("tailgate_upstream_connect_failures_total "), 1);
}

fn wait_for_log(tg: &Tailgate, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !tg.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no \"{text}\" in the log:\n{}",
            tg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A listener on `addr` that accepts nothing: a backlog of 0 that one connection fills, so
/// the kernel drops every further SYN, as for an address that went dark.
struct Dark {
    _listener: socket2::Socket,
    _filler: TcpStream,
}

fn dark(addr: SocketAddr) -> Dark {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    Dark {
        _filler: TcpStream::connect(addr).unwrap(),
        _listener: listener,
    }
}

#[test]
fn new_connections_spread_over_the_addresses_and_pass_over_one_that_refuses() {
    // Nothing listens on 127.0.0.3: connecting there is refused at once.
    let site = site("spread", 71, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let (pkg, a, b, port, hosts) = (site.pkg, site.a, site.b, site.port, site.hosts);
    // No pool and no retries: every segment needs a new connection, and a refused address
    // must cost the request nothing.
    let tg = tailgate("keepalive 0;\n  retries 0;", port, &hosts);
    let full = pkg.full("a");
    download(&tg, "/apk/spread/a.apk", &full, 9);
    let (on_a, on_b) = (connections(&a), connections(&b));
    // About half each (one manifest and two segments per download, the first download also
    // the object's metadata); strict alternation is not promised with two workers.
    assert!(on_a + on_b >= 18, "a {on_a}, b {on_b}");
    assert!(
        on_a >= (on_a + on_b) / 4 && on_b >= (on_a + on_b) / 4,
        "a {on_a}, b {on_b}"
    );
    failed_once(
        &tg,
        &format!("connect to 127.0.0.3:{port}: connect: Connection refused"),
    );
}

#[test]
fn an_address_that_never_answers_costs_one_connect_timeout_then_goes_last() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "dead", bytes(150_000, 73), vec![("a", bytes(700, 74))]);
    let a = relay_on([127, 0, 0, 1], 0, &s3);
    let port = a.addr.port();
    let _dark = dark(SocketAddr::from(([127, 0, 0, 2], port)));
    let dir = TempDir::new("hosts");
    let hosts = hosts_file(&dir, &["127.0.0.2", "127.0.0.1"]);
    let tg = tailgate(
        "keepalive 0;\n  retries 0;\n  connect_timeout 1s;",
        port,
        &hosts,
    );
    let full = pkg.full("a");
    let started = Instant::now();
    download(&tg, "/apk/dead/a.apk", &full, 6);
    // Each download opens two or three connections. Were the dark address tried in its
    // turn, every other connection would wait out the 1 s connect_timeout (6 s and more);
    // after its first timeout it goes last for 10 s, so the others never wait.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(connections(&a) >= 12, "{}", connections(&a));
    failed_once(&tg, &format!("connect to 127.0.0.2:{port}: timed out"));
}

#[test]
fn an_endpoint_dark_altogether_costs_one_connect_timeout_per_attempt() {
    let s3 = S3::start();
    upload_package(&s3, "down", bytes(1000, 79), vec![("a", bytes(100, 80))]);
    let port = free_port();
    let _d2 = dark(SocketAddr::from(([127, 0, 0, 2], port)));
    let _d3 = dark(SocketAddr::from(([127, 0, 0, 3], port)));
    let dir = TempDir::new("hosts");
    let hosts = hosts_file(&dir, &["127.0.0.2", "127.0.0.3"]);
    let tg = tailgate(
        "retries 1;\n  retry_backoff 10ms;\n  connect_timeout 1s;",
        port,
        &hosts,
    );
    // The first attempt tries both addresses (2 s), the retry one of them (1 s).
    let started = Instant::now();
    let r = tg.get("/apk/down/a.apk", &[]);
    let first = started.elapsed();
    assert_eq!(r.status, 504, "{}", tg.log());
    assert!(first >= Duration::from_millis(2900), "took {first:?}");
    assert!(first < Duration::from_millis(3800), "took {first:?}");
    // Both failed lately: each attempt tries one, as with a single address.
    let started = Instant::now();
    let r = tg.get("/apk/down/a.apk", &[]);
    let second = started.elapsed();
    assert_eq!(r.status, 504, "{}", tg.log());
    assert!(second >= Duration::from_millis(1900), "took {second:?}");
    assert!(second < Duration::from_millis(2800), "took {second:?}");
    // Both addresses, then one per attempt: 2 + 1 + 1 + 1.
    assert_eq!(tg.metric("tailgate_upstream_connect_failures_total "), 5);
}

#[test]
fn a_name_that_moves_is_followed_without_a_reload() {
    let site = site("moves", 75, &["127.0.0.1"]);
    let (pkg, a, b, port, hosts) = (site.pkg, site.a, site.b, site.port, site.hosts);
    let tg = tailgate("resolve_interval 1s;", port, &hosts);
    let full = pkg.full("a");
    let r = tg.get("/apk/moves/a.apk", &[]);
    assert_eq!((r.status, r.body == full), (200, true));
    assert!(
        a.open_now.load(Ordering::SeqCst) >= 1,
        "pooled connections to a"
    );
    assert_eq!(connections(&b), 0);

    point_name(&hosts, &["127.0.0.2"]);
    wait_for_log(
        &tg,
        &format!("now resolves to 127.0.0.2:{port} (was 127.0.0.1:{port})"),
        Duration::from_secs(5),
    );
    // The idle connections to the address that is gone close within a sweep.
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.open_now.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "idle connections to a stay open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = connections(&a);
    // Across the head and the tail: both segments on new connections.
    let edge = pkg.head.len();
    let range = format!("bytes={}-{}", edge - 10, edge + 99);
    let r = tg.get("/apk/moves/a.apk", &[("Range", &range)]);
    assert_eq!(
        (r.status, r.body == full[edge - 10..edge + 100]),
        (206, true)
    );
    assert!(connections(&b) >= 1);
    assert_eq!(
        connections(&a),
        before,
        "a new connection went to the old address"
    );

    // A lookup that finds nothing keeps the addresses in use.
    point_name(&hosts, &[]);
    wait_for_log(
        &tg,
        &format!("keeping 127.0.0.2:{port}"),
        Duration::from_secs(5),
    );
    let r = tg.get("/apk/moves/a.apk", &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, r.body == full[..100]), (206, true));
    assert_eq!(connections(&a), before);
}

#[test]
fn resolve_interval_off_keeps_the_addresses_of_the_load() {
    let site = site("pinned", 77, &["127.0.0.1"]);
    let (pkg, b, port, hosts) = (site.pkg, site.b, site.port, site.hosts);
    let tg = tailgate("resolve_interval off;\n  keepalive 0;", port, &hosts);
    point_name(&hosts, &["127.0.0.2"]);
    std::thread::sleep(Duration::from_millis(2500));
    let r = tg.get("/apk/pinned/a.apk", &[]);
    assert_eq!((r.status, r.body == pkg.full("a")), (200, true));
    assert_eq!(connections(&b), 0);
    assert!(!tg.log().contains("now resolves to"), "{}", tg.log());
}
