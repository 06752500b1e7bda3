//! The standard `process_*` series (as Prometheus' client libraries name
//! them), read from `/proc/self` at each scrape. On a system without
//! `/proc` they stay at zero.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Clock ticks per second of `/proc/self/stat` times: Linux's USER_HZ,
/// 100 on every architecture it exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Process {
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU time already added to the counter.
    cpu_seen: Mutex<f64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
}

impl Process {
    /// Registers the series in `registry` (which should have no prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let process = Process {
            cpu_seconds: Counter::default(),
            cpu_seen: Mutex::new(0.0),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            threads: Gauge::default(),
            start_time_seconds: Gauge::default(),
        };
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            process.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            process.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            process.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The limit on open file descriptors",
            process.max_fds.clone(),
        );
        registry.register(
            "process_threads",
            "Operating-system threads",
            process.threads.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            process.start_time_seconds.clone(),
        );
        process.refresh();
        process
    }

    /// Reads `/proc/self` into the series.
    pub fn refresh(&self) {
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
            let cpu = (stat.utime + stat.stime) as f64 / TICKS_PER_SECOND;
            let mut seen = crate::lock(&self.cpu_seen);
            if cpu > *seen {
                self.cpu_seconds.inc_by(cpu - *seen);
                *seen = cpu;
            }
            self.threads.set(stat.threads);
            self.virtual_bytes.set(stat.vsize);
            if let Some(boot) = read("/proc/stat").as_deref().and_then(boot_time) {
                self.start_time_seconds
                    .set(boot + stat.starttime as f64 / TICKS_PER_SECOND);
            }
        }
        if let Some(kib) = read("/proc/self/status")
            .as_deref()
            .and_then(|s| field(s, "VmRSS:"))
        {
            self.resident_bytes.set(kib * 1024);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(entries.count() as i64);
        }
        if let Some(limit) = read("/proc/self/limits")
            .as_deref()
            .and_then(max_open_files)
        {
            self.max_fds.set(limit);
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: i64,
    starttime: u64,
    vsize: i64,
}

impl Stat {
    /// `pid (comm) state ppid ...`: the command may hold spaces and
    /// parentheses, so fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command, field 3 (state) is index 0: utime is field 14.
        let at = |field: usize| fields.get(field - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Stat {
            utime: at(14)?,
            stime: at(15)?,
            threads: i64::try_from(at(20)?).ok()?,
            starttime: at(22)?,
            vsize: i64::try_from(at(23)?).ok()?,
        })
    }
}

/// `btime` of `/proc/stat`: when the system booted, in Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The number after `name` in a `/proc/self/status` line.
fn field(status: &str, name: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 70 0 0 20 0 9 0 1234 567890 321 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 70,
                threads: 9,
                starttime: 1234,
                vsize: 567890,
            })
        );
    }

    #[test]
    fn this_process_reports_memory_threads_and_descriptors() {
        let mut registry = Registry::default();
        let process = Process::register(&mut registry);
        assert!(process.resident_bytes.get() > 0);
        assert!(process.threads.get() >= 1);
        assert!(process.open_fds.get() >= 3);
        assert!(process.max_fds.get() >= process.open_fds.get());
        assert!(process.start_time_seconds.get() > 1.6e9);
    }
}
