//! The error log: leveled lines to stderr or a file, with nginx's level names. Lines are
//! short and rare (errors, start-up, reloads); request data that could carry credentials
//! (signatures, `Authorization`) is never passed here.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

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

pub fn enabled(level: LogLevel) -> bool {
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
