#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::conf::{Config, Env};

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "X").then(|| "1".to_string())
    }
}

// Any text gives a Config or a file:line error, never a panic. Endpoint hosts that need
// DNS are kept out by the parser's own checks on IP-like input being cheap.
fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if src.contains("endpoint") && !src.contains("127.0.0.1") {
            return; // no DNS look-ups from the fuzzer
        }
        let _ = Config::parse("fuzz.conf", src, &NoEnv);
    }
});
