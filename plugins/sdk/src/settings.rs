//! The handler's configuration (`[handlers.config]`), typed, with defaults.

use std::str::FromStr;

use crate::config;

/// The value of `key`, if the handler's configuration has one.
pub fn get(key: &str) -> Option<String> {
    config::get(key)
}

/// The value of `key`, or `default`.
pub fn get_or(key: &str, default: &str) -> String {
    config::get(key).unwrap_or_else(|| default.to_string())
}

/// `key` parsed as `T`, or `default` when it is not set; a value that does
/// not parse is an error naming the key, to reject or log with.
pub fn parse_or<T: FromStr>(key: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match config::get(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|e| format!("config key `{key}` = {text:?}: {e}")),
    }
}
