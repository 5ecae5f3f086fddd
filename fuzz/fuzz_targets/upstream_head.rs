#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::upstream::response::{parse, verify_segment, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete(h)) = parse(data) {
        assert!(h.len <= data.len());
        let _ = verify_segment(&h, 100, 109, "\"abc\"");
    }
});
