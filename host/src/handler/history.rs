//! A handler's reload history: which versions went live, the last offer's
//! result, and the longest pointer swap, for `status`.

use serde::Serialize;

use crate::process::now_ms;

/// The outcome of the last offer of a version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadResult {
    pub digest: String,
    pub ok: bool,
    /// Why it was refused, when it was.
    pub reason: Option<String>,
    /// Where the version came from (a path, a push).
    pub origin: String,
    pub at_ms: u64,
}

/// A handler's reload history, for `status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadState {
    /// The pushed version live now ([`crate::fleet::control::Version::name`]);
    /// none for a plugin file.
    pub version: Option<String>,
    /// Versions that went live, oldest first (at most [`HISTORY`]).
    pub history: Vec<ReloadResult>,
    pub last: Option<ReloadResult>,
    /// The longest a swap held the live pointer, in nanoseconds: the most
    /// any consumer could have waited on a reload.
    pub longest_swap_ns: u64,
}

/// Live versions remembered per handler.
pub const HISTORY: usize = 32;

impl ReloadState {
    /// Records the result of offering version `digest` from `origin`;
    /// `reason` is why it was refused, `None` when it went live.
    pub fn record(&mut self, digest: &str, reason: Option<String>, origin: &str) {
        let result = ReloadResult {
            digest: digest.to_string(),
            ok: reason.is_none(),
            reason,
            origin: origin.to_string(),
            at_ms: now_ms(),
        };
        if result.ok {
            self.history.push(result.clone());
            let excess = self.history.len().saturating_sub(HISTORY);
            self.history.drain(..excess);
        }
        self.last = Some(result);
    }
}
