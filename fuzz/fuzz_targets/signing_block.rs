#![no_main]
use libfuzzer_sys::fuzz_target;
use tailgate::pack::channel;
use tailgate::pack::sig_block::SigningBlock;
use tailgate::pack::zip::read_layout;

// Whole archives: layout, signing block and channel reading never panic; a block that
// parses re-encodes to one that parses to the same pairs.
fuzz_target!(|data: &[u8]| {
    if let Ok(b) = SigningBlock::parse(data) {
        let again = SigningBlock::parse(&b.encode()).expect("re-encoded block parses");
        let strip = |p: &SigningBlock| p.pairs.iter().filter(|(i, _)| *i != 0x4272_6577).cloned().collect::<Vec<_>>();
        assert_eq!(strip(&again), strip(&b));
    }
    let layout = read_layout(data.len() as u64, |off, len| {
        let off = off as usize;
        data.get(off..off + len).map(<[u8]>::to_vec).ok_or_else(|| std::io::Error::other("short"))
    });
    if let Ok(l) = layout {
        let _ = channel::read(&l);
        let _ = channel::tail(&l, "fuzz", &[], channel::Scheme::Both);
    }
});
