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

/// The memory limit of this process's cgroup in MiB, if it has one: the
/// lowest `memory.max` from its cgroup (v2) up to the root, or v1's
/// `memory.limit_in_bytes`.
pub fn memory_limit_mib() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let limit = |path: &std::path::Path| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let bytes: u64 = text.trim().parse().ok()?;
        // v1 reports "no limit" as a number near 2^63.
        (bytes < 1 << 60).then_some(bytes >> 20)
    };
    // The lowest limit from the cgroup's directory up to the hierarchy's root.
    let lowest = |root: &str, path: &str, file: &str| -> Option<u64> {
        let root = std::path::Path::new(root);
        let mut dir = root.join(path.trim_start_matches('/'));
        let mut lowest: Option<u64> = None;
        loop {
            if let Some(mib) = limit(&dir.join(file)) {
                lowest = Some(lowest.map_or(mib, |l: u64| l.min(mib)));
            }
            if dir.as_path() == root || !dir.pop() {
                return lowest;
            }
        }
    };
    let v2 = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| lowest("/sys/fs/cgroup", path, "memory.max"));
    // v1 (or a hybrid host): the memory controller's hierarchy; inside a
    // container its own cgroup is often mounted at the root.
    let v1 = || {
        let path = cgroups.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })?;
        lowest("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    };
    v2.or_else(v1)
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
