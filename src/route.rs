//! Location matching and path normalisation: request target → [`Route`]. The target is
//! percent-decoded exactly once; anything that could leave the location prefix or change
//! the key (`.`/`..` segments, `%2F`, backslashes, `%00`, control bytes, bad escapes,
//! invalid UTF-8 such as overlong encodings) is refused here, before any key is built.

use crate::conf::{Handler, Location, LocationMatch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Variant `variant` of the manifest at `manifest_key`; `file_name` is the URL's last
    /// segment, kept for Content-Disposition.
    Composite {
        s3: usize,
        manifest_key: String,
        variant: String,
        file_name: String,
    },
    Object {
        s3: usize,
        key: String,
    },
    StubStatus,
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// 400: the target cannot be decoded safely.
    BadTarget(&'static str),
    /// 404: no location, or nothing that location can serve.
    NotFound,
}

/// Decodes `target` (path and query, origin form) and finds what serves it.
pub fn route(locations: &[Location], target: &str) -> Result<Route, RouteError> {
    let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = decode_path(raw_path)?;
    let location = find(locations, &path).ok_or(RouteError::NotFound)?;
    let rest = match &location.matcher {
        LocationMatch::Exact(_) => "",
        LocationMatch::Prefix(p) => &path[p.len()..],
    };
    match location.handler {
        Handler::StubStatus => Ok(Route::StubStatus),
        Handler::Metrics => Ok(Route::Metrics),
        Handler::Object(s3) => {
            if rest.is_empty() || rest.ends_with('/') {
                return Err(RouteError::NotFound);
            }
            Ok(Route::Object {
                s3,
                key: rest.trim_start_matches('/').to_string(),
            })
        }
        Handler::Composite(s3) => {
            let rest = rest.trim_start_matches('/');
            let (package, file_name) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
            let variant = file_name.split('.').next().unwrap_or_default();
            if package.is_empty() || variant.is_empty() {
                return Err(RouteError::NotFound);
            }
            Ok(Route::Composite {
                s3,
                manifest_key: format!("{package}/manifest.json"),
                variant: variant.to_string(),
                file_name: file_name.to_string(),
            })
        }
    }
}

/// nginx order: an exact match wins, then the longest prefix.
fn find<'a>(locations: &'a [Location], path: &str) -> Option<&'a Location> {
    locations
        .iter()
        .find(|l| matches!(&l.matcher, LocationMatch::Exact(p) if p == path))
        .or_else(|| {
            locations
                .iter()
                .filter(|l| matches!(&l.matcher, LocationMatch::Prefix(p) if path.starts_with(p.as_str())))
                .max_by_key(|l| match &l.matcher {
                    LocationMatch::Prefix(p) | LocationMatch::Exact(p) => p.len(),
                })
        })
}

/// Percent-decodes once and refuses every shape that could alter which key is read.
fn decode_path(raw: &str) -> Result<String, RouteError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(RouteError::BadTarget("truncated % escape"))?;
            let v = hex_pair(hex).ok_or(RouteError::BadTarget("invalid % escape"))?;
            match v {
                0 => return Err(RouteError::BadTarget("%00 in target")),
                b'/' => return Err(RouteError::BadTarget("encoded slash in target")),
                _ => out.push(v),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(RouteError::BadTarget("control byte in target"));
    }
    if out.contains(&b'\\') {
        return Err(RouteError::BadTarget("backslash in target"));
    }
    let path = String::from_utf8(out).map_err(|_| RouteError::BadTarget("target is not UTF-8"))?;
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(RouteError::BadTarget("dot segment in target"));
    }
    Ok(path)
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(h[0])? << 4 | d(h[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locations() -> Vec<Location> {
        vec![
            Location {
                matcher: LocationMatch::Prefix("/apk/".into()),
                handler: Handler::Composite(0),
            },
            Location {
                matcher: LocationMatch::Prefix("/files/".into()),
                handler: Handler::Object(1),
            },
            Location {
                matcher: LocationMatch::Prefix("/files/special/".into()),
                handler: Handler::Object(0),
            },
            Location {
                matcher: LocationMatch::Exact("/status".into()),
                handler: Handler::StubStatus,
            },
            Location {
                matcher: LocationMatch::Prefix("/status".into()),
                handler: Handler::Metrics,
            },
        ]
    }

    fn composite(manifest_key: &str, variant: &str, file_name: &str) -> Result<Route, RouteError> {
        Ok(Route::Composite {
            s3: 0,
            manifest_key: manifest_key.into(),
            variant: variant.into(),
            file_name: file_name.into(),
        })
    }

    #[test]
    fn targets_route_as_the_spec_says() {
        let bad = |m| Err(RouteError::BadTarget(m));
        let cases: Vec<(&str, Result<Route, RouteError>)> = vec![
            (
                "/apk/apps/foo/1.2.3/huawei.apk",
                composite("apps/foo/1.2.3/manifest.json", "huawei", "huawei.apk"),
            ),
            (
                "/apk/apps/foo/1.2.3/huawei.zip?x=1",
                composite("apps/foo/1.2.3/manifest.json", "huawei", "huawei.zip"),
            ),
            (
                "/apk/foo/huawei",
                composite("foo/manifest.json", "huawei", "huawei"),
            ),
            (
                "/apk/foo/hua%77ei.apk",
                composite("foo/manifest.json", "huawei", "huawei.apk"),
            ),
            (
                "/apk/foo/a.b.apk",
                composite("foo/manifest.json", "a", "a.b.apk"),
            ),
            ("/apk/huawei.apk", Err(RouteError::NotFound)),
            ("/apk/foo/.apk", Err(RouteError::NotFound)),
            ("/apk/foo/", Err(RouteError::NotFound)),
            (
                "/files/a/b.bin",
                Ok(Route::Object {
                    s3: 1,
                    key: "a/b.bin".into(),
                }),
            ),
            (
                "/files/special/x",
                Ok(Route::Object {
                    s3: 0,
                    key: "x".into(),
                }),
            ),
            ("/files/", Err(RouteError::NotFound)),
            ("/status", Ok(Route::StubStatus)),
            ("/statusx", Ok(Route::Metrics)),
            ("/other", Err(RouteError::NotFound)),
            ("/apk/../files/x", bad("dot segment in target")),
            ("/apk/%2e%2e/files/x", bad("dot segment in target")),
            ("/apk/foo/%2E/x.apk", bad("dot segment in target")),
            ("/files/a%2Fb", bad("encoded slash in target")),
            ("/files/a%00b", bad("%00 in target")),
            ("/files/a\\..\\b", bad("backslash in target")),
            ("/files/a%5cb", bad("backslash in target")),
            ("/files/a%zz", bad("invalid % escape")),
            ("/files/a%2", bad("truncated % escape")),
            ("/files/a%0ab", bad("control byte in target")),
            ("/files/%c0%ae%c0%ae/x", bad("target is not UTF-8")),
            (
                "/files/caf%C3%A9",
                Ok(Route::Object {
                    s3: 1,
                    key: "café".into(),
                }),
            ),
        ];
        for (target, want) in cases {
            assert_eq!(route(&locations(), target), want, "for {target}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn keys_never_escape_their_prefix(tail in "[a-z%2eEfF./\\\\]{0,24}") {
                let target = format!("/files/{tail}");
                if let Ok(Route::Object { key, .. }) = route(&locations(), &target) {
                    prop_assert!(!key.split('/').any(|s| s == ".." || s == "."));
                    prop_assert!(!key.contains('\\'));
                }
            }
        }
    }
}
