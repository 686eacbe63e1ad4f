//! Logging to the host's log under the plugin's name: `info!("...")` and friends.
//!
//! The host's level is read when the plugin is configured; a message below it costs a
//! comparison, not a hostcall.

use std::cell::Cell;
use std::fmt;

/// Log levels of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

thread_local! {
    static LEVEL: Cell<u32> = const { Cell::new(0) };
}

/// Reads the host's level again (done for you before `Plugin::configure`).
pub fn refresh_level() {
    if let Ok(level) = crate::sys::log_level() {
        LEVEL.with(|l| l.set(level));
    }
}

/// Whether a message at `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u32 >= LEVEL.with(Cell::get)
}

/// Writes a message; use the macros.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let msg = match args.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(args.to_string()),
    };
    // Nowhere to report a failed log call.
    let _ = crate::sys::log(level as u32, &msg);
}

#[macro_export]
macro_rules! trace { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Trace, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
