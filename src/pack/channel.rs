//! Channel ids: writing them into a tail (Walle's `0x71777777` JSON pair and VasDolly's
//! `0x881155ff` raw UTF-8 pair in the signing block; VasDolly's ZIP-comment scheme for
//! v1-only APKs) and reading them back from a whole APK. Pure functions of [`Layout`].

use super::sig_block::{SigningBlock, VASDOLLY_ID, WALLE_ID};
use super::zip::{eocd_with, ApkError, Layout};

/// VasDolly's v1 marker at the very end of the ZIP comment.
const V1_MAGIC: &[u8; 8] = b"ltlovezh";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Walle,
    VasDolly,
    Both,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub channel: String,
    /// Walle extras, in the JSON's order.
    pub extras: Vec<(String, String)>,
}

/// The tail for `channel`: signing block (with the channel pairs) ‖ central directory ‖
/// EOCD (central-directory offset moved), or for a v1-only APK the central directory and an
/// EOCD whose comment carries the channel.
pub fn tail(
    layout: &Layout,
    channel: &str,
    extras: &[(String, String)],
    scheme: Scheme,
) -> Result<Vec<u8>, ApkError> {
    let split = layout.split();
    let mut out = Vec::new();
    let eocd = match &layout.block {
        Some((_, block)) => {
            let mut pairs = Vec::new();
            if matches!(scheme, Scheme::Walle | Scheme::Both) {
                pairs.push((WALLE_ID, walle_json(channel, extras)));
            }
            if matches!(scheme, Scheme::VasDolly | Scheme::Both) {
                pairs.push((VASDOLLY_ID, channel.as_bytes().to_vec()));
            }
            let new_block = SigningBlock::parse(block)?.with_pairs(&pairs).encode();
            out.extend_from_slice(&new_block);
            eocd_with(
                &layout.eocd,
                split + new_block.len() as u64,
                layout.comment(),
            )?
        }
        None => {
            let mut comment = strip_v1(layout.comment()).to_vec();
            let len = u16::try_from(channel.len())
                .map_err(|_| ApkError(format!("channel of {} bytes is too long", channel.len())))?;
            comment.extend_from_slice(channel.as_bytes());
            comment.extend_from_slice(&len.to_le_bytes());
            comment.extend_from_slice(V1_MAGIC);
            eocd_with(&layout.eocd, layout.cd_offset, &comment)?
        }
    };
    out.extend_from_slice(&layout.cd);
    out.extend_from_slice(&eocd);
    Ok(out)
}

/// Reads the channel of a whole APK: Walle first, then VasDolly's pair, then the v1 comment.
pub fn read(layout: &Layout) -> Result<Option<ChannelInfo>, ApkError> {
    if let Some((_, bytes)) = &layout.block {
        let block = SigningBlock::parse(bytes)?;
        if let Some(v) = block.value(WALLE_ID) {
            return parse_walle(v).map(Some);
        }
        if let Some(v) = block.value(VASDOLLY_ID) {
            let channel = String::from_utf8(v.to_vec())
                .map_err(|_| ApkError("VasDolly channel is not UTF-8".into()))?;
            return Ok(Some(ChannelInfo {
                channel,
                extras: Vec::new(),
            }));
        }
    }
    Ok(v1_channel(layout.comment())?.map(|channel| ChannelInfo {
        channel,
        extras: Vec::new(),
    }))
}

fn walle_json(channel: &str, extras: &[(String, String)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("channel".into(), serde_json::Value::String(channel.into()));
    for (k, v) in extras {
        if k != "channel" {
            map.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
    }
    serde_json::Value::Object(map).to_string().into_bytes()
}

fn parse_walle(v: &[u8]) -> Result<ChannelInfo, ApkError> {
    let value: serde_json::Value = serde_json::from_slice(v)
        .map_err(|e| ApkError(format!("Walle payload is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApkError("Walle payload is not a JSON object".into()));
    };
    let Some(serde_json::Value::String(channel)) = map.get("channel") else {
        return Err(ApkError("Walle payload has no \"channel\" string".into()));
    };
    let extras = map
        .iter()
        .filter(|(k, _)| *k != "channel")
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect();
    Ok(ChannelInfo {
        channel: channel.clone(),
        extras,
    })
}

/// `[channel][u16 LE length]["ltlovezh"]` at the end of the comment.
fn v1_channel(comment: &[u8]) -> Result<Option<String>, ApkError> {
    let Some(rest) = comment.strip_suffix(V1_MAGIC) else {
        return Ok(None);
    };
    if rest.len() < 2 {
        return Err(ApkError("VasDolly comment marker without a length".into()));
    }
    let len = u16::from_le_bytes([rest[rest.len() - 2], rest[rest.len() - 1]]) as usize;
    let body = &rest[..rest.len() - 2];
    if len > body.len() {
        return Err(ApkError(format!(
            "VasDolly comment channel length {len} exceeds the comment"
        )));
    }
    String::from_utf8(body[body.len() - len..].to_vec())
        .map(Some)
        .map_err(|_| ApkError("VasDolly comment channel is not UTF-8".into()))
}

/// The comment without a previous VasDolly channel, so re-channelling does not stack.
fn strip_v1(comment: &[u8]) -> &[u8] {
    match comment.strip_suffix(V1_MAGIC) {
        Some(rest) if rest.len() >= 2 => {
            let len = u16::from_le_bytes([rest[rest.len() - 2], rest[rest.len() - 1]]) as usize;
            let body = &rest[..rest.len() - 2];
            if len <= body.len() {
                &body[..body.len() - len]
            } else {
                comment
            }
        }
        _ => comment,
    }
}

#[cfg(test)]
mod tests {
    use super::super::sig_block::tests::block;
    use super::super::sig_block::{PADDING_ID, V2_ID};
    use super::super::zip::tests::{archive, layout_of};
    use super::*;

    /// Stitches head ‖ tail and parses the result again.
    fn stitched(orig: &[u8], l: &Layout, t: &[u8]) -> (Vec<u8>, Layout) {
        let mut f = orig[..l.split() as usize].to_vec();
        f.extend_from_slice(t);
        let l2 = layout_of(&f).unwrap();
        (f, l2)
    }

    #[test]
    fn walle_and_vasdolly_pairs_read_back_from_the_stitched_apk() {
        let orig = archive(Some(&block(&[(V2_ID, &[7; 100])], true)), b"");
        let l = layout_of(&orig).unwrap();
        let extras = vec![("build".to_string(), "42".to_string())];
        for scheme in [Scheme::Walle, Scheme::VasDolly, Scheme::Both] {
            let t = tail(&l, "huawei", &extras, scheme).unwrap();
            let (f, l2) = stitched(&orig, &l, &t);
            assert_eq!(
                f.len(),
                orig.len(),
                "same size: the padding absorbed the pair"
            );
            assert_eq!(l2.split(), l.split(), "the head is shared");
            let info = read(&l2).unwrap().unwrap();
            assert_eq!(info.channel, "huawei");
            let want_extras = if scheme == Scheme::VasDolly {
                vec![]
            } else {
                extras.clone()
            };
            assert_eq!(info.extras, want_extras);
            let ids: Vec<u32> = SigningBlock::parse(&l2.block.unwrap().1)
                .unwrap()
                .pairs
                .iter()
                .map(|p| p.0)
                .collect();
            assert_eq!(ids.first(), Some(&V2_ID));
            assert_eq!(ids.last(), Some(&PADDING_ID));
        }
    }

    #[test]
    fn v1_only_apks_carry_the_channel_in_the_comment() {
        let orig = archive(None, b"keep me");
        let l = layout_of(&orig).unwrap();
        let t = tail(&l, "xiaomi", &[], Scheme::Walle).unwrap();
        let (_, l2) = stitched(&orig, &l, &t);
        assert_eq!(read(&l2).unwrap().unwrap().channel, "xiaomi");
        assert!(l2.comment().starts_with(b"keep me"));
        // Re-channelling replaces rather than stacks.
        let t2 = tail(&l2, "oppo", &[], Scheme::Walle).unwrap();
        let (_, l3) = stitched(&stitched(&orig, &l, &t).0, &l2, &t2);
        assert_eq!(read(&l3).unwrap().unwrap().channel, "oppo");
        assert_eq!(l3.comment(), b"keep meoppo\x04\x00ltlovezh");
    }

    #[test]
    fn no_channel_reads_as_none_and_bad_payloads_as_errors() {
        let plain = archive(Some(&block(&[(V2_ID, b"x")], true)), b"");
        assert_eq!(read(&layout_of(&plain).unwrap()).unwrap(), None);
        let bad = archive(
            Some(&block(&[(V2_ID, b"x"), (WALLE_ID, b"not json")], true)),
            b"",
        );
        assert!(read(&layout_of(&bad).unwrap())
            .unwrap_err()
            .0
            .contains("not JSON"));
        let no_channel = archive(Some(&block(&[(WALLE_ID, b"{\"a\":\"b\"}")], false)), b"");
        assert!(read(&layout_of(&no_channel).unwrap())
            .unwrap_err()
            .0
            .contains("no \"channel\""));
        let bad_v1 = archive(None, b"\xff\x00ltlovezh");
        assert!(read(&layout_of(&bad_v1).unwrap()).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn pack_then_read_returns_any_channel(channel in "\\PC{1,64}", v1 in any::<bool>(), scheme in 0u8..3) {
                let scheme = [Scheme::Walle, Scheme::VasDolly, Scheme::Both][scheme as usize];
                let orig = if v1 { archive(None, b"") } else { archive(Some(&block(&[(V2_ID, b"sig")], true)), b"") };
                let l = layout_of(&orig).unwrap();
                let t = tail(&l, &channel, &[], scheme).unwrap();
                let (_, l2) = stitched(&orig, &l, &t);
                prop_assert_eq!(read(&l2).unwrap().unwrap().channel, channel);
            }
        }
    }
}
