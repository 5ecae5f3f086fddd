#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::upstream::response::{parse, verify_segment, Parsed};

// The upstream head parser never panics; its spans lie inside the head it parsed.
fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete(h)) = parse(data) {
        assert!(h.len <= data.len());
        let head = &data[..h.len];
        for field in [h.etag, h.content_range, h.last_modified, h.content_type] {
            if let Some(text) = field.and_then(|s| s.text(data)) {
                assert_eq!(field.and_then(|s| s.text(head)), Some(text));
            }
        }
        let _ = h.meta(data);
        let _ = verify_segment(&h, data, 100, 109, "\"abc\"");
    }
});
