//! Sans-IO reader that discards a chunked request body (RFC 9112 §7.1) within a bound.
//! tailgate serves no request bodies, but a body it cannot frame exactly would be read as
//! the next request, so framing is strict: CRLF line ends only, hex sizes without overflow,
//! extensions and trailers of bounded length without control bytes.

/// Refusal reasons; `server::conn` maps them to 400 and 413, both with close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    /// More than the allowed body bytes.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// In a chunk extension of `len` bytes so far, up to CR.
    Ext {
        size: u64,
        len: usize,
    },
    /// Expecting the LF after a size line's CR.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// A trailer field line (or the final empty line when `len == 0`).
    Trailer {
        len: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Longest chunk extension or trailer line, and all trailer bytes together.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone)]
pub struct ChunkedDiscard {
    state: State,
    body: u64,
    limit: u64,
    trailer_bytes: usize,
}

impl ChunkedDiscard {
    pub fn new(limit: u64) -> Self {
        ChunkedDiscard {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            body: 0,
            limit,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of `input`; returns how many belong to the body. Once done, the rest
    /// of `input` is the next request.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkError::Malformed("chunk size overflows"));
                        }
                        State::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => {
                        return Err(ChunkError::Malformed("chunk size is not hex"))
                    }
                    None if b == b';' => {
                        self.pending_size(value)?;
                        State::Ext {
                            size: value,
                            len: 0,
                        }
                    }
                    None if b == b'\r' => {
                        self.pending_size(value)?;
                        State::SizeLf { size: value }
                    }
                    None => return Err(ChunkError::Malformed("invalid byte after a chunk size")),
                },
                State::Ext { size, len } => {
                    if len >= MAX_LINE {
                        return Err(ChunkError::Malformed("chunk extension too long"));
                    }
                    match b {
                        b'\r' => State::SizeLf { size },
                        b'\t' => State::Ext { size, len: len + 1 },
                        c if c < 0x20 || c == 0x7f => {
                            return Err(ChunkError::Malformed("control byte in a chunk extension"))
                        }
                        _ => State::Ext { size, len: len + 1 },
                    }
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk size line not ended by CRLF"));
                    }
                    if size == 0 {
                        State::Trailer { len: 0 }
                    } else {
                        State::Data { left: size }
                    }
                }
                State::Data { left } => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                State::DataCr | State::DataLf => {
                    return Err(ChunkError::Malformed("chunk data not followed by CRLF"))
                }
                State::Trailer { len } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS || len >= MAX_LINE {
                        return Err(ChunkError::Malformed("trailer section too long"));
                    }
                    match b {
                        b'\r' => State::TrailerLf { empty: len == 0 },
                        b'\t' => State::Trailer { len: len + 1 },
                        c if c < 0x20 || c == 0x7f => {
                            return Err(ChunkError::Malformed("control byte in a trailer"))
                        }
                        _ => State::Trailer { len: len + 1 },
                    }
                }
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("trailer line not ended by CRLF"));
                    }
                    if empty {
                        State::Done
                    } else {
                        State::Trailer { len: 0 }
                    }
                }
            };
            i += 1;
        }
        Ok(i)
    }

    /// Checks the body bound as soon as a size is known, before any of its data is read.
    fn pending_size(&mut self, size: u64) -> Result<(), ChunkError> {
        self.body = self.body.checked_add(size).ok_or(ChunkError::TooLarge)?;
        if self.body > self.limit {
            return Err(ChunkError::TooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut d = ChunkedDiscard::new(64 * 1024);
        let n = d.feed(input)?;
        Ok((n, d.is_done()))
    }

    #[test]
    fn framing_cases() {
        let ok: &[(&[u8], usize)] = &[
            (b"0\r\n\r\nNEXT", 5),
            (b"5\r\nhello\r\n0\r\n\r\n", 15),
            (
                b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: y\r\n\r\nGET",
                44,
            ),
            (b"000\r\n\r\n", 7),
        ];
        for (input, consumed) in ok {
            assert_eq!(
                run(input),
                Ok((*consumed, true)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bad: &[(&[u8], ChunkError)] = &[
            (b"x\r\n", ChunkError::Malformed("chunk size is not hex")),
            (
                b"5 \r\n",
                ChunkError::Malformed("invalid byte after a chunk size"),
            ),
            (
                b"5\nhello",
                ChunkError::Malformed("invalid byte after a chunk size"),
            ),
            (
                b"5\r\nhelloX",
                ChunkError::Malformed("chunk data not followed by CRLF"),
            ),
            (
                b"0\r\n\n",
                ChunkError::Malformed("control byte in a trailer"),
            ),
            (
                b"11111111111111111\r\n",
                ChunkError::Malformed("chunk size overflows"),
            ),
            (b"10001\r\n", ChunkError::TooLarge),
            (b"ffffffffffffffff\r\n", ChunkError::TooLarge),
            (
                b"1;a\x00\r\n",
                ChunkError::Malformed("control byte in a chunk extension"),
            ),
        ];
        for (input, want) in bad {
            assert_eq!(
                run(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(run(b"5\r\nhel"), Ok((6, false)));
    }

    #[test]
    fn many_small_chunks_still_count_against_the_bound() {
        let mut body = Vec::new();
        for _ in 0..70 {
            body.extend_from_slice(b"3E8\r\n");
            body.extend_from_slice(&[b'a'; 1000]);
            body.extend_from_slice(b"\r\n");
        }
        assert_eq!(run(&body), Err(ChunkError::TooLarge));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn split_feeding_matches_whole(raw in prop::collection::vec(prop::sample::select(b"0123456789abcdef;\r\nxX \t".to_vec()), 0..80), cut in 0usize..80) {
                let whole = run(&raw);
                let cut = cut.min(raw.len());
                let mut d = ChunkedDiscard::new(64 * 1024);
                let split = d.feed(&raw[..cut]).and_then(|a| {
                    if d.is_done() { return Ok((a, true)); }
                    d.feed(&raw[cut..]).map(|b| (a + b, d.is_done()))
                });
                prop_assert_eq!(whole, split);
            }
        }
    }
}
