#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::conf::{Config, Env};

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "X" => Some("1".to_string()),
            // An s3 block without an endpoint takes this one, not AWS's (no DNS).
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_string()),
            _ => None,
        }
    }
}

// Any text gives a Config or a file:line error, never a panic. Endpoint hosts that need
// DNS are kept out: inputs that write an endpoint must use an IP address.
fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if src.contains("endpoint") && !src.contains("127.0.0.1") {
            return; // no DNS look-ups from the fuzzer
        }
        let _ = Config::parse("fuzz.conf", src, &NoEnv);
    }
});
