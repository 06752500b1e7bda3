//! Facts about this process that status, version history and leases
//! record: the machine's name, who runs it, and the wall clock.

use std::time::SystemTime;

/// This machine's name, for status, history and lease holders.
pub fn hostname() -> String {
    let file = |path: &str| std::fs::read_to_string(path).ok();
    file("/proc/sys/kernel/hostname")
        .or_else(|| file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `user@host` of whoever runs this process, for a pushed version's history.
pub fn user_at_host() -> String {
    format!("{}@{}", user(), hostname())
}

/// The user running this process: `$USER`, `$LOGNAME`, else the name of
/// its uid in `/etc/passwd` (containers and CI rarely set `$USER`), else
/// `uid <n>`.
pub fn user() -> String {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(user) = set("USER").or_else(|| set("LOGNAME")) {
        return user;
    }
    let Some(uid) = uid() else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The real uid, from `/proc/self/status`.
fn uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_and_host_are_never_empty_or_unknown_on_linux() {
        let who = user_at_host();
        let (user, host) = who.split_once('@').expect("user@host");
        assert!(!user.is_empty() && user != "unknown", "{who}");
        assert!(!host.is_empty(), "{who}");
    }
}
