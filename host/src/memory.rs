//! Whether the instance pool fits the memory the process may use: the
//! worst case is every instance slot taken by the handler with the largest
//! `memory_mib`, on top of what the host itself holds.

use crate::config::Config;

/// What the host holds besides guest memory (engine, compiled plugins,
/// connections, buffers), in MiB: a measured working set with headroom.
pub const HOST_MIB: u64 = 160;

/// The worst case of a configuration, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub instances: u64,
    pub instance_mib: u64,
    pub total_mib: u64,
}

/// The most memory the pool and the host could take together.
pub fn need(config: &Config) -> Need {
    let instances = u64::from(config.runtime.max_instances);
    let instance_mib = config
        .handlers
        .iter()
        .map(|h| u64::from(h.memory_mib))
        .max()
        .unwrap_or(0);
    Need {
        instances,
        instance_mib,
        total_mib: instances * instance_mib + HOST_MIB,
    }
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Within the limit (or no limit known).
    Fits,
    /// Over the cgroup limit: start, but say so.
    Warn(String),
    /// Over `runtime.memory_budget_mib`: do not start.
    Refuse(String),
}

/// Checks `config` against its configured budget, else against
/// `cgroup_limit_mib` (the process's memory limit, when it has one).
pub fn check(config: &Config, cgroup_limit_mib: Option<u64>) -> Fit {
    let need = need(config);
    let pool = format!(
        "runtime.max_instances {} x memory_mib {} MiB + {HOST_MIB} MiB for the host = {} MiB",
        need.instances, need.instance_mib, need.total_mib
    );
    if let Some(budget) = config.runtime.memory_budget_mib {
        if need.total_mib > budget {
            return Fit::Refuse(format!(
                "config key `runtime.memory_budget_mib`: the instance pool could need {pool}, \
                 more than the budget of {budget} MiB; lower runtime.max_instances or memory_mib, \
                 or raise the budget"
            ));
        }
        return Fit::Fits;
    }
    match cgroup_limit_mib {
        Some(limit) if need.total_mib > limit => Fit::Warn(format!(
            "the instance pool could need {pool}, more than this process's memory limit of \
             {limit} MiB: under load it may be killed for memory. Lower runtime.max_instances \
             or memory_mib, or set runtime.memory_budget_mib to refuse such a start"
        )),
        _ => Fit::Fits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_instances: u32, memory_mib: u32, budget: Option<u64>) -> Config {
        let text = format!(
            r#"
[nats]
url = "nats://127.0.0.1:4222"
stream = "S"
stream_subjects = ["s.>"]
[cache]
url = "memory://"
[graph]
url = "memory://"
[runtime]
max_instances = {max_instances}
{budget}
[[handlers]]
name = "h"
plugin = "h.wasm"
subjects = ["s.x"]
durable = "h"
memory_mib = {memory_mib}
[handlers.grants]
cache_keys = ["k:*"]
"#,
            budget = budget
                .map(|b| format!("memory_budget_mib = {b}"))
                .unwrap_or_default()
        );
        Config::parse(&text, "test.toml", std::iter::empty()).unwrap()
    }

    #[test]
    fn a_pool_over_the_budget_is_refused_with_the_numbers() {
        let Fit::Refuse(message) = check(&config(128, 64, Some(2048)), None) else {
            panic!("expected a refusal");
        };
        assert!(
            message.starts_with("config key `runtime.memory_budget_mib`"),
            "{message}"
        );
        assert!(message.contains("128 x memory_mib 64 MiB"), "{message}");
        assert!(
            message.contains(&format!("{} MiB", 128 * 64 + HOST_MIB)),
            "{message}"
        );
    }

    #[test]
    fn a_pool_within_the_budget_fits_whatever_the_cgroup_says() {
        assert_eq!(check(&config(16, 64, Some(2048)), Some(100)), Fit::Fits);
    }

    #[test]
    fn a_pool_over_the_cgroup_limit_is_a_warning() {
        assert!(matches!(
            check(&config(128, 64, None), Some(2048)),
            Fit::Warn(_)
        ));
        assert_eq!(check(&config(16, 64, None), Some(2048)), Fit::Fits);
        assert_eq!(check(&config(128, 64, None), None), Fit::Fits);
    }
}
