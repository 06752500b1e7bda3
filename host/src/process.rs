//! Facts about this process that status, version history and leases
//! record: the machine's name, who runs it, and the wall clock.

use std::time::SystemTime;

/// This machine's name, for status, history and lease holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `user@host` of whoever runs this process, for a pushed version's history.
pub fn user_at_host() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    millis_since_epoch(SystemTime::now())
}

/// `time` in milliseconds since the Unix epoch (0 if before it).
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
