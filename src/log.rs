//! The error log: leveled lines to stderr or a file, with nginx's level names. Lines are
//! short and rare (errors, start-up, reloads); request data that could carry credentials
//! (signatures, `Authorization`) is never passed here.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::conf::{LogLevel, LogTarget};

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Error as u8);
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// Sets where lines go and from which level on.
pub fn init(target: &LogTarget, level: LogLevel) -> std::io::Result<()> {
    let file = match target {
        LogTarget::Stderr => None,
        LogTarget::File(path) => Some(OpenOptions::new().create(true).append(true).open(path)?),
    };
    if let Ok(mut slot) = FILE.lock() {
        *slot = file;
    }
    LEVEL.store(level as u8, Ordering::Relaxed);
    Ok(())
}

fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: LogLevel, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let name = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Notice => "notice",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    let line = format!(
        "{} [{name}] {}: {args}\n",
        crate::http::date::now(),
        std::process::id()
    );
    let mut slot = match FILE.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    match slot.as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Error, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Warn, format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::conf::LogLevel::Info, format_args!($($arg)*)) };
}
pub(crate) use {error, info, warning};

/// At most one line a second about a failure that may repeat thousands of times a second
/// (a host out of descriptors): the first at once, then one a second with the count.
#[derive(Clone, Copy, Default)]
pub struct Throttle {
    /// Failures noted since the last line.
    pending: u64,
    last: Option<Instant>,
}

impl Throttle {
    /// Notes one failure; `Some(n)` when a line is due, `n` failures since the last one
    /// (this one included).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

// === access log ===

enum AccessMsg {
    Line(String),
    Open(Option<std::path::PathBuf>),
}

/// The access log: workers hand finished lines to one writer thread over a channel, so no
/// worker ever waits on the disk; the writer flushes at least once a second.
pub struct AccessLog {
    tx: std::sync::mpsc::Sender<AccessMsg>,
}

impl AccessLog {
    pub fn start(path: Option<&std::path::Path>) -> AccessLog {
        let (tx, rx) = std::sync::mpsc::channel::<AccessMsg>();
        let _ = tx.send(AccessMsg::Open(path.map(std::path::Path::to_path_buf)));
        let spawned = std::thread::Builder::new()
            .name("tailgate-access-log".into())
            .spawn(move || {
                use std::io::BufWriter;
                use std::sync::mpsc::RecvTimeoutError;
                let mut out: Option<BufWriter<File>> = None;
                let mut dirty = false;
                loop {
                    match rx.recv_timeout(std::time::Duration::from_millis(500)) {
                        Ok(AccessMsg::Line(l)) => {
                            if let Some(w) = out.as_mut() {
                                let _ = w.write_all(l.as_bytes());
                                dirty = true;
                            }
                            continue;
                        }
                        Ok(AccessMsg::Open(p)) => {
                            if let Some(mut w) = out.take() {
                                let _ = w.flush();
                            }
                            out = p.and_then(|p| {
                                match OpenOptions::new().create(true).append(true).open(&p) {
                                    Ok(f) => Some(BufWriter::with_capacity(64 * 1024, f)),
                                    Err(e) => {
                                        error!("access_log {}: {e}", p.display());
                                        None
                                    }
                                }
                            });
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if dirty {
                        if let Some(w) = out.as_mut() {
                            let _ = w.flush();
                        }
                        dirty = false;
                    }
                }
            });
        if let Err(e) = spawned {
            error!("access log thread: {e}");
        }
        AccessLog { tx }
    }

    /// Switches to another file (a reload), or off.
    pub fn reopen(&self, path: Option<&std::path::Path>) {
        let _ = self
            .tx
            .send(AccessMsg::Open(path.map(std::path::Path::to_path_buf)));
    }

    pub fn write(&self, line: String) {
        let _ = self.tx.send(AccessMsg::Line(line));
    }
}

/// One request's access-log fields: nginx `combined` plus upstream time, upstream bytes and
/// resumes.
pub struct AccessEntry<'a> {
    pub remote: std::net::IpAddr,
    pub time: u64,
    pub request_line: &'a str,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// Seconds spent on upstream requests, `None` when there were none.
    pub upstream_time: Option<f64>,
    pub upstream_bytes: u64,
    pub resumes: u32,
}

impl AccessEntry<'_> {
    /// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
    /// "$http_user_agent" $upstream_response_time $upstream_bytes $resumes`, with request
    /// bytes escaped as nginx does (`\xHH`).
    pub fn format(&self) -> String {
        let q = |v: Option<&str>| v.map_or_else(|| "-".to_string(), escape);
        let upstream = self
            .upstream_time
            .map_or_else(|| "-".to_string(), |t| format!("{t:.3}"));
        format!(
            "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" {} {} {}\n",
            self.remote,
            crate::http::date::time_local(self.time),
            escape(self.request_line),
            self.status,
            self.body_bytes,
            q(self.referer),
            q(self.user_agent),
            upstream,
            self.upstream_bytes,
            self.resumes
        )
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_says_once_a_second_how_many_it_held_back() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.note(t0), Some(1), "the first at once");
        assert_eq!(t.note(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.note(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.note(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(t.note(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.note(t0 + Duration::from_secs(5)), Some(2));
    }

    #[test]
    fn combined_format_with_upstream_fields() {
        let e = AccessEntry {
            remote: "127.0.0.1".parse().unwrap(),
            time: 784_111_777,
            request_line: "GET /apk/a/b.apk HTTP/1.1",
            status: 206,
            body_bytes: 10,
            referer: None,
            user_agent: Some("curl/8 \"x\""),
            upstream_time: Some(0.0123),
            upstream_bytes: 10,
            resumes: 1,
        };
        assert_eq!(
            e.format(),
            "127.0.0.1 - - [06/Nov/1994:08:49:37 +0000] \"GET /apk/a/b.apk HTTP/1.1\" 206 10 \"-\" \"curl/8 \\x22x\\x22\" 0.012 10 1\n"
        );
    }
}
