//! SPEC §4: segments are fetched strictly one after another. The tail's upstream request
//! may start only after the head's last byte was written to the client socket, so with a
//! slow client the tail request waits until the client has all of the head but what the
//! kernel's socket buffers hold; and no more than one upstream connection is ever open.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::relay::Relay;
use common::*;

const HEAD_LEN: usize = 16 * 1024 * 1024;
const TAIL_LEN: usize = 1536 * 1024;
const CLIENT_RCVBUF: usize = 16 * 1024;

#[test]
fn the_tail_is_requested_only_after_the_head_reached_the_client_socket() {
    // 1. S3 with a package whose tail is large enough (1.5 MiB) to matter.
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "lazy",
        bytes(HEAD_LEN, 5),
        vec![("ch", bytes(TAIL_LEN, 6))],
    );
    // 2. A recording relay between tailgate (one worker, one pool) and S3.
    let relay = Relay::start(s3.addr);
    let tg = Tailgate::start(
        &conf(&relay.endpoint(), SK, "", "").replace("worker_threads 2;", "worker_threads 1;"),
    );
    // 3. A slow client with a small receive buffer downloads the whole composite.
    let client = SlowClient {
        rcvbuf: CLIENT_RCVBUF,
        read_size: 16 * 1024,
        per_read: Duration::from_micros(500),
        pauses: Vec::new(),
    };
    let SlowResult { body, timeline, .. } =
        client.get(tg.addr, "/apk/lazy/ch.apk", HEAD_LEN + TAIL_LEN);
    assert!(body == pkg.full("ch"), "body differs");
    // 4. When the tail's request crossed the relay, the client already had all of the head
    //    but what the socket buffers between them can hold: tailgate's send buffer (up to
    //    tcp_wmem max), the client's receive buffer, and one relay buffer.
    let requests = relay.requests();
    let tail = requests
        .iter()
        .find(|r| r.2.contains("/lazy/tails/ch"))
        .expect("tail request");
    assert_eq!(
        tail.3.as_deref(),
        Some(&*format!("bytes=0-{}", TAIL_LEN - 1))
    );
    let head = requests
        .iter()
        .find(|r| r.2.contains("/lazy/base.apk"))
        .expect("head request");
    assert!(head.0 < tail.0);
    let received_then = timeline
        .iter()
        .take_while(|(t, _)| *t <= tail.0)
        .last()
        .map_or(0, |x| x.1);
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let slack = wmem_max + 4 * CLIENT_RCVBUF + 64 * 1024;
    assert!(
        received_then + slack >= HEAD_LEN,
        "tail requested when the client had only {received_then} of {HEAD_LEN} head bytes (slack {slack})"
    );
    // 5. Never more than one upstream connection at a time for this one request.
    assert_eq!(
        relay.max_open.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{:?}",
        relay.events()
    );
}
