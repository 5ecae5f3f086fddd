//! Sans-IO reading of the parts of an APK that `pack` rewrites: the End of Central Directory
//! record, the central directory, and the APK Signing Block in front of it. Reads go through
//! a caller-supplied `read_at`, and every offset and size from the file is checked before it
//! is used: nothing here trusts the archive.

use std::fmt;

pub const EOCD_SIG: u32 = 0x0605_4b50;
pub const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
pub const BLOCK_MAGIC: &[u8; 16] = b"APK Sig Block 42";
/// Sanity caps: a signing block or central directory beyond these is refused.
pub const MAX_BLOCK: u64 = 64 << 20;
pub const MAX_CD: u64 = 256 << 20;

/// A precise reason an archive cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApkError(pub String);

impl fmt::Display for ApkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApkError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ApkError> {
    Err(ApkError(msg.into()))
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The archive's tail structures, located and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub file_len: u64,
    /// Offset of the EOCD record.
    pub eocd_offset: u64,
    /// The EOCD record with its comment, as in the file.
    pub eocd: Vec<u8>,
    pub cd_offset: u64,
    pub cd: Vec<u8>,
    /// `(offset, bytes)` of the APK Signing Block, when the APK has one (v2+).
    pub block: Option<(u64, Vec<u8>)>,
}

impl Layout {
    /// Where the shared head ends: the signing block, or the central directory (v1-only).
    pub fn split(&self) -> u64 {
        self.block.as_ref().map_or(self.cd_offset, |(at, _)| *at)
    }

    pub fn comment(&self) -> &[u8] {
        &self.eocd[EOCD_LEN..]
    }
}

/// Locates and checks EOCD, central directory and signing block. `read_at(offset, len)`
/// must return exactly `len` bytes at `offset`.
pub fn read_layout(
    file_len: u64,
    mut read_at: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> Result<Layout, ApkError> {
    let mut read = |off: u64, len: u64| -> Result<Vec<u8>, ApkError> {
        let n = usize::try_from(len).map_err(|_| ApkError("region too large".into()))?;
        read_at(off, n).map_err(|e| ApkError(format!("read at {off}: {e}")))
    };
    if file_len < EOCD_LEN as u64 {
        return err(format!(
            "not a ZIP archive: {file_len} bytes is shorter than an EOCD record"
        ));
    }
    let window = file_len.min(EOCD_LEN as u64 + 0xffff);
    let tail_start = file_len - window;
    let tail = read(tail_start, window)?;
    // The EOCD is the last record whose comment length reaches exactly to the end of file.
    let found = (0..=tail.len() - EOCD_LEN).rev().find(|&i| {
        u32_at(&tail, i) == EOCD_SIG && i + EOCD_LEN + u16_at(&tail, i + 20) as usize == tail.len()
    });
    let Some(i) = found else {
        return err("not a ZIP archive: no End of Central Directory record found");
    };
    let eocd = tail[i..].to_vec();
    let eocd_offset = tail_start + i as u64;
    if u16_at(&eocd, 4) != 0 || u16_at(&eocd, 6) != 0 || u16_at(&eocd, 8) != u16_at(&eocd, 10) {
        return err("multi-disk ZIP archives are not supported");
    }
    let cd_size = u64::from(u32_at(&eocd, 12));
    let cd_offset = u64::from(u32_at(&eocd, 16));
    if u16_at(&eocd, 10) == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        return err("ZIP64 archives are not supported");
    }
    if eocd_offset >= 20 {
        let loc = read(eocd_offset - 20, 4)?;
        if u32_at(&loc, 0) == ZIP64_LOCATOR_SIG {
            return err("ZIP64 archives are not supported (ZIP64 EOCD locator found)");
        }
    }
    if cd_offset.checked_add(cd_size) != Some(eocd_offset) {
        return err(format!(
            "central directory [{cd_offset}, {}) does not end where the EOCD record starts ({eocd_offset})",
            cd_offset.saturating_add(cd_size)
        ));
    }
    if cd_size > MAX_CD {
        return err(format!(
            "central directory of {cd_size} bytes is larger than {MAX_CD}"
        ));
    }
    let cd = read(cd_offset, cd_size)?;
    // A central directory too short for one entry's signature is as wrong as a bad one
    // (found by the signing_block fuzz target: a 2-byte directory).
    if cd_size > 0 && (cd.len() < 4 || u32_at(&cd, 0) != 0x0201_4b50) {
        return err(format!("no central directory entry at offset {cd_offset}"));
    }
    let block = read_block(cd_offset, &mut read)?;
    Ok(Layout {
        file_len,
        eocd_offset,
        eocd,
        cd_offset,
        cd,
        block,
    })
}

/// The APK Signing Block ends right before the central directory:
/// `[u64 size][pairs][u64 size][magic]`, where size counts everything after the first field.
fn read_block(
    cd_offset: u64,
    read: &mut impl FnMut(u64, u64) -> Result<Vec<u8>, ApkError>,
) -> Result<Option<(u64, Vec<u8>)>, ApkError> {
    if cd_offset < 32 {
        return Ok(None);
    }
    let footer = read(cd_offset - 24, 24)?;
    if &footer[8..24] != BLOCK_MAGIC {
        return Ok(None);
    }
    let size = u64_at(&footer, 0);
    if !(24..=MAX_BLOCK).contains(&size) {
        return err(format!(
            "APK Signing Block size {size} in the footer is out of range"
        ));
    }
    let Some(start) = cd_offset.checked_sub(size + 8) else {
        return err(format!(
            "APK Signing Block of {size} bytes starts before the file"
        ));
    };
    let bytes = read(start, size + 8)?;
    if u64_at(&bytes, 0) != size {
        return err(format!(
            "APK Signing Block size {} in the header does not match {size} in the footer",
            u64_at(&bytes, 0)
        ));
    }
    Ok(Some((start, bytes)))
}

/// The EOCD record with its central-directory offset and comment replaced.
pub fn eocd_with(eocd: &[u8], cd_offset: u64, comment: &[u8]) -> Result<Vec<u8>, ApkError> {
    let offset = u32::try_from(cd_offset)
        .ok()
        .filter(|o| *o != u32::MAX)
        .ok_or_else(|| ApkError(format!("central directory offset {cd_offset} needs ZIP64")))?;
    let len = u16::try_from(comment.len()).map_err(|_| {
        ApkError(format!(
            "ZIP comment of {} bytes is too long",
            comment.len()
        ))
    })?;
    let mut out = eocd[..EOCD_LEN].to_vec();
    out[16..20].copy_from_slice(&offset.to_le_bytes());
    out[20..22].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(comment);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal archive: one stored entry, optionally a signing block, and a comment.
    pub(crate) fn archive(block: Option<&[u8]>, comment: &[u8]) -> Vec<u8> {
        let name = b"a.txt";
        let data = b"hello";
        let mut f = Vec::new();
        // local file header
        f.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        f.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[0; 4]); // crc (unchecked here)
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(name.len() as u16).to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(name);
        f.extend_from_slice(data);
        if let Some(b) = block {
            f.extend_from_slice(b);
        }
        let cd_offset = f.len() as u32;
        let mut cd = Vec::new();
        cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        cd.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        cd.extend_from_slice(&[0; 4]);
        cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 12]);
        cd.extend_from_slice(&0u32.to_le_bytes()); // local header offset
        cd.extend_from_slice(name);
        f.extend_from_slice(&cd);
        f.extend_from_slice(&EOCD_SIG.to_le_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        f.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        f.extend_from_slice(&cd_offset.to_le_bytes());
        f.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        f.extend_from_slice(comment);
        f
    }

    pub(crate) fn layout_of(f: &[u8]) -> Result<Layout, ApkError> {
        read_layout(f.len() as u64, |off, len| {
            let off = off as usize;
            f.get(off..off + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| std::io::Error::other("short read"))
        })
    }

    #[test]
    fn v1_archive_splits_at_the_central_directory() {
        let f = archive(None, b"note");
        let l = layout_of(&f).unwrap();
        assert!(l.block.is_none());
        assert_eq!(l.split(), l.cd_offset);
        assert_eq!(l.comment(), b"note");
        assert_eq!(l.eocd_offset + l.eocd.len() as u64, f.len() as u64);
    }

    #[test]
    fn eocd_with_moves_the_offset_and_comment() {
        let f = archive(None, b"");
        let l = layout_of(&f).unwrap();
        let e = eocd_with(&l.eocd, 1234, b"xyz").unwrap();
        assert_eq!(u32_at(&e, 16), 1234);
        assert_eq!(u16_at(&e, 20), 3);
        assert_eq!(&e[22..], b"xyz");
        assert!(eocd_with(&l.eocd, 1 << 32, b"").is_err());
        assert!(eocd_with(&l.eocd, 0, &vec![0; 70_000]).is_err());
    }

    /// An EOCD claiming a 2-byte central directory right before it.
    fn two_byte_cd() -> Vec<u8> {
        let mut f = vec![0x50, 0x4b];
        f.extend_from_slice(&EOCD_SIG.to_le_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&2u32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f
    }

    #[test]
    fn malformed_archives_say_what_is_wrong() {
        let good = archive(None, b"");
        let mut bad_offset = good.clone();
        let n = bad_offset.len();
        bad_offset[n - 6..n - 2].copy_from_slice(&5u32.to_le_bytes());
        let mut zip64 = good.clone();
        zip64[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut multi = good.clone();
        multi[n - 18] = 1;
        let mut long_comment = good.clone();
        long_comment[n - 2] = 9;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"short".to_vec(), "shorter than an EOCD"),
            (vec![0; 100], "no End of Central Directory"),
            (bad_offset, "does not end where the EOCD record starts"),
            (zip64, "ZIP64"),
            (multi, "multi-disk"),
            (long_comment, "no End of Central Directory"),
            (
                good[..good.len() - 1].to_vec(),
                "no End of Central Directory",
            ),
            (two_byte_cd(), "no central directory entry"),
        ];
        for (f, want) in cases {
            let e = layout_of(&f).unwrap_err();
            assert!(e.0.contains(want), "{e} lacks {want:?}");
        }
    }
}
