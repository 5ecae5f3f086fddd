#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::http::request::{parse, recycle, Parsed};

// The request parser never panics, and agrees with itself when fed in two parts and when
// it fills a recycled head (one that held this very request) instead of a new one.
fuzz_target!(|data: &[u8]| {
    let whole = parse(data, 8192);
    if data.len() > 1 {
        let cut = data[0] as usize % data.len();
        if let Ok(Parsed::Complete(h)) = parse(&data[..cut], 8192) {
            assert!(h.len <= cut);
        }
    }
    if let Ok(Parsed::Complete(h)) = whole {
        assert!(h.len <= data.len());
        let first = h.clone();
        recycle(h);
        match parse(data, 8192) {
            Ok(Parsed::Complete(again)) => assert_eq!(again, first),
            other => panic!("a recycled head parsed differently: {other:?}"),
        }
    }
});
