//! `tailgate pack` and `tailgate channel`: write the storage layout of SPEC §7 from one
//! signed APK (the base uploaded once, one small tail per channel, the manifest last), and
//! read a channel back from a whole APK. Archive surgery is sans-IO in `zip`, `sig_block`
//! and `channel`; `store` does the writing.

pub mod channel;
pub mod sig_block;
mod store;
pub mod zip;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::conf::{Config, Env, ProcessEnv, S3};
use crate::object::manifest::MAX_MANIFEST_BYTES;
use crate::upstream::s3;
pub use channel::Scheme;
use store::Store;

/// Where the layout goes.
pub enum Dest {
    /// `s3://bucket/<package>`, with S3 found from `conf` (a conf file and block name) or the
    /// AWS environment variables.
    S3 {
        bucket: String,
        package: String,
        conf: Option<(PathBuf, Option<String>)>,
    },
    /// A local directory; keys are laid out below it as in the bucket.
    Dir { dir: PathBuf, package: String },
}

pub struct PackArgs {
    pub apk: PathBuf,
    pub channels: PathBuf,
    pub dest: Dest,
    pub scheme: Scheme,
    pub extras: Vec<(String, String)>,
}

/// Parses `s3://bucket/package/path`.
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("--dest {url:?}: expecting s3://bucket/<package>"))?;
    let (bucket, package) = rest
        .split_once('/')
        .ok_or_else(|| format!("--dest {url:?}: no package after the bucket"))?;
    let package = package.trim_matches('/');
    if bucket.is_empty() || package.is_empty() {
        return Err(format!("--dest {url:?}: expecting s3://bucket/<package>"));
    }
    Ok((bucket.to_string(), package.to_string()))
}

/// The channel list: one per line, `#` comments and blank lines ignored, duplicates refused.
/// A channel becomes a key and a URL segment, so it must be a plain name.
pub fn parse_channels(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let ok = line.len() <= 128
            && line
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '~');
        if !ok {
            return Err(format!(
                "channels:{}: invalid channel {line:?} (letters, digits, '-', '_' and '~', at most 128 bytes)",
                i + 1
            ));
        }
        if out.iter().any(|c| c == line) {
            return Err(format!("channels:{}: duplicate channel {line:?}", i + 1));
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        return Err("channels: no channel listed".into());
    }
    Ok(out)
}

fn read_apk_layout(path: &Path) -> Result<zip::Layout, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    zip::read_layout(len, |off, n| {
        f.seek(SeekFrom::Start(off))?;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)?;
        Ok(buf)
    })
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// `tailgate channel FILE.apk`: the channel, then Walle extras as `key=value` lines.
pub fn read_channel(path: &Path) -> Result<Option<channel::ChannelInfo>, String> {
    let layout = read_apk_layout(path)?;
    channel::read(&layout).map_err(|e| format!("{}: {e}", path.display()))
}

fn progress(msg: &str) {
    eprintln!("pack: {msg}");
}

pub fn pack(args: &PackArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.channels)
        .map_err(|e| format!("{}: {e}", args.channels.display()))?;
    let channels = parse_channels(&text)
        .map_err(|e| e.replacen("channels", &args.channels.display().to_string(), 1))?;
    let layout = read_apk_layout(&args.apk)?;
    let split = layout.split();
    let (store, package) = open_store(&args.dest)?;
    progress(&format!(
        "{}: {} bytes, split at {split} ({}), {} channels → {}",
        args.apk.display(),
        layout.file_len,
        if layout.block.is_some() {
            "APK Signing Block"
        } else {
            "central directory, v1-only"
        },
        channels.len(),
        store.describe()
    ));

    // 1. The base, once: the whole signed APK; the head is its bytes [0, split).
    let (mut md5_all, mut md5_head, mut sha_head) = (Md5::new(), Md5::new(), Sha256::new());
    let mut seen: u64 = 0;
    store::for_each_chunk(&args.apk, layout.file_len, |chunk| {
        md5_all.update(chunk);
        let head_part = usize::try_from(split.saturating_sub(seen))
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        sha_head.update(&chunk[..head_part]);
        md5_head.update(&chunk[..head_part]);
        seen += chunk.len() as u64;
    })
    .map_err(|e| format!("{}: {e}", args.apk.display()))?;
    let base_md5_etag = format!("\"{}\"", s3::hex(&md5_all.finalize()));
    let base_key = format!("{package}/base.apk");
    let base_etag = match store.head(&base_key)? {
        Some(s) if s.etag == base_md5_etag && s.length == layout.file_len => {
            progress(&format!(
                "{base_key}: already stored with the same ETag, not uploaded again"
            ));
            s.etag
        }
        _ => {
            progress(&format!("{base_key}: uploading {} bytes", layout.file_len));
            let mut f =
                File::open(&args.apk).map_err(|e| format!("{}: {e}", args.apk.display()))?;
            store.put(&base_key, &mut f, layout.file_len, &base_md5_etag)?
        }
    };
    let head = serde_json::json!({
        "key": base_key, "offset": 0, "length": split, "etag": base_etag, "sha256": s3::hex(&sha_head.finalize()),
    });

    // 2. One tail per channel.
    let mut tails: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (i, ch) in channels.iter().enumerate() {
        let tail = channel::tail(&layout, ch, &args.extras, args.scheme)
            .map_err(|e| format!("{}: {e}", args.apk.display()))?;
        let key = format!("{package}/tails/{ch}");
        let md5_etag = format!("\"{}\"", s3::hex(&Md5::digest(&tail)));
        let etag = store.put(&key, &mut Cursor::new(&tail), tail.len() as u64, &md5_etag)?;
        tails.insert(
            ch.clone(),
            serde_json::json!({
                "key": key, "offset": 0, "length": tail.len(), "etag": etag, "sha256": s3::hex(&Sha256::digest(&tail)),
            }),
        );
        if (i + 1) % 100 == 0 || i + 1 == channels.len() {
            progress(&format!(
                "tails: {} of {} written ({} bytes each)",
                i + 1,
                channels.len(),
                tail.len()
            ));
        }
    }

    // 3. The manifest last, keeping the tails of an earlier run over the same base.
    let manifest_key = format!("{package}/manifest.json");
    if let Some(old) = store.get(&manifest_key, MAX_MANIFEST_BYTES)? {
        if let Ok(old) = serde_json::from_slice::<serde_json::Value>(&old) {
            let same_head = ["key", "length", "etag"]
                .iter()
                .all(|f| old["head"][f] == head[f]);
            if let (true, Some(old_tails)) = (same_head, old["tails"].as_object()) {
                let mut kept = 0;
                for (name, t) in old_tails {
                    if !tails.contains_key(name) {
                        tails.insert(name.clone(), t.clone());
                        kept += 1;
                    }
                }
                if kept > 0 {
                    progress(&format!(
                        "{manifest_key}: kept {kept} channels of the earlier manifest"
                    ));
                }
            }
        }
    }
    let manifest = serde_json::json!({
        "format": "tailgate/1",
        "content_type": "application/vnd.android.package-archive",
        "last_modified": rfc3339_now(),
        "head": head,
        "tails": tails,
    });
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let md5_etag = format!("\"{}\"", s3::hex(&Md5::digest(&bytes)));
    store.put(
        &manifest_key,
        &mut Cursor::new(&bytes),
        bytes.len() as u64,
        &md5_etag,
    )?;
    progress(&format!(
        "{manifest_key}: written, {} channels",
        tails.len()
    ));
    Ok(())
}

fn open_store(dest: &Dest) -> Result<(Store, String), String> {
    match dest {
        Dest::Dir { dir, package } => Ok((Store::Dir(dir.clone()), package.clone())),
        Dest::S3 {
            bucket,
            package,
            conf,
        } => {
            let mut s3 = match conf {
                Some((path, name)) => s3_from_conf(path, name.as_deref())?,
                None => s3_from_env(&ProcessEnv)?,
            };
            s3.bucket = bucket.clone();
            Ok((Store::S3(Box::new(s3::Signer::new(&s3))), package.clone()))
        }
    }
}

fn s3_from_conf(path: &Path, name: Option<&str>) -> Result<S3, String> {
    let conf = Config::load(path, &ProcessEnv).map_err(|e| e.to_string())?;
    let blocks = conf.http.s3;
    match name {
        Some(n) => blocks
            .into_iter()
            .find(|b| b.name == n)
            .ok_or_else(|| format!("{}: no s3 block named {n:?}", path.display())),
        None if blocks.len() == 1 => blocks
            .into_iter()
            .next()
            .ok_or_else(|| "no s3 block".into()),
        None => Err(format!(
            "{}: {} s3 blocks; name one with --s3",
            path.display(),
            blocks.len()
        )),
    }
}

/// S3 the way AWS tools find it: an `s3` block of a bucket alone, which takes the rest from
/// the environment as `serve` does (so the same defaults and checks apply).
fn s3_from_env(env: &dyn Env) -> Result<S3, String> {
    for n in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if env.var(n).is_none_or(|v| v.is_empty()) {
            return Err(format!("{n} is not set (or use -c FILE)"));
        }
    }
    let src = "http { listen 127.0.0.1:0; s3 env { bucket placeholder; } }";
    let conf = Config::parse("environment", src, env).map_err(|e| e.msg)?;
    conf.http
        .s3
        .into_iter()
        .next()
        .ok_or_else(|| "no s3 settings".into())
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::http::date::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lists_skip_comments_and_refuse_bad_names() {
        assert_eq!(
            parse_channels("# c\nhuawei\n\n xiaomi # store\nc_1~x\n").unwrap(),
            vec!["huawei", "xiaomi", "c_1~x"]
        );
        assert!(parse_channels("a\na\n").unwrap_err().contains("duplicate"));
        assert!(parse_channels("a.b\n")
            .unwrap_err()
            .contains("channels:1: invalid"));
        assert!(parse_channels("a/b\n").is_err());
        assert!(parse_channels("# none\n").is_err());
    }

    #[test]
    fn s3_urls_and_env() {
        assert_eq!(
            parse_s3_url("s3://apks/apps/foo/1.2.3/").unwrap(),
            ("apks".into(), "apps/foo/1.2.3".into())
        );
        assert!(parse_s3_url("s3://apks").is_err());
        assert!(parse_s3_url("http://x/y").is_err());
        struct E;
        impl Env for E {
            fn var(&self, n: &str) -> Option<String> {
                match n {
                    "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".into()),
                    "AWS_ACCESS_KEY_ID" => Some("AK".into()),
                    "AWS_SECRET_ACCESS_KEY" => Some("SK".into()),
                    _ => None,
                }
            }
        }
        let s3 = s3_from_env(&E).unwrap();
        assert_eq!(
            (
                s3.access_key_id.as_str(),
                s3.endpoint.port,
                s3.region.as_str()
            ),
            ("AK", 9000, "us-east-1")
        );
        struct NoKeys;
        impl Env for NoKeys {
            fn var(&self, n: &str) -> Option<String> {
                (n == "AWS_ENDPOINT_URL").then(|| "http://127.0.0.1:9000".into())
            }
        }
        assert_eq!(
            s3_from_env(&NoKeys).unwrap_err(),
            "AWS_ACCESS_KEY_ID is not set (or use -c FILE)"
        );
    }

    #[test]
    fn rfc3339_now_parses_back() {
        let now = rfc3339_now();
        assert!(
            crate::object::manifest::parse_rfc3339(&now).is_some(),
            "{now}"
        );
    }
}
