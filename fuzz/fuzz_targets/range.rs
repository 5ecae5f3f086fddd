#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::object::range::{parse, RangeOutcome};

// Parts are sorted, disjoint, non-empty and inside the representation.
fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) >> (data[0] % 64);
    let Ok(header) = std::str::from_utf8(&data[8..]) else { return };
    let p = match parse(header, len, 16) {
        RangeOutcome::One(r) => vec![r],
        RangeOutcome::Parts(p) => {
            assert!(p.len() >= 2);
            p
        }
        _ => vec![],
    };
    {
        assert!(p.len() <= 16);
        for w in p.windows(2) {
            assert!(w[0].end < w[1].start);
        }
        for r in p {
            assert!(r.start < r.end && r.end <= len);
        }
    }
});
