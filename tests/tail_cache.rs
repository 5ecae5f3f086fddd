//! The tail cache (`tail_cache_size`): hot tails are served with no upstream request,
//! byte for byte, a new version of a tail (another ETag) is never served from the old
//! entry, tails too large for it still stream, and with the default (off) every download
//! fetches its tail.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::relay::{Fault, Relay};
use common::*;

const HEAD_LEN: usize = 1024 * 1024 + 3;

fn start(s3: &S3, extra_http: &str) -> Tailgate {
    start_on(&s3.endpoint(), extra_http)
}

fn start_on(endpoint: &str, extra_http: &str) -> Tailgate {
    let conf = conf(endpoint, SK, extra_http, "retry_backoff 20ms;")
        .replace("worker_threads 2;", "worker_threads 1;");
    Tailgate::start(&conf)
}

fn tail_requests(tg: &Tailgate) -> u64 {
    tg.metric("tailgate_upstream_requests_total{segment=\"tail\",result=\"ok\"}")
}

#[test]
fn hot_tails_come_from_memory_and_new_versions_are_fetched() {
    let s3 = S3::start();
    let name = "apps/cache/1.0";
    let pkg = upload_package(
        &s3,
        name,
        bytes(HEAD_LEN, 1),
        vec![
            ("hot", bytes(6000, 2)),
            ("big", bytes(300_000, 3)),
            ("warm", bytes(9000, 6)),
        ],
    );
    // 1 MiB budget: entries up to 256 KiB, so "big" is never cached.
    let logs = TempDir::new("tail-cache");
    let access = logs.path().join("access.log");
    let tg = start(
        &s3,
        &format!(
            "tail_cache_size 1m;\n manifest_cache_ttl 1s;\n access_log {};",
            access.display()
        ),
    );
    let hot = format!("/apk/{name}/hot.apk");
    let full = pkg.full("hot");

    for round in 0..3 {
        let r = tg.get(&hot, &[]);
        assert_eq!(r.status, 200);
        assert!(r.body == full, "round {round}: body differs");
    }
    assert_eq!(tail_requests(&tg), 1, "one upstream request for the tail");
    assert_eq!(tg.metric("tailgate_tail_cache_misses_total"), 1);
    assert_eq!(tg.metric("tailgate_tail_cache_hits_total"), 2);
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 6000);

    // Ranges inside the cached tail and across the seam, from memory.
    let len = full.len();
    for (a, b) in [
        (HEAD_LEN + 100, HEAD_LEN + 199),
        (len - 50, len - 1),
        (HEAD_LEN - 10, HEAD_LEN + 9),
        (0, len - 1),
    ] {
        let spec = format!("bytes={a}-{b}");
        let r = tg.get(&hot, &[("Range", &spec)]);
        assert_eq!(r.status, 206, "{spec}");
        assert!(r.body == full[a..=b], "{spec}: bytes differ");
    }
    let multi = format!("bytes=0-9,{}-{}", HEAD_LEN + 1, HEAD_LEN + 5);
    let r = tg.get(&hot, &[("Range", &multi)]);
    assert_eq!(r.status, 206);
    assert!(
        r.body
            .windows(5)
            .any(|w| w == &full[HEAD_LEN + 1..HEAD_LEN + 6]),
        "multipart part from the cached tail"
    );
    assert_eq!(tail_requests(&tg), 1, "ranges in the tail were all hits");

    // A tail over the entry bound streams every time.
    let big = format!("/apk/{name}/big.apk");
    for _ in 0..2 {
        assert!(tg.get(&big, &[]).body == pkg.full("big"));
    }
    assert_eq!(tail_requests(&tg), 3);

    // A first request for part of a tail reads the whole tail into the cache.
    let warm = format!("/apk/{name}/warm.apk");
    let warm_full = pkg.full("warm");
    let spec = format!("bytes={}-{}", HEAD_LEN + 10, HEAD_LEN + 4009);
    let r = tg.get(&warm, &[("Range", &spec)]);
    assert!(r.body == warm_full[HEAD_LEN + 10..HEAD_LEN + 4010]);
    assert_eq!(tail_requests(&tg), 4);
    assert!(tg.get(&warm, &[]).body == warm_full);
    assert_eq!(tail_requests(&tg), 4, "the download found the tail cached");
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 15_000);
    // The access log's upstream bytes: the whole tail read for the 4,000-byte range, and
    // only the head for the download whose tail came from memory.
    let upstream_bytes = |n: usize| -> Vec<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let text = std::fs::read_to_string(&access).unwrap_or_default();
            let warm: Vec<u64> = text
                .lines()
                .filter(|l| l.contains("/warm.apk"))
                .map(|l| l.split_whitespace().rev().nth(1).unwrap().parse().unwrap())
                .collect();
            if warm.len() >= n || std::time::Instant::now() > deadline {
                return warm;
            }
            #[allow(clippy::disallowed_methods)] // the access log is flushed within ~0.5 s
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(upstream_bytes(2), vec![9000, HEAD_LEN as u64]);

    // A new version of the hot tail: new object, new ETag, new manifest. Once the manifest
    // cache expires the new bytes are served, never the cached old ones.
    let pkg2 = upload_package(&s3, name, pkg.head, vec![("hot", bytes(6000, 9))]);
    #[allow(clippy::disallowed_methods)] // waiting out manifest_cache_ttl
    std::thread::sleep(Duration::from_millis(1300));
    let r = tg.get(&hot, &[]);
    assert!(r.body == pkg2.full("hot"), "the new tail version is served");
    assert_eq!(tail_requests(&tg), 5);
    let r = tg.get(&hot, &[]);
    assert!(r.body == pkg2.full("hot"));
    assert_eq!(tail_requests(&tg), 5, "and then cached");
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 15_000);
}

#[test]
fn off_by_default() {
    let s3 = S3::start();
    let name = "apps/nocache/1.0";
    let pkg = upload_package(&s3, name, bytes(HEAD_LEN, 4), vec![("hot", bytes(6000, 5))]);
    let tg = start(&s3, "");
    let hot = format!("/apk/{name}/hot.apk");
    for _ in 0..3 {
        assert!(tg.get(&hot, &[]).body == pkg.full("hot"));
    }
    assert_eq!(tail_requests(&tg), 3);
    assert_eq!(tg.metric("tailgate_tail_cache_hits_total"), 0);
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 0);
}

#[test]
fn a_failed_fill_falls_back_to_streaming() {
    let s3 = S3::start();
    let pkg = upload_package(&s3, "f", bytes(HEAD_LEN, 7), vec![("ch", bytes(6000, 8))]);
    let relay = Relay::start(s3.addr);
    let tg = start_on(&relay.endpoint(), "tail_cache_size 1m;");
    let full = pkg.full("ch");
    // The read that would fill the cache is reset part-way: the download still completes,
    // its tail streamed (and resumed) as without the cache.
    relay.add_rule("/f/tails/ch", Fault::ResetAfter(1000), 1);
    let r = tg.get("/apk/f/ch.apk", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == full, "body differs ({} bytes)", r.body.len());
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 0);
    // The next download fills the cache; the one after needs no tail request.
    assert!(tg.get("/apk/f/ch.apk", &[]).body == full);
    assert_eq!(tg.metric("tailgate_tail_cache_bytes"), 6000);
    let tails = |relay: &Relay| {
        relay
            .requests()
            .iter()
            .filter(|r| r.2.contains("/f/tails/ch"))
            .count()
    };
    let before = tails(&relay);
    assert!(tg.get("/apk/f/ch.apk", &[]).body == full);
    assert_eq!(tails(&relay), before);
}
