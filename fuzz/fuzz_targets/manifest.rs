#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::object::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::parse(data);
});
