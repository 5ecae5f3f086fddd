//! The TLS record layer once the handshake is done. rustls negotiates, checks the
//! certificate and then hands over the traffic keys (its `kernel` API, made for kTLS); the
//! records are opened here, in the caller's buffer, each one's plaintext written over the
//! ciphertext in the same pass that decrypts it. A body byte is thus copied once, by the
//! kernel, on its way from the socket. rustls still derives the keys after a TLS 1.3
//! KeyUpdate and keeps the session tickets ([`Keys`]).

use std::io;

use ring::aead;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

/// Type, version and length.
pub const HEADER: usize = 5;
/// The most plaintext a record carries.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest record body accepted: TLS 1.2's bound (TLS 1.3's is 256 over the plaintext).
const MAX_BODY: usize = MAX_PLAINTEXT + 2048;
/// The longest record on the wire.
pub const MAX_RECORD: usize = HEADER + MAX_BODY;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM bodies start with the nonce's last 8 bytes.
const EXPLICIT_NONCE: usize = 8;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

const WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// The most post-handshake message bytes held while they arrive over several records.
const MAX_HANDSHAKE: usize = 64 * 1024;

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

/// What rustls keeps doing after the handshake: new traffic keys and session tickets.
pub trait Keys {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error>;
}

impl Keys for KernelConnection<ClientConnectionData> {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }

    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }

    fn ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
        self.handle_new_session_ticket(body)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    Tls12,
    Tls13,
}

/// One direction's key and record sequence number.
struct Direction {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// TLS 1.2 AES-GCM: each record body starts with the nonce's last 8 bytes.
    explicit_nonce: bool,
}

impl Direction {
    fn new(version: Version, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Self> {
        let (alg, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => {
                return Err(bad(
                    "negotiated a cipher this record layer does not implement",
                ))
            }
        };
        let key = aead::UnboundKey::new(alg, key.as_ref()).map_err(|_| bad("bad key length"))?;
        let iv = iv.as_ref().try_into().map_err(|_| bad("bad IV length"))?;
        Ok(Direction {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
            explicit_nonce: gcm && version == Version::Tls12,
        })
    }

    /// The IV with the sequence number XORed into its last 8 bytes (RFC 8446 §5.3; TLS 1.2
    /// AES-GCM sends those 8 bytes as its explicit nonce, rustls's choice too).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        nonce
    }

    fn advance(&mut self) -> io::Result<()> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| bad("record sequence number exhausted"))?;
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, typ: u8, len: usize) -> aead::Aad<[u8; 13]> {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    // Records are bounded far below 64 KiB, so the length always fits.
    aad[11..].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    aead::Aad::from(aad)
}

fn header(typ: u8, len: usize) -> io::Result<[u8; HEADER]> {
    let len = u16::try_from(len).map_err(|_| bad("record too long"))?;
    let [hi, lo] = len.to_be_bytes();
    Ok([typ, 3, 3, hi, lo])
}

/// What one record brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: this many bytes at the destination.
    Data(usize),
    /// Nothing for the caller: a session ticket, a key update, a warning alert.
    Control,
    /// close_notify: the peer sends no more.
    Closed,
}

/// The length on the wire of the record starting `buf`, once its header is there.
pub fn record_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let Some(&[typ, major, _, hi, lo]) = buf.get(..HEADER) else {
        return Ok(None);
    };
    if !(CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&typ) || major != 3 {
        return Err(bad(format_args!(
            "not a TLS record (type {typ}, version {major})"
        )));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_BODY {
        return Err(bad(format_args!("record of {len} bytes is over the limit")));
    }
    Ok(Some(HEADER + len))
}

/// A connection's records after the handshake.
pub struct Session<K> {
    keys: K,
    version: Version,
    rx: Direction,
    tx: Direction,
    /// Records `tx` seals before its key must change: the suite's confidentiality limit.
    tx_limit: u64,
    /// A post-handshake message whose end has not arrived yet.
    handshake: Vec<u8>,
    /// The peer asked for a KeyUpdate: ours goes out ahead of our next record.
    owe_key_update: bool,
}

impl Session<KernelConnection<ClientConnectionData>> {
    /// Takes over from rustls once its handshake is complete.
    pub fn from_rustls(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ClientConnectionData>,
    ) -> io::Result<Self> {
        let version = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            v => return Err(bad(format_args!("unexpected protocol version {v:?}"))),
        };
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Session::new(version, secrets, kernel, tx_limit)
    }
}

impl<K: Keys> Session<K> {
    pub fn new(
        version: Version,
        secrets: ExtractedSecrets,
        keys: K,
        tx_limit: u64,
    ) -> io::Result<Self> {
        Ok(Session {
            keys,
            version,
            rx: Direction::new(version, secrets.rx)?,
            tx: Direction::new(version, secrets.tx)?,
            tx_limit,
            handshake: Vec::new(),
            owe_key_update: false,
        })
    }

    /// Opens the complete record at `buf[at..]` (see [`record_len`]), writing its plaintext
    /// to `buf[dst..]`, `dst <= at`. Whatever the outcome, bytes from `dst` to the record's
    /// end are overwritten.
    pub fn open(&mut self, buf: &mut [u8], dst: usize, at: usize) -> io::Result<Opened> {
        let end = match record_len(buf.get(at..).unwrap_or_default())? {
            Some(len) if dst <= at && at + len <= buf.len() => at + len,
            _ => return Err(bad("incomplete record")),
        };
        let mut head = [0u8; HEADER];
        head.copy_from_slice(&buf[at..at + HEADER]);
        let typ = head[0];
        let body = at + HEADER;
        let (typ, len) = match self.version {
            Version::Tls13 => {
                if typ != APPLICATION_DATA {
                    return Err(bad(format_args!(
                        "unprotected record of type {typ} after the handshake"
                    )));
                }
                if end - body < TAG + 1 {
                    return Err(bad("record too short"));
                }
                let nonce = aead::Nonce::assume_unique_for_key(self.rx.nonce());
                let plain = self
                    .rx
                    .key
                    .open_within(
                        nonce,
                        aead::Aad::from(head),
                        &mut buf[dst..end],
                        body - dst..,
                    )
                    .map_err(|_| bad("record failed authentication (bad_record_mac)"))?;
                // Inner plaintext: content, its type, zero padding (RFC 8446 §5.4).
                let Some(last) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(bad("record without a content type"));
                };
                (plain[last], last)
            }
            Version::Tls12 => {
                let explicit = if self.rx.explicit_nonce {
                    EXPLICIT_NONCE
                } else {
                    0
                };
                let Some(len) = (end - body).checked_sub(explicit + TAG) else {
                    return Err(bad("record too short"));
                };
                let mut nonce = self.rx.nonce();
                if explicit > 0 {
                    nonce[4..].copy_from_slice(&buf[body..body + explicit]);
                }
                let aad = aad12(self.rx.seq, typ, len);
                let nonce = aead::Nonce::assume_unique_for_key(nonce);
                self.rx
                    .key
                    .open_within(nonce, aad, &mut buf[dst..end], body + explicit - dst..)
                    .map_err(|_| bad("record failed authentication (bad_record_mac)"))?;
                (typ, len)
            }
        };
        self.rx.advance()?;
        if len > MAX_PLAINTEXT {
            return Err(bad("record_overflow"));
        }
        if typ != HANDSHAKE && !self.handshake.is_empty() {
            return Err(bad(
                "a handshake message interrupted by another record type",
            ));
        }
        match typ {
            APPLICATION_DATA => Ok(Opened::Data(len)),
            ALERT => match buf[dst..dst + len] {
                [_, CLOSE_NOTIFY] => Ok(Opened::Closed),
                [_, USER_CANCELED] => Ok(Opened::Control),
                [WARNING, _] if self.version == Version::Tls12 => Ok(Opened::Control),
                [_, desc] => Err(bad(format_args!("the peer sent alert {desc}"))),
                _ => Err(bad("malformed alert")),
            },
            HANDSHAKE if len > 0 => {
                if self.handshake.len() + len > MAX_HANDSHAKE {
                    return Err(bad("post-handshake message too long"));
                }
                self.handshake.extend_from_slice(&buf[dst..dst + len]);
                self.handshake_messages()?;
                Ok(Opened::Control)
            }
            _ => Err(bad(format_args!(
                "unexpected record of type {typ} after the handshake"
            ))),
        }
    }

    /// Acts on every complete message in `handshake`, keeping a partial one.
    fn handshake_messages(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.handshake);
        let mut rest = &held[..];
        while let [typ, a, b, c, body @ ..] = rest {
            let len = usize::try_from(u32::from_be_bytes([0, *a, *b, *c])).unwrap_or(usize::MAX);
            let Some((msg, after)) = body.split_at_checked(len) else {
                break;
            };
            match (self.version, *typ) {
                (Version::Tls13, NEW_SESSION_TICKET) => {
                    self.keys.ticket(msg).map_err(bad)?;
                }
                (Version::Tls13, KEY_UPDATE) => {
                    let requested = match msg {
                        [0] => false,
                        [1] => true,
                        _ => return Err(bad("malformed KeyUpdate")),
                    };
                    // The next record is under the new key: nothing may follow in this one.
                    if !after.is_empty() {
                        return Err(bad("KeyUpdate not at the end of its record"));
                    }
                    self.rx = Direction::new(self.version, self.keys.next_rx().map_err(bad)?)?;
                    self.owe_key_update |= requested;
                }
                // Renegotiation is not offered; a client may ignore the request (RFC 5246
                // §7.4.1.1).
                (Version::Tls12, HELLO_REQUEST) if len == 0 => {}
                (_, t) => {
                    return Err(bad(format_args!(
                        "unexpected handshake message {t} after the handshake"
                    )))
                }
            }
            rest = after;
        }
        self.handshake = rest.to_vec();
        Ok(())
    }

    /// Appends `data` to `out` as application data records, after a KeyUpdate of ours when
    /// the peer asked for one or the key has sealed as many records as it safely may.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.owe_key_update || self.tx.seq >= self.tx_limit {
            if self.version != Version::Tls13 {
                return Err(bad("the TLS 1.2 key has sealed as many records as it may"));
            }
            // update_not_requested: the peer's keys are its own business.
            self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
            self.tx = Direction::new(self.version, self.keys.next_tx().map_err(bad)?)?;
            self.owe_key_update = false;
        }
        for chunk in data.chunks(MAX_PLAINTEXT) {
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Appends one record of content type `typ` (at most [`MAX_PLAINTEXT`] bytes).
    pub fn seal_record(&mut self, typ: u8, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let nonce = self.tx.nonce();
        match self.version {
            Version::Tls13 => {
                let head = header(APPLICATION_DATA, payload.len() + 1 + TAG)?;
                out.extend_from_slice(&head);
                let body = out.len();
                out.extend_from_slice(payload);
                out.push(typ);
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(head),
                        &mut out[body..],
                    )
                    .map_err(|_| bad("sealing failed"))?;
                out.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let explicit = if self.tx.explicit_nonce {
                    EXPLICIT_NONCE
                } else {
                    0
                };
                out.extend_from_slice(&header(typ, explicit + payload.len() + TAG)?);
                out.extend_from_slice(&nonce[aead::NONCE_LEN - explicit..]);
                let body = out.len();
                out.extend_from_slice(payload);
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aad12(self.tx.seq, typ, payload.len()),
                        &mut out[body..],
                    )
                    .map_err(|_| bad("sealing failed"))?;
                out.extend_from_slice(tag.as_ref());
            }
        }
        self.tx.advance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    /// Key generations as two peers would derive them: generation `n` of a direction is
    /// the same on both sides, and differs from every other.
    #[derive(Default)]
    struct Generations {
        suite: u8,
        rx: u8,
        tx: u8,
        rx_base: u8,
        tx_base: u8,
        tickets: Vec<Vec<u8>>,
    }

    fn secrets(suite: u8, generation: u8) -> ConnectionTrafficSecrets {
        let key = AeadKey::from([generation.wrapping_mul(7).wrapping_add(1); 32]);
        let iv = Iv::new([generation.wrapping_add(100); 12]);
        match suite {
            0 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        }
    }

    impl Keys for Generations {
        fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.rx += 1;
            Ok((0, secrets(self.suite, self.rx_base + self.rx)))
        }
        fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.tx += 1;
            Ok((0, secrets(self.suite, self.tx_base + self.tx)))
        }
        fn ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
            self.tickets.push(body.to_vec());
            Ok(())
        }
    }

    /// A client and the server it talks to: the client's tx generations are the server's
    /// rx ones (base 0) and the other way round (base 50).
    fn pair(version: Version, suite: u8) -> (Session<Generations>, Session<Generations>) {
        let side = |rx_base: u8, tx_base: u8| {
            let keys = Generations {
                suite,
                rx_base,
                tx_base,
                ..Generations::default()
            };
            let s = ExtractedSecrets {
                tx: (3, secrets(suite, tx_base)),
                rx: (5, secrets(suite, rx_base)),
            };
            Session::new(version, s, keys, u64::MAX).unwrap()
        };
        let client = side(50, 0);
        let mut server = side(0, 50);
        // The server's sequence numbers mirror the client's.
        server.tx.seq = 5;
        server.rx.seq = 3;
        (client, server)
    }

    /// Opens every record of `wire` in place, each one's plaintext right after the last.
    fn open_all<K: Keys>(s: &mut Session<K>, mut wire: Vec<u8>) -> io::Result<(Vec<u8>, bool)> {
        let (mut w, mut r) = (0, 0);
        let mut closed = false;
        while r < wire.len() {
            let len = record_len(&wire[r..])?.ok_or_else(|| bad("cut"))?;
            match s.open(&mut wire, w, r)? {
                Opened::Data(n) => w += n,
                Opened::Control => {}
                Opened::Closed => closed = true,
            }
            r += len;
        }
        wire.truncate(w);
        Ok((wire, closed))
    }

    const CASES: [(Version, u8); 4] = [
        (Version::Tls13, 0),
        (Version::Tls13, 1),
        (Version::Tls12, 0),
        (Version::Tls12, 1),
    ];

    #[test]
    fn records_sealed_by_one_side_open_in_place_at_the_other() {
        for (version, suite) in CASES {
            let (mut client, mut server) = pair(version, suite);
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            server.seal(&body, &mut wire).unwrap();
            let (plain, closed) = open_all(&mut client, wire).unwrap();
            assert_eq!(plain, body, "{version:?} suite {suite}");
            assert!(!closed);
            // And the other way, sequence numbers having moved on.
            let mut wire = Vec::new();
            client.seal(b"GET / HTTP/1.1\r\n\r\n", &mut wire).unwrap();
            let (plain, _) = open_all(&mut server, wire).unwrap();
            assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
        }
    }

    #[test]
    fn sizes_on_the_wire_are_the_protocols() {
        let overhead = |version, suite| {
            let (_, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server.seal(&[7; 100], &mut wire).unwrap();
            assert_eq!(record_len(&wire).unwrap(), Some(wire.len()));
            wire.len() - 100
        };
        // Header + tag, + inner type (1.3), + explicit nonce (1.2 AES-GCM).
        assert_eq!(overhead(Version::Tls13, 0), 5 + 16 + 1);
        assert_eq!(overhead(Version::Tls13, 1), 5 + 16 + 1);
        assert_eq!(overhead(Version::Tls12, 0), 5 + 8 + 16);
        assert_eq!(overhead(Version::Tls12, 1), 5 + 16);
        let (_, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        server.seal(&[7; 40_000], &mut wire).unwrap();
        assert_eq!(
            wire.len(),
            40_000 + 3 * 22,
            "three records of at most 16 KiB"
        );
    }

    #[test]
    fn a_flipped_bit_or_a_replayed_record_fails_authentication() {
        for (version, suite) in CASES {
            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server.seal(b"hello", &mut wire).unwrap();
            let mut bad = wire.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let e = open_all(&mut client, bad).unwrap_err();
            assert!(e.to_string().contains("bad_record_mac"), "{e}");
            // A failure ends the connection: a fresh pair for the replay.
            let (mut client, _) = pair(version, suite);
            assert_eq!(open_all(&mut client, wire.clone()).unwrap().0, b"hello");
            let e = open_all(&mut client, wire).unwrap_err();
            assert!(e.to_string().contains("bad_record_mac"), "replay: {e}");
        }
    }

    #[test]
    fn tls13_padding_and_empty_records() {
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        // Content, type, then zeros: the server may pad to hide lengths.
        server.seal_record_padded(APPLICATION_DATA, b"abc\0", 30, &mut wire);
        server.seal_record_padded(APPLICATION_DATA, b"", 0, &mut wire);
        server.seal(b"d", &mut wire).unwrap();
        assert_eq!(open_all(&mut client, wire).unwrap().0, b"abc\0d");
        // All zeros: no content type at all.
        let mut wire = Vec::new();
        server.seal_raw(&[0, 0, 0], &mut wire);
        let e = open_all(&mut client, wire).unwrap_err();
        assert!(e.to_string().contains("without a content type"), "{e}");
    }

    impl<K: Keys> Session<K> {
        /// A TLS 1.3 record with `padding` zeros after the content type.
        fn seal_record_padded(
            &mut self,
            typ: u8,
            content: &[u8],
            padding: usize,
            out: &mut Vec<u8>,
        ) {
            let mut inner = content.to_vec();
            inner.push(typ);
            inner.resize(inner.len() + padding, 0);
            self.seal_raw(&inner, out);
        }

        /// A TLS 1.3 record whose inner plaintext is `inner` exactly.
        fn seal_raw(&mut self, inner: &[u8], out: &mut Vec<u8>) {
            let head = header(APPLICATION_DATA, inner.len() + TAG).unwrap();
            out.extend_from_slice(&head);
            let body = out.len();
            out.extend_from_slice(inner);
            let nonce = aead::Nonce::assume_unique_for_key(self.tx.nonce());
            let tag = self
                .tx
                .key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(head), &mut out[body..])
                .unwrap();
            out.extend_from_slice(tag.as_ref());
            self.tx.advance().unwrap();
        }
    }

    #[test]
    fn key_update_requested_by_the_server_is_answered_before_the_next_request() {
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        server.seal(b"before", &mut wire).unwrap();
        // KeyUpdate, update_requested; the server's later records use its next key.
        server
            .seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], &mut wire)
            .unwrap();
        server.tx = Direction::new(Version::Tls13, server.keys.next_tx().unwrap()).unwrap();
        server.seal(b" after", &mut wire).unwrap();
        assert_eq!(open_all(&mut client, wire).unwrap().0, b"before after");
        assert_eq!((client.keys.rx, client.owe_key_update), (1, true));

        let mut wire = Vec::new();
        client.seal(b"next request", &mut wire).unwrap();
        assert!(!client.owe_key_update);
        // Two records: the client's KeyUpdate (not requesting one back), then the request
        // under its new key, which the server opens once it has moved on too.
        let first = record_len(&wire).unwrap().unwrap();
        assert!(first < wire.len());
        let (plain, _) = open_all(&mut server, wire[..first].to_vec()).unwrap();
        assert!(plain.is_empty());
        assert_eq!((server.keys.rx, server.owe_key_update), (1, false));
        let (plain, _) = open_all(&mut server, wire[first..].to_vec()).unwrap();
        assert_eq!(plain, b"next request");
    }

    #[test]
    fn a_worn_key_is_replaced_before_it_seals_again() {
        let (mut client, mut server) = pair(Version::Tls13, 1);
        (client.tx.seq, server.rx.seq, client.tx_limit) = (0, 0, 2);
        let mut wire = Vec::new();
        for _ in 0..5 {
            client.seal(b"x", &mut wire).unwrap();
        }
        // Two records, KeyUpdate, two, KeyUpdate, one.
        assert_eq!(client.keys.tx, 2);
        assert_eq!(open_all(&mut server, wire).unwrap().0, b"xxxxx");
        assert_eq!(server.keys.rx, 2);

        let (mut client, _) = pair(Version::Tls12, 0);
        client.tx_limit = client.tx.seq;
        let e = client.seal(b"x", &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("as many records"), "{e}");
    }

    #[test]
    fn key_update_must_end_its_record() {
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        server
            .seal_record(
                HANDSHAKE,
                &[KEY_UPDATE, 0, 0, 1, 0, KEY_UPDATE, 0],
                &mut wire,
            )
            .unwrap();
        let e = open_all(&mut client, wire).unwrap_err();
        assert!(e.to_string().contains("end of its record"), "{e}");
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        server
            .seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 2], &mut wire)
            .unwrap();
        let e = open_all(&mut client, wire).unwrap_err();
        assert!(e.to_string().contains("malformed KeyUpdate"), "{e}");
    }

    #[test]
    fn session_tickets_are_handed_to_rustls_even_split_over_records() {
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let ticket: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut msg = vec![NEW_SESSION_TICKET, 0, 1, 44];
        msg.extend_from_slice(&ticket);
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let mut wire = Vec::new();
        server.seal_record(HANDSHAKE, &two[..3], &mut wire).unwrap();
        server
            .seal_record(HANDSHAKE, &two[3..400], &mut wire)
            .unwrap();
        server
            .seal_record(HANDSHAKE, &two[400..], &mut wire)
            .unwrap();
        server.seal(b"body", &mut wire).unwrap();
        assert_eq!(open_all(&mut client, wire).unwrap().0, b"body");
        assert_eq!(client.keys.tickets, vec![ticket.clone(), ticket]);

        // A message cut by application data is a protocol violation.
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        server
            .seal_record(HANDSHAKE, &msg[..10], &mut wire)
            .unwrap();
        server.seal(b"body", &mut wire).unwrap();
        let e = open_all(&mut client, wire).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
    }

    #[test]
    fn handshake_messages_after_the_handshake_other_than_these_are_refused() {
        let (mut client, mut server) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        // CertificateRequest (post-handshake authentication was not offered).
        server
            .seal_record(HANDSHAKE, &[13, 0, 0, 0], &mut wire)
            .unwrap();
        assert!(open_all(&mut client, wire).is_err());
        let (mut client, mut server) = pair(Version::Tls12, 1);
        let mut wire = Vec::new();
        // HelloRequest is ignored; a session ticket is not a TLS 1.2 post-handshake message.
        server
            .seal_record(HANDSHAKE, &[0, 0, 0, 0], &mut wire)
            .unwrap();
        server.seal(b"ok", &mut wire).unwrap();
        assert_eq!(open_all(&mut client, wire).unwrap().0, b"ok");
        let mut wire = Vec::new();
        server
            .seal_record(HANDSHAKE, &[NEW_SESSION_TICKET, 0, 0, 0], &mut wire)
            .unwrap();
        assert!(open_all(&mut client, wire).is_err());
    }

    #[test]
    fn alerts() {
        for (version, suite) in CASES {
            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server.seal(b"last", &mut wire).unwrap();
            server
                .seal_record(ALERT, &[1, CLOSE_NOTIFY], &mut wire)
                .unwrap();
            assert_eq!(
                open_all(&mut client, wire).unwrap(),
                (b"last".to_vec(), true)
            );

            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server.seal_record(ALERT, &[2, 20], &mut wire).unwrap();
            let e = open_all(&mut client, wire).unwrap_err();
            assert!(e.to_string().contains("alert 20"), "{e}");

            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server
                .seal_record(ALERT, &[1, USER_CANCELED], &mut wire)
                .unwrap();
            server.seal_record(ALERT, &[1, 100], &mut wire).unwrap();
            server.seal(b"on", &mut wire).unwrap();
            // A warning (no_renegotiation here) is fatal in TLS 1.3 (RFC 8446 §6).
            let got = open_all(&mut client, wire);
            match version {
                Version::Tls12 => assert_eq!(got.unwrap().0, b"on"),
                Version::Tls13 => assert!(got.is_err()),
            }

            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            server.seal_record(ALERT, &[1, 0, 0], &mut wire).unwrap();
            assert!(open_all(&mut client, wire).is_err(), "three-byte alert");
        }
    }

    #[test]
    fn record_headers_are_checked_before_anything_is_read() {
        assert_eq!(record_len(&[23, 3, 3]).unwrap(), None);
        assert_eq!(record_len(&[23, 3, 3, 0, 40]).unwrap(), Some(45));
        assert_eq!(record_len(&[23, 3, 3, 0x48, 0]).unwrap(), Some(5 + 0x4800));
        assert!(
            record_len(&[23, 3, 3, 0x48, 1]).is_err(),
            "over 2^14 + 2048"
        );
        assert!(record_len(b"HTTP/").is_err(), "plain HTTP");
        assert!(record_len(&[24, 3, 3, 0, 1]).is_err());
        assert!(record_len(&[23, 2, 0, 0, 1]).is_err());
        // TLS 1.3 accepts only protected records; TLS 1.2 refuses change_cipher_spec.
        let (mut client, _) = pair(Version::Tls13, 0);
        let mut wire = vec![ALERT, 3, 3, 0, 2, 1, 0];
        assert!(client.open(&mut wire, 0, 0).is_err());
        let (mut client, _) = pair(Version::Tls12, 1);
        let mut wire = vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1];
        assert!(
            client.open(&mut wire, 0, 0).is_err(),
            "short and unexpected"
        );
        let mut wire = vec![23, 3, 3, 0, 40];
        assert!(client.open(&mut wire, 0, 0).is_err(), "incomplete");
    }

    proptest! {
        /// Whatever the wire brings, opening fails cleanly or yields plaintext in bounds;
        /// half the cases carry a well-formed header, so that decryption is reached.
        #[test]
        fn arbitrary_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..200), typ in 20u8..24, framed in any::<bool>(), case in 0usize..4, dst in 0usize..8) {
            let (version, suite) = CASES[case];
            let (mut client, _) = pair(version, suite);
            let mut buf = vec![0u8; 8];
            if framed {
                buf.extend_from_slice(&header(typ, wire.len()).unwrap());
            }
            buf.extend_from_slice(&wire);
            if let Ok(Opened::Data(n)) = client.open(&mut buf, dst, 8) {
                prop_assert!(dst + n <= buf.len());
            }
        }

        /// A body sealed in records of any sizes opens to itself, in place, record by record.
        #[test]
        fn any_body_round_trips(body in proptest::collection::vec(any::<u8>(), 0..40_000), cuts in proptest::collection::vec(1usize..20_000, 0..5), case in 0usize..4) {
            let (version, suite) = CASES[case];
            let (mut client, mut server) = pair(version, suite);
            let mut wire = Vec::new();
            let mut rest = &body[..];
            for cut in cuts {
                let (now, later) = rest.split_at(cut.min(rest.len()));
                server.seal(now, &mut wire).unwrap();
                rest = later;
            }
            server.seal(rest, &mut wire).unwrap();
            prop_assert_eq!(open_all(&mut client, wire).unwrap().0, body);
        }
    }
}
