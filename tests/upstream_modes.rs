//! The S3 side's other shapes: HTTPS through rustls (TLS 1.3 and 1.2, a private CA given by
//! `tls_ca_file`, a wrong CA refused, sessions resumed, resets, closes without close_notify
//! and stalls mid-body resumed or made loud, a slow client's records opened in the small
//! buffer its transfer moves to) and virtual-hosted addressing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::relay::{Fault, Relay};
use common::*;

const MIB: u64 = 1024 * 1024;

/// A temp dir with the gateway's certificate ("gw") and its CA, and the `s3` block's
/// directive that trusts that CA.
fn gateway_certs() -> (TempDir, String) {
    let certs = TempDir::new("certs");
    make_certs(certs.path(), "gw");
    let ca = format!("tls_ca_file {}/gw-ca.pem;", certs.path().display());
    (certs, ca)
}

/// Every cipher suite rustls offers, each pinned on the OpenSSL side: the record layer
/// (nonces, additional data, TLS 1.3's inner type, TLS 1.2's explicit nonce) must agree
/// with another implementation on all of them, over fresh and pooled connections (and
/// OpenSSL's post-handshake session tickets).
const SUITES: [(&str, &str); 6] = [
    ("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"),
    ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
];

#[test]
fn https_with_a_private_ca_over_tls_1_3_and_1_2() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "tls",
        bytes(2 * 1024 * 1024 + 3, 51),
        vec![("a", bytes(70_000, 52))],
    );
    let (certs, ca) = gateway_certs();
    make_certs(certs.path(), "other");
    for (protocols, suite) in SUITES {
        let pin = match protocols {
            "TLSv1.3" => format!("ssl_conf_command Ciphersuites {suite};"),
            _ => format!("ssl_ciphers {suite};"),
        };
        let gw = tls_gateway(&s3, certs.path(), protocols, &pin);
        let endpoint = format!("https://{}", gw.addr);
        let tg = Tailgate::start(&conf(&endpoint, SK, "", &ca));
        let full = pkg.full("a");
        let mut c = tg.client();
        for _ in 0..2 {
            c.send(&request("GET", "/apk/tls/a.apk", &[]));
            let r = c.response(false).unwrap();
            assert_eq!(r.status, 200, "{suite}");
            assert!(r.body == full, "{suite}: body differs");
        }
        let spec = format!("bytes={}-{}", full.len() - 80_000, full.len() - 1);
        c.send(&request("GET", "/apk/tls/a.apk", &[("Range", &spec)]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 206);
        assert!(
            r.body == full[full.len() - 80_000..],
            "{suite}: range body differs"
        );

        // The same gateway is refused when the conf trusts another CA.
        let other = format!(
            "tls_ca_file {}/other-ca.pem; retries 0;",
            certs.path().display()
        );
        let tg = Tailgate::start(&conf(&endpoint, SK, "", &other));
        assert_eq!(
            tg.get("/apk/tls/a.apk", &[]).status,
            502,
            "{suite}: untrusted CA"
        );
    }
}

/// Connections after the first resume the TLS session (tickets kept by rustls, handed over
/// by the record layer after the handshake) instead of a full handshake each: with no
/// pooling, every upstream request is a new connection.
#[test]
fn new_tls_connections_resume_the_session() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "tls",
        bytes(300_000, 53),
        vec![("a", bytes(7_000, 54))],
    );
    let (certs, ca) = gateway_certs();
    for protocols in ["TLSv1.3", "TLSv1.2"] {
        let log = certs.path().join(format!("access-{protocols}.log"));
        let gw = tls_gateway(
            &s3,
            certs.path(),
            protocols,
            &format!("access_log {} tls;", log.display()),
        );
        let ca = format!("{ca} keepalive 0;");
        let tg = Tailgate::start(
            &conf(&format!("https://{}", gw.addr), SK, "", &ca)
                .replace("worker_threads 2;", "worker_threads 1;"),
        );
        for _ in 0..3 {
            assert!(tg.get("/apk/tls/a.apk", &[]).body == pkg.full("a"));
        }
        // nginx writes a request's line when it ends: a manifest, then head and tail three
        // times.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let lines: Vec<String> = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= 7 || std::time::Instant::now() > deadline {
                break lines;
            }
            #[allow(clippy::disallowed_methods)] // polling another process's log
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(lines.len(), 7, "{protocols}: {lines:?}");
        assert!(lines.iter().all(|l| l.starts_with(protocols)), "{lines:?}");
        assert_eq!(lines[0], format!("{protocols} ."), "{lines:?}");
        let resumed = lines.iter().filter(|l| l.ends_with(" r")).count();
        assert!(resumed >= lines.len() - 1, "{protocols}: {lines:?}");
    }
}

/// The fault relay between tailgate and a TLS gateway breaks the encrypted stream part-way:
/// a reset, a FIN in the middle of a record (no close_notify) and a stall past
/// `read_timeout`. Each download is resumed on a fresh TLS connection at the exact byte;
/// without retries the cut is loud (short body, connection closed), never a clean end.
#[test]
fn https_bodies_broken_mid_stream_are_resumed_or_cut_loudly() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "tf",
        bytes(6 * MIB as usize, 71),
        vec![("a", bytes(300_000, 72))],
    );
    let full = pkg.full("a");
    let (certs, ca) = gateway_certs();
    for protocols in ["TLSv1.3", "TLSv1.2"] {
        let gw = tls_gateway(&s3, certs.path(), protocols, "");
        let relay = Relay::start(gw.addr);
        let endpoint = format!("https://{}", relay.addr);
        // No pooling, so each fetch opens the connection the next fault is for; the
        // manifest is fetched once, by the HEAD below.
        let s3_extra = format!("{ca} keepalive 0; retries 3; read_timeout 1s;");
        let tg = Tailgate::start(&conf(&endpoint, SK, "manifest_cache_ttl 1h;", &s3_extra));
        let mut c = tg.client();
        c.send(&request("HEAD", "/apk/tf/a.apk", &[]));
        assert_eq!(c.response(true).unwrap().status, 200);
        let faults = [
            Fault::ResetAfter(MIB),
            Fault::CloseAfter(2 * MIB + 5),
            Fault::StallAfter(MIB / 2, Duration::from_secs(2)),
        ];
        for (i, fault) in faults.into_iter().enumerate() {
            relay.fault_next_connection(fault.clone());
            c.send(&request("GET", "/apk/tf/a.apk", &[]));
            let r = c.response(false).unwrap();
            assert_eq!(r.status, 200, "{protocols} {fault:?}");
            assert!(r.body == full, "{protocols} {fault:?}: body differs");
            assert_eq!(
                tg.metric("tailgate_upstream_resumes_total"),
                i as u64 + 1,
                "{protocols} {fault:?}"
            );
        }
        // A range across the head/tail boundary, its head part reset.
        relay.fault_next_connection(Fault::ResetAfter(100_000));
        let (from, to) = (6 * MIB as usize - 200_000, 6 * MIB as usize + 1000);
        let spec = format!("bytes={from}-{to}");
        c.send(&request("GET", "/apk/tf/a.apk", &[("Range", &spec)]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 206, "{protocols}");
        assert!(r.body == full[from..=to], "{protocols}: range body differs");

        // Without retries: the client sees a short body and a closed connection.
        let s3_extra = format!("{ca} keepalive 0; retries 0;");
        let strict = Tailgate::start(&conf(&endpoint, SK, "", &s3_extra));
        let mut c = strict.client();
        c.send(&request("HEAD", "/apk/tf/a.apk", &[]));
        assert_eq!(c.response(true).unwrap().status, 200);
        relay.fault_next_connection(Fault::CloseAfter(MIB));
        c.send(&request("GET", "/apk/tf/a.apk", &[]));
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 200, "{protocols}");
        assert!(
            r.body.len() < full.len(),
            "{protocols}: a cut body must be short"
        );
        assert!(r.body == full[..r.body.len()], "{protocols}: wrong bytes");
        assert!(c.closed(Duration::from_secs(5)), "{protocols}: must close");
        assert_eq!(
            strict.metric("tailgate_truncations_total"),
            1,
            "{protocols}"
        );
    }
}

#[test]
fn virtual_hosted_addressing_puts_the_bucket_in_the_host() {
    let s3 = S3::start_virtual();
    let pkg = upload_package(&s3, "vh", bytes(300_000, 61), vec![("a", bytes(1000, 62))]);
    let endpoint = format!("http://localhost:{}", s3.addr.port());
    let tg = Tailgate::start(&conf(&endpoint, SK, "", "addressing virtual;"));
    let r = tg.get("/apk/vh/a.apk", &[("Range", "bytes=299990-300009")]);
    assert_eq!(r.status, 206, "{}", tg.log());
    assert_eq!(r.body, pkg.full("a")[299_990..300_010]);
}

#[test]
fn a_slow_client_over_https_gets_every_byte_through_the_small_buffer() {
    let s3 = S3::start();
    let pkg = upload_package(
        &s3,
        "ts",
        bytes(4 * MIB as usize, 81),
        vec![("a", bytes(1000, 82))],
    );
    let full = pkg.full("a");
    let (certs, ca) = gateway_certs();
    for protocols in ["TLSv1.3", "TLSv1.2"] {
        let gw = tls_gateway(&s3, certs.path(), protocols, "");
        let tg = Tailgate::start(&conf(
            &format!("https://{}", gw.addr),
            SK,
            "relay_buffer_size 256k; tcp_notsent_lowat 16k;",
            &ca,
        ));
        // Records are opened in place in the relay buffer, then in the 64 KiB one that
        // replaces it.
        let r = Client::narrow(tg.addr).slow_get("/apk/ts/a.apk");
        assert_eq!(r.status, 200, "{protocols}");
        assert!(r.body == full, "{protocols}: body differs");
        assert_eq!(
            tg.metric("tailgate_slow_client_responses_total "),
            1,
            "{protocols}"
        );
    }
}
