//! SPEC §8, "under load with clients that abort mid-body": many clients at once — some
//! checking every byte of whole files, single ranges, multipart ranges, pipelined batches and
//! revalidations, others going away mid-body with a FIN or a reset, or reading slowly and
//! then leaving — while the S3 side (s3s-fs behind the fault relay) resets, closes, stalls
//! and answers 503 at random. Every complete body is exact, no verifying client gets a short
//! body or a 5xx (retries resume at the exact byte), and afterwards nothing is left: no
//! CLOSE-WAIT, no connection still reading or writing, no upstream connection beyond the
//! idle pool, and the process's RSS stays bounded. Real tailgate over real sockets.
//!
//! It runs in each relay mode, with the tail cache on (tails filled while fills fail and
//! requests race), and with the tail cache on over HTTPS to an nginx TLS gateway, where the
//! relay breaks new connections' encrypted streams instead of single responses.
//! `SOAK_SECS` sets the load's length per pass (default 5), `SOAK_SEED` its seed.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::relay::{Fault, Relay};
use common::*;

const MIB: usize = 1024 * 1024;
const CLIENTS: usize = 16;
const VARIANTS: [(&str, usize); 3] = [("a", 1000), ("b", 70_000), ("c", 300_000)];

/// xorshift64*: enough randomness for picking requests, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default)]
struct Tally {
    whole: AtomicU64,
    ranges: AtomicU64,
    multipart: AtomicU64,
    pipelined: AtomicU64,
    revalidated: AtomicU64,
    aborted: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

struct Load {
    addr: std::net::SocketAddr,
    fulls: Vec<(String, Vec<u8>)>,
    etags: Vec<String>,
    tally: Tally,
}

impl Load {
    /// Checks one response against the bytes `start..=end` of variant `v` (a 206 when
    /// `range`); true when the connection may carry another request.
    fn check(
        &self,
        what: &str,
        r: Option<Response>,
        v: usize,
        span: (usize, usize),
        range: bool,
    ) -> bool {
        let (name, full) = &self.fulls[v];
        let Some(r) = r else {
            self.tally.fail(format!("{what} {name}: no response"));
            return false;
        };
        let want = if range { 206 } else { 200 };
        if r.status != want {
            self.tally
                .fail(format!("{what} {name}: status {} (want {want})", r.status));
            return false;
        }
        let (start, end) = span;
        if range {
            let cr = format!("bytes {start}-{end}/{}", full.len());
            if r.header("content-range") != Some(cr.as_str()) {
                self.tally.fail(format!(
                    "{what} {name}: {:?} (want {cr})",
                    r.header("content-range")
                ));
                return false;
            }
        }
        let expect = &full[start..=end];
        if r.body.len() != expect.len() {
            self.tally.fail(format!(
                "{what} {name} {start}-{end}: {} of {} bytes",
                r.body.len(),
                expect.len()
            ));
            return false;
        }
        if r.body != expect {
            let at = r
                .body
                .iter()
                .zip(expect)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.tally.fail(format!(
                "{what} {name} {start}-{end}: wrong byte at {}",
                start + at
            ));
            return false;
        }
        !r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    }

    /// A random satisfiable range of `len` bytes in its three spellings, as (header value,
    /// first byte, last byte).
    fn range(rng: &mut Rng, len: usize) -> (String, usize, usize) {
        let start = rng.below(len);
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(len.min(2 * MIB));
                (format!("bytes=-{n}"), len - n, len - 1)
            }
            1 if len - start <= 3 * MIB => (format!("bytes={start}-"), start, len - 1),
            _ => {
                let end = start + rng.below((len - start).min(2 * MIB));
                (format!("bytes={start}-{end}"), start, end)
            }
        }
    }

    fn client(&self, seed: u64, until: Instant) {
        let mut rng = Rng(seed);
        let mut kept: Option<Client> = None;
        while Instant::now() < until {
            let v = rng.below(self.fulls.len());
            let (name, full) = &self.fulls[v];
            let path = format!("/apk/s/{name}.apk");
            let mut c = kept.take().unwrap_or_else(|| Client::connect(self.addr));
            let keep = match rng.below(12) {
                0 | 1 => {
                    self.tally.whole.fetch_add(1, Ordering::Relaxed);
                    c.send(&request("GET", &path, &[]));
                    self.check("GET", c.response(false), v, (0, full.len() - 1), false)
                }
                2..=4 => {
                    self.tally.ranges.fetch_add(1, Ordering::Relaxed);
                    let (spec, s, e) = Self::range(&mut rng, full.len());
                    c.send(&request("GET", &path, &[("Range", &spec)]));
                    self.check(&spec, c.response(false), v, (s, e), true)
                }
                5 => {
                    self.tally.multipart.fetch_add(1, Ordering::Relaxed);
                    self.multipart(&mut rng, &mut c, v, &path)
                }
                6 => {
                    self.tally.pipelined.fetch_add(1, Ordering::Relaxed);
                    // 2 to 16 requests in one write, then their responses in order.
                    let asks: Vec<_> = (0..2 + rng.below(15))
                        .map(|_| Self::range(&mut rng, full.len()))
                        .collect();
                    let all: Vec<u8> = asks
                        .iter()
                        .flat_map(|a| request("GET", &path, &[("Range", &a.0)]))
                        .collect();
                    c.send(&all);
                    asks.iter()
                        .all(|a| self.check(&a.0, c.response(false), v, (a.1, a.2), true))
                }
                7 => {
                    self.tally.revalidated.fetch_add(1, Ordering::Relaxed);
                    self.revalidate(&mut rng, &mut c, v, &path)
                }
                k => {
                    self.tally.aborted.fetch_add(1, Ordering::Relaxed);
                    Self::abort(&mut rng, &mut c, &path, full.len(), k);
                    false
                }
            };
            if keep {
                kept = Some(c);
            }
        }
    }

    /// Two or three disjoint, non-adjacent ranges in ascending order, each part checked.
    fn multipart(&self, rng: &mut Rng, c: &mut Client, v: usize, path: &str) -> bool {
        let (name, full) = &self.fulls[v];
        let len = full.len();
        let mut cuts: Vec<usize> = (0..6).map(|_| rng.below(len)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut parts = Vec::new();
        for w in cuts.chunks_exact(2).take(3) {
            if parts
                .last()
                .is_none_or(|&(_, e): &(usize, usize)| w[0] > e + 1)
            {
                parts.push((w[0], w[1].min(w[0] + MIB)));
            }
        }
        if parts.len() < 2 {
            return true;
        }
        let spec = parts
            .iter()
            .map(|(s, e)| format!("{s}-{e}"))
            .collect::<Vec<_>>()
            .join(",");
        c.send(&request(
            "GET",
            path,
            &[("Range", &format!("bytes={spec}"))],
        ));
        let Some(r) = c.response(false) else {
            self.tally
                .fail(format!("multipart {name} {spec}: no response"));
            return false;
        };
        let boundary = r
            .header("content-type")
            .and_then(|t| t.split_once("boundary="))
            .map(|(_, b)| format!("--{b}"));
        let (206, Some(boundary)) = (r.status, boundary) else {
            self.tally.fail(format!(
                "multipart {name} {spec}: {} {:?}",
                r.status,
                r.header("content-type")
            ));
            return false;
        };
        let body = &r.body;
        let mut at = 0;
        for &(s, e) in &parts {
            let head = format!("Content-Range: bytes {s}-{e}/{len}\r\n\r\n");
            let found = find(&body[at..], boundary.as_bytes()).and_then(|b| {
                find(&body[at + b..], head.as_bytes()).map(|h| at + b + h + head.len())
            });
            let ok = found.is_some_and(|d| body.get(d..=d + e - s) == Some(&full[s..=e]));
            if !ok {
                self.tally.fail(format!(
                    "multipart {name} {spec}: part {s}-{e} missing or wrong"
                ));
                return false;
            }
            at = found.unwrap_or(0) + e - s + 1;
        }
        if !body[at..].starts_with(format!("\r\n{boundary}--\r\n").as_bytes()) {
            self.tally
                .fail(format!("multipart {name} {spec}: bad closing delimiter"));
            return false;
        }
        true
    }

    /// HEAD, then a GET with the ETag in If-None-Match (304, connection kept), then a range
    /// under If-Range.
    fn revalidate(&self, rng: &mut Rng, c: &mut Client, v: usize, path: &str) -> bool {
        let (name, full) = &self.fulls[v];
        let etag = &self.etags[v];
        c.send(&request("HEAD", path, &[]));
        match c.response(true) {
            Some(r) if r.status == 200 && r.header("etag") == Some(etag) => {}
            other => {
                self.tally.fail(format!("HEAD {name}: {other:?}"));
                return false;
            }
        }
        c.send(&request("GET", path, &[("If-None-Match", etag)]));
        match c.response(false) {
            Some(r) if r.status == 304 && r.body.is_empty() => {}
            other => {
                self.tally.fail(format!(
                    "If-None-Match {name}: {:?}",
                    other.map(|r| r.status)
                ));
                return false;
            }
        }
        let (spec, s, e) = Self::range(rng, full.len());
        c.send(&request(
            "GET",
            path,
            &[("Range", &spec), ("If-Range", etag)],
        ));
        self.check("If-Range", c.response(false), v, (s, e), true)
    }

    /// Asks for the whole file or a large range and goes away part-way: closing (FIN),
    /// resetting (RST), or after reading slowly for a while.
    fn abort(rng: &mut Rng, c: &mut Client, path: &str, len: usize, kind: usize) {
        let from = rng.below(len / 2);
        let range = format!("bytes={from}-");
        let (headers, body): (&[(&str, &str)], usize) = if rng.below(2) == 0 {
            (&[], len)
        } else {
            (&[("Range", &range)], len - from)
        };
        c.send(&request("GET", path, headers));
        // Always before the body's end (the response head counts too).
        let stop = rng.below(body.min(4 * MIB));
        let slow = kind == 11;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < stop {
            match c.stream.read(&mut buf[..if slow { 4096 } else { 65536 }]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if slow {
                thread::sleep(Duration::from_millis(2));
            }
        }
        if kind == 9 {
            let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Adds one random upstream fault whenever the previous one has been spent, until `until`.
/// Adds one random upstream fault whenever the previous one has been spent, until `until`:
/// on plain HTTP for the next request for a head or a tail (503 SlowDown among them), over
/// TLS, whose requests the relay cannot read, for the next connection opened.
fn chaos(relay: &Relay, tls: bool, seed: u64, until: Instant) -> u64 {
    let mut rng = Rng(seed);
    let mut added = 0;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(10 + rng.below(60) as u64));
        let spent = relay.rules.lock().unwrap().iter().all(|r| r.times == 0)
            && relay.connection_faults_pending() == 0;
        if !spent {
            continue;
        }
        let at = rng.below(2 * MIB) as u64;
        let fault = match rng.below(if tls { 8 } else { 10 }) {
            0..=3 => Fault::ResetAfter(at),
            4..=6 => Fault::CloseAfter(at),
            7 => Fault::StallAfter(at, Duration::from_millis(1500)),
            _ => Fault::SlowDown,
        };
        if tls {
            relay.fault_next_connection(fault);
        } else {
            relay.add_rule(["/s/base.apk", "/s/tails/"][rng.below(2)], fault, 1);
        }
        added += 1;
    }
    added
}

/// One pass: `mode` holds tailgate's extra http directives; with `tls` the relay sits in
/// front of an nginx TLS gateway instead of s3s-fs itself.
fn soak(mode: &str, tls: bool, seed: u64, secs: u64) {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "s",
        // Smaller over TLS, where the debug build decrypts slowly, so the pass still makes
        // a few hundred requests.
        bytes(if tls { 3 * MIB } else { 8 * MIB }, seed),
        VARIANTS
            .iter()
            .map(|&(v, n)| (v, bytes(n, seed + n as u64)))
            .collect(),
    );
    let certs = TempDir::new("certs");
    let (relay, endpoint, s3_extra, _gateway) = if tls {
        make_certs(certs.path(), "gw");
        let gw = tls_gateway(&s3, certs.path(), "TLSv1.3", "");
        let relay = Relay::start(gw.addr);
        let endpoint = format!("https://{}", relay.addr);
        let ca = format!("tls_ca_file {}/gw-ca.pem;", certs.path().display());
        (relay, endpoint, ca, Some(gw))
    } else {
        let relay = Relay::start(s3.addr);
        let endpoint = relay.endpoint();
        (relay, endpoint, String::new(), None)
    };
    let label = if tls {
        format!("https, {mode}")
    } else {
        mode.to_string()
    };
    let tg = Tailgate::start(&conf(
        &endpoint,
        SK,
        &format!("send_timeout 5s; {mode}"),
        &format!("retries 8; read_timeout 1s; {s3_extra}"),
    ));
    let fulls: Vec<(String, Vec<u8>)> = VARIANTS
        .iter()
        .map(|&(v, _)| (v.to_string(), pkg.full(v)))
        .collect();
    let etags = fulls
        .iter()
        .map(|(v, _)| {
            let mut c = tg.client();
            c.send(&request("HEAD", &format!("/apk/s/{v}.apk"), &[]));
            c.response(true)
                .unwrap()
                .header("etag")
                .unwrap()
                .to_string()
        })
        .collect();
    let load = Arc::new(Load {
        addr: tg.addr,
        fulls,
        etags,
        tally: Tally::default(),
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let load = Arc::clone(&load);
            thread::spawn(move || {
                load.client(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9), until)
            })
        })
        .collect();
    let faults = chaos(&relay, tls, seed.rotate_left(17) | 1, until);
    for c in clients {
        c.join().unwrap();
    }
    relay.clear_rules();
    let t = &load.tally;
    let hits = tg.metric("tailgate_tail_cache_hits_total");
    let counts = format!(
        "{label} seed {seed}: whole {} ranges {} multipart {} pipelined {} revalidated {} aborted {}, \
         {faults} upstream faults, {} resumes, {hits} tail cache hits",
        t.whole.load(Ordering::Relaxed),
        t.ranges.load(Ordering::Relaxed),
        t.multipart.load(Ordering::Relaxed),
        t.pipelined.load(Ordering::Relaxed),
        t.revalidated.load(Ordering::Relaxed),
        t.aborted.load(Ordering::Relaxed),
        tg.metric("tailgate_upstream_resumes_total"),
    );
    eprintln!("{counts}");
    let failures = t.failures.lock().unwrap();
    assert!(failures.is_empty(), "{counts}\n{}", failures.join("\n"));
    // The pass must have exercised what it is about.
    assert!(faults > 10, "{counts}: too few faults to mean anything");
    assert!(t.aborted.load(Ordering::Relaxed) > 5, "{counts}");
    assert!(!mode.contains("tail_cache") || hits > 5, "{counts}");

    // Afterwards: nothing left reading, writing or in CLOSE-WAIT; upstream connections no
    // more than the idle pool; memory bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The metrics request itself is one connection writing.
        let busy = tg.metric("tailgate_connections{state=\"reading\"}")
            + tg.metric("tailgate_connections{state=\"writing\"}");
        let active = tg.metric("tailgate_upstream_pool_connections{state=\"active\"}");
        let idle = tg.metric("tailgate_upstream_pool_connections{state=\"idle\"}");
        let upstream = relay.open_now.load(Ordering::SeqCst) as u64;
        if busy <= 1 && active == 0 && upstream <= idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: still busy {busy}, upstream active {active}, open {upstream} > idle {idle}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let left = close_wait_settles(tg.proc.0.id(), Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "{label}: CLOSE-WAIT sockets left: {left:?}"
    );
    let rss = rss_kib(tg.proc.0.id());
    assert!(rss < 192 * 1024, "{label}: RSS {rss} KiB after the load");
    let log = tg.log();
    assert!(!log.contains("panicked"), "{label}: {log}");
    for (i, (v, full)) in load.fulls.iter().enumerate() {
        let r = tg.get(&format!("/apk/s/{v}.apk"), &[]);
        assert!(
            r.status == 200 && r.body == *full,
            "{label}: {v} after the load"
        );
        assert_eq!(r.header("etag"), Some(load.etags[i].as_str()));
    }
}

#[test]
fn verifying_and_aborting_clients_over_a_failing_upstream() {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    for mode in [
        "relay_splice on;",
        "relay_splice off;",
        "relay_large_buffers 2 128k;",
        "tail_cache_size 1m;",
    ] {
        soak(mode, false, seed, secs);
    }
    soak("tail_cache_size 1m;", true, seed, secs);
}
