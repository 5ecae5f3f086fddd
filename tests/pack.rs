//! `tailgate pack` and `tailgate channel` end to end: a real APK signed by apksigner
//! (v1+v2+v3), packed into a real s3s-fs, every channel downloaded through a running
//! tailgate, verified by apksigner, compared with a locally assembled file, and its
//! channel read back.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn make_apk(dir: &Path, name: &str, mib: u32, mode: &str) -> PathBuf {
    let out = dir.join(name);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make-apk.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(&out)
        .arg(mib.to_string())
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "make-apk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn tailgate(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tailgate"));
    c.args(args);
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `tailgate pack --apk APK --channels LIST` plus `rest`.
fn pack(apk: &Path, list: &Path, rest: &[&str], env: &[(&str, String)]) -> Output {
    let mut args = vec![
        "pack",
        "--apk",
        apk.to_str().unwrap(),
        "--channels",
        list.to_str().unwrap(),
    ];
    args.extend_from_slice(rest);
    tailgate(&args, env)
}

fn s3_env(s3: &S3, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", AK.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
    ]
}

fn apksigner_verifies(apk: &Path, min_sdk: &str) -> String {
    let o = Command::new("apksigner")
        .args(["verify", "-v", "--min-sdk-version", min_sdk])
        .arg(apk)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "apksigner rejects {}: {}{}",
        apk.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn channel_of(apk: &Path) -> String {
    let o = tailgate(&["channel", apk.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// head ‖ tail from a `--out` layout.
fn assemble(dir: &Path, package: &str, channel: &str) -> Vec<u8> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(package).join("manifest.json")).unwrap())
            .unwrap();
    let len = m["head"]["length"].as_u64().unwrap() as usize;
    let mut f = std::fs::read(dir.join(package).join("base.apk")).unwrap()[..len].to_vec();
    f.extend(std::fs::read(dir.join(package).join("tails").join(channel)).unwrap());
    f
}

#[test]
fn packed_channels_are_served_valid_and_read_back() {
    let work = TempDir::new("pack");
    let apk = make_apk(work.path(), "base.apk", 3, "all");
    let channels: Vec<String> = (0..21).map(|i| format!("ch{i:02}")).collect();
    let list = work.path().join("channels.txt");
    std::fs::write(&list, format!("# stores\n{}\n\n", channels.join("\n"))).unwrap();
    let s3 = S3::start();

    // 1. Pack to S3, and the same layout locally for comparison.
    let o = pack(
        &apk,
        &list,
        &["--dest", "s3://apks/apps/demo/1.0", "--extra", "build=42"],
        &s3_env(&s3, SK),
    );
    assert!(
        o.status.success(),
        "pack: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let local = work.path().join("local");
    let o = pack(
        &apk,
        &list,
        &[
            "--out",
            local.to_str().unwrap(),
            "--package",
            "apps/demo/1.0",
            "--extra",
            "build=42",
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "pack --out: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // 2. Every channel through a running tailgate: exact, valid, and its channel readable.
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    let original_len = std::fs::metadata(&apk).unwrap().len() as usize;
    for ch in &channels {
        let r = tg.get(&format!("/apk/apps/demo/1.0/{ch}.apk"), &[]);
        assert_eq!(r.status, 200, "{ch}");
        assert!(
            r.body == assemble(&local, "apps/demo/1.0", ch),
            "{ch}: differs from the local assembly"
        );
        assert_eq!(
            r.body.len(),
            original_len,
            "{ch}: the padding keeps every channel file the same size"
        );
        let file = work.path().join(format!("{ch}.apk"));
        std::fs::write(&file, &r.body).unwrap();
        let v = apksigner_verifies(&file, "23");
        assert!(
            v.contains("v1 scheme (JAR signing): true")
                && v.contains("v2 scheme (APK Signature Scheme v2): true")
                && v.contains("v3 scheme (APK Signature Scheme v3): true"),
            "{v}"
        );
        assert_eq!(channel_of(&file), format!("{ch}\nbuild=42\n"));
    }

    // 3. Re-running with more channels keeps the earlier ones and does not upload the base again.
    let more = work.path().join("more.txt");
    std::fs::write(&more, "late1\nlate2\n").unwrap();
    let o = pack(
        &apk,
        &more,
        &["--dest", "s3://apks/apps/demo/1.0"],
        &s3_env(&s3, SK),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("not uploaded again") && err.contains("kept 21 channels"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_secs(6)); // past manifest_cache_ttl
    for ch in ["late2", "ch20"] {
        let r = tg.get(&format!("/apk/apps/demo/1.0/{ch}.apk"), &[]);
        assert_eq!(r.status, 200, "{ch}");
        let file = work.path().join(format!("again-{ch}.apk"));
        std::fs::write(&file, &r.body).unwrap();
        apksigner_verifies(&file, "24");
        assert_eq!(channel_of(&file).lines().next(), Some(ch));
    }
}

#[test]
fn vasdolly_and_v1_only_apks() {
    let work = TempDir::new("pack-v1");
    let list = work.path().join("channels.txt");
    std::fs::write(&list, "alpha\nbeta\n").unwrap();
    for (mode, min_sdk, scheme) in [
        ("v1only", "23", "walle"),
        ("all", "24", "vasdolly"),
        ("all", "24", "both"),
    ] {
        let apk = make_apk(work.path(), &format!("{mode}-{scheme}.apk"), 1, mode);
        let out = work.path().join(format!("out-{mode}-{scheme}"));
        let o = pack(
            &apk,
            &list,
            &[
                "--out",
                out.to_str().unwrap(),
                "--package",
                "p",
                "--scheme",
                scheme,
            ],
            &[],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for ch in ["alpha", "beta"] {
            let file = work.path().join(format!("{mode}-{scheme}-{ch}.apk"));
            std::fs::write(&file, assemble(&out, "p", ch)).unwrap();
            apksigner_verifies(&file, min_sdk);
            assert_eq!(channel_of(&file), format!("{ch}\n"), "{mode} {scheme}");
        }
    }
}

#[test]
fn broken_inputs_and_refused_uploads_fail_cleanly() {
    let work = TempDir::new("pack-bad");
    let list = work.path().join("channels.txt");
    std::fs::write(&list, "a\n").unwrap();
    let not_zip = work.path().join("not.apk");
    std::fs::write(&not_zip, vec![7u8; 5000]).unwrap();
    let o = pack(
        &not_zip,
        &list,
        &["--out", "/tmp/unused", "--package", "p"],
        &[],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no End of Central Directory record found"));
    let o = tailgate(&["channel", not_zip.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    // A refused upload leaves no manifest behind.
    let apk = make_apk(work.path(), "base.apk", 1, "all");
    let s3 = S3::start();
    let o = pack(
        &apk,
        &list,
        &["--dest", "s3://apks/p"],
        &s3_env(&s3, "wrong"),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("S3 answered 403"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let tg = Tailgate::start(&conf(&s3.endpoint(), SK, "", ""));
    assert_eq!(tg.get("/apk/p/a.apk", &[]).status, 404);
    // S3 from a conf file's s3 block.
    let conf_path = work.path().join("t.conf");
    std::fs::write(&conf_path, conf(&s3.endpoint(), SK, "", "")).unwrap();
    let o = pack(
        &apk,
        &list,
        &["--dest", "s3://apks/p", "-c", conf_path.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tg.get("/apk/p/a.apk", &[]).status, 200);
}
