//! The APK Signing Block: `[u64 size][pairs][u64 size]["APK Sig Block 42"]`, each pair
//! `[u64 len][u32 id][value]`. Parsing checks every length against the block; encoding keeps
//! the pairs in order and regenerates the verity padding pair so that a block whose size was
//! a multiple of 4096 stays one (Android 9+ rejects it otherwise).

use super::zip::{u32_at, u64_at, ApkError, BLOCK_MAGIC};

pub const V2_ID: u32 = 0x7109_871a;
pub const V3_ID: u32 = 0xf053_68c0;
pub const WALLE_ID: u32 = 0x7177_7777;
pub const VASDOLLY_ID: u32 = 0x8811_55ff;
pub const PADDING_ID: u32 = 0x4272_6577;
const ALIGN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningBlock {
    /// `(id, value)` in file order.
    pub pairs: Vec<(u32, Vec<u8>)>,
    /// The whole block's size (with its first size field) was a multiple of 4096.
    pub aligned: bool,
}

impl SigningBlock {
    /// Parses a whole block as it lies in the file.
    pub fn parse(b: &[u8]) -> Result<SigningBlock, ApkError> {
        let bad = |m: String| Err(ApkError(format!("APK Signing Block: {m}")));
        if b.len() < 32 || &b[b.len() - 16..] != BLOCK_MAGIC {
            return bad("missing magic".into());
        }
        let size = u64_at(b, 0);
        if size != (b.len() - 8) as u64 || u64_at(b, b.len() - 24) != size {
            return bad(format!("size fields do not match its length {}", b.len()));
        }
        let end = b.len() - 24;
        let mut at = 8;
        let mut pairs = Vec::new();
        while at < end {
            if end - at < 12 {
                return bad(format!("truncated pair at offset {at}"));
            }
            let len = u64_at(b, at);
            let Some(next) = usize::try_from(len)
                .ok()
                .and_then(|l| at.checked_add(8)?.checked_add(l))
            else {
                return bad(format!("pair length {len} at offset {at} overflows"));
            };
            if len < 4 || next > end {
                return bad(format!(
                    "pair length {len} at offset {at} overflows the block"
                ));
            }
            pairs.push((u32_at(b, at + 8), b[at + 12..next].to_vec()));
            at = next;
        }
        Ok(SigningBlock {
            pairs,
            aligned: b.len().is_multiple_of(ALIGN),
        })
    }

    pub fn value(&self, id: u32) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_slice())
    }

    /// The same block with `extra` pairs replacing any of the same ids, added after the
    /// existing ones; the padding pair is dropped and regenerated last when aligned.
    pub fn with_pairs(&self, extra: &[(u32, Vec<u8>)]) -> SigningBlock {
        let mut pairs: Vec<(u32, Vec<u8>)> = self
            .pairs
            .iter()
            .filter(|(id, _)| *id != PADDING_ID && !extra.iter().any(|(e, _)| e == id))
            .cloned()
            .collect();
        pairs.extend(extra.iter().cloned());
        SigningBlock {
            pairs,
            aligned: self.aligned,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let pairs_len: usize = self.pairs.iter().map(|(_, v)| 12 + v.len()).sum();
        // 8 (leading size) + pairs + 8 (trailing size) + 16 (magic)
        let mut total = 8 + pairs_len + 24;
        let mut padding = None;
        if self.aligned && !self.pairs.iter().any(|(id, _)| *id == PADDING_ID) {
            let mut need = (ALIGN - total % ALIGN) % ALIGN;
            if need != 0 && need < 12 {
                need += ALIGN;
            }
            if need >= 12 {
                padding = Some(need - 12);
                total += need;
            }
        }
        let size = (total - 8) as u64;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&size.to_le_bytes());
        let mut put = |id: u32, v: &[u8]| {
            out.extend_from_slice(&((v.len() + 4) as u64).to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(v);
        };
        for (id, v) in &self.pairs {
            put(*id, v);
        }
        if let Some(n) = padding {
            put(PADDING_ID, &vec![0u8; n]);
        }
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(BLOCK_MAGIC);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn block(pairs: &[(u32, &[u8])], aligned: bool) -> Vec<u8> {
        SigningBlock {
            pairs: pairs.iter().map(|(i, v)| (*i, v.to_vec())).collect(),
            aligned,
        }
        .encode()
    }

    #[test]
    fn encode_then_parse_round_trips_with_padding_last() {
        let b = block(&[(V2_ID, b"v2-sig"), (V3_ID, b"v3")], true);
        assert_eq!(b.len() % 4096, 0);
        let p = SigningBlock::parse(&b).unwrap();
        assert_eq!(p.pairs[0], (V2_ID, b"v2-sig".to_vec()));
        assert_eq!(p.pairs[1], (V3_ID, b"v3".to_vec()));
        assert_eq!(p.pairs[2].0, PADDING_ID);
        assert!(p.aligned);
    }

    #[test]
    fn adding_a_pair_keeps_order_and_alignment() {
        let orig =
            SigningBlock::parse(&block(&[(V2_ID, &[1; 3000]), (V3_ID, &[2; 1000])], true)).unwrap();
        assert_eq!(orig.encode().len(), 4096);
        let ch = orig.with_pairs(&[(WALLE_ID, b"{\"channel\":\"x\"}".to_vec())]);
        let enc = ch.encode();
        assert_eq!(enc.len() % 4096, 0, "still a multiple of 4096");
        let p = SigningBlock::parse(&enc).unwrap();
        let ids: Vec<u32> = p.pairs.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![V2_ID, V3_ID, WALLE_ID, PADDING_ID]);
        // Replacing a channel does not stack pairs.
        let again = p.with_pairs(&[(WALLE_ID, b"{\"channel\":\"y\"}".to_vec())]);
        assert_eq!(
            again.pairs.iter().filter(|(i, _)| *i == WALLE_ID).count(),
            1
        );
    }

    #[test]
    fn padding_smaller_than_a_pair_header_takes_another_page() {
        // pairs that leave exactly 8 bytes to the page: a padding pair needs 12.
        let v = vec![0u8; 4096 - 8 - 24 - 12 - 8];
        let b = SigningBlock {
            pairs: vec![(V2_ID, v)],
            aligned: true,
        }
        .encode();
        assert_eq!(b.len(), 8192);
        assert!(SigningBlock::parse(&b).is_ok());
    }

    #[test]
    fn unaligned_blocks_stay_unpadded() {
        let b = block(&[(V2_ID, b"abc")], false);
        assert_eq!(b.len(), 8 + 15 + 24);
        assert!(!SigningBlock::parse(&b).unwrap().aligned);
    }

    #[test]
    fn malformed_blocks_are_refused_precisely() {
        let good = block(&[(V2_ID, b"abc")], false);
        let mut wrong_magic = good.clone();
        let n = wrong_magic.len();
        wrong_magic[n - 1] = b'x';
        let mut huge_pair = good.clone();
        huge_pair[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut past_end = good.clone();
        past_end[8..16].copy_from_slice(&100u64.to_le_bytes());
        let mut sizes = good.clone();
        sizes[0] = 1;
        let cases = [
            (wrong_magic, "missing magic"),
            (huge_pair, "overflows"),
            (past_end, "overflows the block"),
            (sizes, "size fields do not match"),
            (good[..20].to_vec(), "missing magic"),
        ];
        for (b, want) in cases {
            let e = SigningBlock::parse(&b).unwrap_err();
            assert!(e.0.contains(want), "{e} lacks {want:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..300)) {
                let _ = SigningBlock::parse(&raw);
            }

            #[test]
            fn any_pairs_round_trip(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 0..4), aligned in any::<bool>()) {
                let pairs: Vec<(u32, Vec<u8>)> = values.into_iter().enumerate().map(|(i, v)| (i as u32 + 1, v)).collect();
                let enc = SigningBlock { pairs: pairs.clone(), aligned }.encode();
                if aligned { prop_assert_eq!(enc.len() % 4096, 0); }
                let p = SigningBlock::parse(&enc).unwrap();
                let kept: Vec<(u32, Vec<u8>)> = p.pairs.into_iter().filter(|(i, _)| *i != PADDING_ID).collect();
                prop_assert_eq!(kept, pairs);
            }
        }
    }
}
