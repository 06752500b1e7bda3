//! Every bound the host enforces on a plugin: the per-handler [`Limits`]
//! the configuration sets, and the fixed bounds of the contract that no
//! configuration can raise.
//!
//! Plain data with no dependencies, so configuration, grants, capabilities
//! and the runtime can all name the same numbers.

use std::time::Duration;

/// Largest `COUNT` passed to the cache backend; larger requests are clamped
/// so one step cannot block the cache server for long.
pub const MAX_SCAN_COUNT: u32 = 10_000;
/// Longest pattern or key accepted.
pub const MAX_KEY_BYTES: usize = 4096;
/// Most keys one `delete` may name.
pub const MAX_DELETE_KEYS: usize = 10_000;
/// Longest graph identifier (label, relation kind, property key) accepted.
pub const MAX_IDENTIFIER_BYTES: usize = 128;
/// Most properties one upsert may set.
pub const MAX_PROPERTIES: usize = 256;

/// Limits applied to every event of one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one event may take, host calls included.
    pub deadline: Duration,
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Most import calls one event may make.
    pub max_host_calls: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            max_host_calls: 10_000,
        }
    }
}
