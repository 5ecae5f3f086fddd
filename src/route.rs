//! Location matching and path normalisation: request target → [`Route`]. The target is
//! percent-decoded exactly once; anything that could leave the location prefix or change
//! the key (`.`/`..` segments, `%2F`, backslashes, `%00`, control bytes, bad escapes,
//! invalid UTF-8 such as overlong encodings) is refused here, before any key is built.

use std::borrow::Cow;

use crate::conf::{Handler, Location, LocationMatch};

/// What serves a request; the names borrow from the decoded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Variant `variant` of the package whose manifest is `{package}/manifest.json`;
    /// `file_name` is the URL's last segment, kept for Content-Disposition.
    Composite {
        s3: usize,
        package: &'a str,
        variant: &'a str,
        file_name: &'a str,
    },
    Object {
        s3: usize,
        key: &'a str,
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

/// The path of `target` (path and query, origin form), percent-decoded once and checked
/// ([`decode_path`]); borrowed when it has no escapes.
pub fn decode(target: &str) -> Result<Cow<'_, str>, RouteError> {
    let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
    decode_path(raw_path)
}

/// Finds what serves a decoded `path`.
pub fn route<'a>(locations: &[Location], path: &'a str) -> Result<Route<'a>, RouteError> {
    let location = find(locations, path).ok_or(RouteError::NotFound)?;
    let rest = match &location.matcher {
        LocationMatch::Exact(_) => "",
        LocationMatch::Prefix(p) => path.get(p.len()..).unwrap_or_default(),
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
                key: rest.trim_start_matches('/'),
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
                package,
                variant,
                file_name,
            })
        }
    }
}

/// The manifest key of a package.
pub fn manifest_key(package: &str) -> String {
    format!("{package}/manifest.json")
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
fn decode_path(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    let bytes = raw.as_bytes();
    let path = if bytes.contains(&b'%') {
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
        Cow::Owned(
            String::from_utf8(out).map_err(|_| RouteError::BadTarget("target is not UTF-8"))?,
        )
    } else {
        Cow::Borrowed(raw)
    };
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(RouteError::BadTarget("control byte in target"));
    }
    if path.contains('\\') {
        return Err(RouteError::BadTarget("backslash in target"));
    }
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

    fn composite(
        package: &'static str,
        variant: &'static str,
        file_name: &'static str,
    ) -> Result<Route<'static>, RouteError> {
        Ok(Route::Composite {
            s3: 0,
            package,
            variant,
            file_name,
        })
    }

    /// Decoded and routed, in one step as `conn` does it.
    fn go(target: &str) -> Result<String, RouteError> {
        let path = decode(target)?;
        route(&locations(), &path).map(|r| format!("{r:?}"))
    }

    #[test]
    fn plain_paths_are_borrowed_and_manifest_keys_built() {
        assert!(matches!(
            decode("/apk/a/b.apk?x=%41"),
            Ok(Cow::Borrowed("/apk/a/b.apk"))
        ));
        assert!(matches!(decode("/apk/a/%62.apk"), Ok(Cow::Owned(p)) if p == "/apk/a/b.apk"));
        assert_eq!(
            manifest_key("apps/foo/1.2.3"),
            "apps/foo/1.2.3/manifest.json"
        );
    }

    #[test]
    fn targets_route_as_the_spec_says() {
        let bad = |m| Err(RouteError::BadTarget(m));
        let cases: Vec<(&str, Result<Route, RouteError>)> = vec![
            (
                "/apk/apps/foo/1.2.3/huawei.apk",
                composite("apps/foo/1.2.3", "huawei", "huawei.apk"),
            ),
            (
                "/apk/apps/foo/1.2.3/huawei.zip?x=1",
                composite("apps/foo/1.2.3", "huawei", "huawei.zip"),
            ),
            ("/apk/foo/huawei", composite("foo", "huawei", "huawei")),
            (
                "/apk/foo/hua%77ei.apk",
                composite("foo", "huawei", "huawei.apk"),
            ),
            ("/apk/foo/a.b.apk", composite("foo", "a", "a.b.apk")),
            ("/apk/huawei.apk", Err(RouteError::NotFound)),
            ("/apk/foo/.apk", Err(RouteError::NotFound)),
            ("/apk/foo/", Err(RouteError::NotFound)),
            (
                "/files/a/b.bin",
                Ok(Route::Object {
                    s3: 1,
                    key: "a/b.bin",
                }),
            ),
            ("/files/special/x", Ok(Route::Object { s3: 0, key: "x" })),
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
                    s3: 1, key: "café"
                }),
            ),
        ];
        for (target, want) in cases {
            assert_eq!(go(target), want.map(|r| format!("{r:?}")), "for {target}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn keys_never_escape_their_prefix(tail in "[a-z%2eEfF./\\\\]{0,24}") {
                let target = format!("/files/{tail}");
                let Ok(path) = decode(&target) else { return Ok(()) };
                if let Ok(Route::Object { key, .. }) = route(&locations(), &path) {
                    prop_assert!(!key.split('/').any(|s| s == ".." || s == "."));
                    prop_assert!(!key.contains('\\'));
                }
            }
        }
    }
}
