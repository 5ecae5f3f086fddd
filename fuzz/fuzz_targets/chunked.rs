#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::http::chunked::ChunkedDiscard;

fuzz_target!(|data: &[u8]| {
    let mut d = ChunkedDiscard::new(64 * 1024);
    if let Ok(n) = d.feed(data) {
        assert!(n <= data.len());
    }
});
