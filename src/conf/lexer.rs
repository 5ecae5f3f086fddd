//! nginx-style tokens with their 1-based line: words (bare or quoted), `;`, `{`, `}`.
//! `#` starts a comment to the end of the line. `$NAME` inside a bare or double-quoted word
//! is replaced from the environment through [`Env`], so tests pin it and secrets stay out of
//! files. This module owns no semantics: it does not know any directive.

/// Where `$NAME` values come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spanned {
    pub token: Token,
    pub line: usize,
}

/// A lexing error: the 1-based line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LexError {
    pub line: usize,
    pub msg: String,
}

pub(super) fn tokenize(src: &str, env: &dyn Env) -> Result<Vec<Spanned>, LexError> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                let token = match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                };
                out.push(Spanned { token, line });
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut raw = String::new();
                let mut closed = false;
                while let Some(ch) = chars.next() {
                    match ch {
                        '\\' => match chars.next() {
                            Some('n') => raw.push('\n'),
                            Some('t') => raw.push('\t'),
                            Some(e) => raw.push(e),
                            None => break,
                        },
                        q if q == quote => {
                            closed = true;
                            break;
                        }
                        '\n' => {
                            line += 1;
                            raw.push('\n');
                        }
                        other => raw.push(other),
                    }
                }
                if !closed {
                    return Err(LexError {
                        line: start,
                        msg: "unterminated quoted string".into(),
                    });
                }
                let word = if quote == '"' {
                    expand(&raw, env, start)?
                } else {
                    raw
                };
                out.push(Spanned {
                    token: Token::Word(word),
                    line: start,
                });
            }
            _ => {
                let mut raw = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}' | '#' | '"' | '\'') {
                        break;
                    }
                    raw.push(c);
                    chars.next();
                }
                out.push(Spanned {
                    token: Token::Word(expand(&raw, env, line)?),
                    line,
                });
            }
        }
    }
    Ok(out)
}

/// Replaces every `$NAME` or `${NAME}` with its environment value; an unset name is an error
/// rather than an empty string, so a missing secret never becomes a silent misconfiguration.
fn expand(raw: &str, env: &dyn Env, line: usize) -> Result<String, LexError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => {
                    return Err(LexError {
                        line,
                        msg: "unterminated \"${\" in value".into(),
                    })
                }
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(LexError {
                line,
                msg: format!("invalid variable name in \"{raw}\""),
            });
        }
        match env.var(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(LexError {
                    line,
                    msg: format!("environment variable \"{name}\" is not set"),
                })
            }
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn env() -> MapEnv {
        MapEnv(HashMap::from([("KEY", "AKID"), ("PORT", "9000")]))
    }

    fn words(src: &str) -> Vec<(String, usize)> {
        tokenize(src, &env())
            .unwrap()
            .into_iter()
            .map(|s| match s.token {
                Token::Word(w) => (w, s.line),
                Token::Semicolon => (";".into(), s.line),
                Token::Open => ("{".into(), s.line),
                Token::Close => ("}".into(), s.line),
            })
            .collect()
    }

    #[test]
    fn splits_words_punctuation_and_counts_lines() {
        let got = words("a b;\n# c;\nhttp {\n  x \"y z\";}\n");
        let want: Vec<(String, usize)> = [
            ("a", 1),
            ("b", 1),
            (";", 1),
            ("http", 3),
            ("{", 3),
            ("x", 4),
            ("y z", 4),
            (";", 4),
            ("}", 4),
        ]
        .iter()
        .map(|(w, l)| (w.to_string(), *l))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn env_is_substituted_in_bare_and_double_quoted_words_only() {
        let got = words("k $KEY \"http://h:${PORT}/\" '$KEY';");
        assert_eq!(got[1].0, "AKID");
        assert_eq!(got[2].0, "http://h:9000/");
        assert_eq!(got[3].0, "$KEY");
    }

    #[test]
    fn unset_env_is_an_error_with_its_line() {
        let err = tokenize("a;\nb $NOPE;", &env()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.msg.contains("NOPE"), "{}", err.msg);
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let err = tokenize("a \"b;\n", &env()).unwrap_err();
        assert_eq!(err.line, 1);
    }
}
