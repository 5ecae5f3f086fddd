#![no_main]
use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use tailgate::upstream::record::{record_len, Keys, Opened, Session, Version};

/// Key generations both ends derive alike; tickets are accepted.
struct Generations(u8, u8);

fn secrets(chacha: bool, generation: u8) -> ConnectionTrafficSecrets {
    let key = AeadKey::from([generation; 32]);
    let iv = Iv::new([generation ^ 0x5a; 12]);
    if chacha {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    } else {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

impl Keys for Generations {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.1 = self.1.wrapping_add(1);
        Ok((0, secrets(self.0 == 1, self.1)))
    }
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.1 = self.1.wrapping_add(1);
        Ok((0, secrets(self.0 == 1, self.1)))
    }
    fn ticket(&mut self, _: &[u8]) -> Result<(), rustls::Error> {
        Ok(())
    }
}

fn session(version: Version, chacha: bool) -> Session<Generations> {
    let s = ExtractedSecrets {
        tx: (0, secrets(chacha, 0)),
        rx: (0, secrets(chacha, 0)),
    };
    Session::new(version, s, Generations(chacha as u8, 0), u64::MAX).unwrap()
}

// Records of any type and content, sealed by a peer, optionally with one bit flipped,
// then opened in place one after another (or raw bytes opened as records): opening never
// panics, and each record's plaintext ends inside the record it came from.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let version = if mode & 1 == 0 { Version::Tls13 } else { Version::Tls12 };
    let chacha = mode & 2 != 0;
    let mut wire = Vec::new();
    if mode & 4 != 0 {
        // Raw bytes, no peer.
        wire.extend_from_slice(rest);
    } else {
        let mut peer = session(version, chacha);
        while let [typ, len, tail @ ..] = rest {
            let (content, after) = tail.split_at(usize::from(*len).min(tail.len()));
            if peer.seal_record(*typ, content, &mut wire).is_err() {
                return;
            }
            rest = after;
        }
        if mode & 8 != 0 && !wire.is_empty() {
            let at = usize::from(mode >> 4) * 97 % wire.len();
            wire[at] ^= 1;
        }
    }
    let mut ours = session(version, chacha);
    let (mut w, mut r) = (0, 0);
    while let Ok(Some(len)) = record_len(&wire[r..]) {
        if r + len > wire.len() {
            break;
        }
        match ours.open(&mut wire, w, r) {
            Ok(Opened::Data(n)) => {
                assert!(w + n <= r + len);
                w += n;
            }
            Ok(Opened::Control) => {}
            Ok(Opened::Closed) | Err(_) => break,
        }
        r += len;
    }
});
