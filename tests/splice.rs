//! Relay paths past the plain buffer. Spliced relays (`relay_splice on`): large plain-HTTP
//! bodies go socket to socket, small ones through the buffer, and the pipes they use are
//! reused rather than piling up as open descriptors. Large buffers (`relay_large_buffers`):
//! concurrent long downloads, more than there are large buffers, are all exact.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const MIB: usize = 1024 * 1024;

/// The pipes tailgate has open (its pool's, and any of its own).
fn open_pipes(tg: &Tailgate) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", tg.proc.0.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[test]
fn large_bodies_are_spliced_small_ones_are_not_and_pipes_are_reused() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "sp",
        bytes(3 * MIB + 5, 51),
        vec![("big", bytes(400_000, 52)), ("small", bytes(900, 53))],
    );
    let tg = Tailgate::start(
        &conf(
            &s3.endpoint(),
            SK,
            "relay_buffer_size 64k; relay_splice on;",
            "",
        )
        .replace("worker_threads 2;", "worker_threads 1;"),
    );
    let spliced = || tg.metric("tailgate_spliced_bytes_total");

    // A small range is one read and one write.
    let r = tg.get("/apk/sp/big.apk", &[("Range", "bytes=1000-5095")]);
    assert_eq!(r.status, 206);
    assert!(r.body == pkg.full("big")[1000..5096]);
    assert_eq!(spliced(), 0);

    // A whole download: the head and the 400 KB tail are spliced past whatever first bytes
    // came with their response heads.
    let full = pkg.full("big");
    let r = tg.get("/apk/sp/big.apk", &[]);
    assert!(r.body == full, "body differs");
    let once = spliced();
    assert!(once > 3 * MIB as u64, "{once} bytes spliced");
    assert!(
        once <= full.len() as u64,
        "{once} spliced of {}",
        full.len()
    );

    // A small tail is not spliced; the head still is.
    let r = tg.get("/apk/sp/small.apk", &[]);
    assert!(r.body == pkg.full("small"));
    assert!(spliced() > once);

    // Downloads one after another, on one connection and on new ones, reuse one pipe.
    let pipes = open_pipes(&tg);
    assert!(
        pipes >= 2,
        "the idle pipe is kept for the next download: {pipes} pipe ends"
    );
    let mut c = tg.client();
    for i in 0..20 {
        if i % 2 == 0 {
            c.send(&request("GET", "/apk/sp/big.apk", &[]));
            assert!(c.response(false).unwrap().body == full, "download {i}");
        } else {
            assert!(tg.get("/apk/sp/big.apk", &[]).body == full, "download {i}");
        }
    }
    drop(c);
    let after = open_pipes(&tg);
    assert_eq!(after, pipes, "pipes open before and after 20 downloads");
}

#[test]
fn concurrent_spliced_downloads_are_exact() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "cc",
        bytes(5 * MIB + 11, 61),
        vec![("a", bytes(200_000, 62)), ("b", bytes(300_001, 63))],
    );
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "relay_splice on;", ""));
    let addr = tg.addr;
    let expect = [pkg.full("a"), pkg.full("b")];
    let downloads: Vec<_> = (0..8)
        .map(|i| {
            let want = expect[i % 2].clone();
            let path = format!("/apk/cc/{}.apk", ["a", "b"][i % 2]);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..3 {
                    c.send(&request("GET", &path, &[]));
                    let r = c.response(false).unwrap();
                    assert!(r.body == want, "{path}: body differs");
                }
            })
        })
        .collect();
    for d in downloads {
        d.join().unwrap();
    }
    assert!(tg.metric("tailgate_spliced_bytes_total") > 24 * 5 * MIB as u64);
}

#[test]
fn long_downloads_beyond_the_large_buffers_are_exact() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "lb",
        bytes(9 * MIB + 3, 71),
        vec![("a", bytes(5000, 72))],
    );
    let tg = Tailgate::start(
        &conf(&s3.endpoint(), SK, "relay_large_buffers 2 1m;", "")
            .replace("worker_threads 2;", "worker_threads 1;"),
    );
    let addr = tg.addr;
    let want = pkg.full("a");
    let downloads: Vec<_> = (0..5)
        .map(|_| {
            let want = want.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(&request("GET", "/apk/lb/a.apk", &[]));
                assert!(c.response(false).unwrap().body == want, "body differs");
                // A range too short for a large buffer, on the same connection.
                c.send(&request(
                    "GET",
                    "/apk/lb/a.apk",
                    &[("Range", "bytes=100-200099")],
                ));
                assert!(c.response(false).unwrap().body == want[100..200_100]);
            })
        })
        .collect();
    for d in downloads {
        d.join().unwrap();
    }
}
