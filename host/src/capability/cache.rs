//! `cache`: `scan` and `delete` against the handler's cache backend.

use tracing::instrument;

use crate::backend::ScanPage;
use crate::bindings::cache::{Host, ScanPage as WitScanPage};
use crate::bindings::types::Error as WitError;
use crate::capability::HostState;

/// Largest `COUNT` passed to the backend; larger requests are clamped so one
/// step cannot block the cache server for long.
pub const MAX_SCAN_COUNT: u32 = 10_000;
/// Longest pattern or key accepted.
pub const MAX_KEY_BYTES: usize = 4096;
/// Most keys one `delete` may name.
pub const MAX_DELETE_KEYS: usize = 10_000;

impl Host for HostState {
    #[instrument(skip(self), fields(handler = %self.env.name, backend = self.env.backends.cache.kind()))]
    async fn scan(
        &mut self,
        pattern: String,
        cursor: u64,
        count: u32,
    ) -> wasmtime::Result<Result<WitScanPage, WitError>> {
        self.charge_call()?;
        if pattern.is_empty() || pattern.len() > MAX_KEY_BYTES {
            return Ok(Err(self.invalid(format!(
                "scan pattern must be 1 to {MAX_KEY_BYTES} bytes, got {}",
                pattern.len()
            ))));
        }
        let count = count.clamp(1, MAX_SCAN_COUNT);
        let cache = self.env.backends.cache.clone();
        match cache.scan(&pattern, cursor, count).await {
            Ok(ScanPage { cursor, keys }) => {
                self.effects.keys_scanned += keys.len() as u64;
                Ok(Ok(WitScanPage { cursor, keys }))
            }
            Err(error) => {
                tracing::warn!(handler = %self.env.name, %pattern, %error, "cache scan failed");
                Ok(Err(self.backend_error(error)))
            }
        }
    }

    #[instrument(skip(self, keys), fields(handler = %self.env.name, backend = self.env.backends.cache.kind(), keys = keys.len()))]
    async fn delete(&mut self, keys: Vec<String>) -> wasmtime::Result<Result<u64, WitError>> {
        self.charge_call()?;
        if keys.len() > MAX_DELETE_KEYS {
            return Ok(Err(self.invalid(format!(
                "delete names {} keys, more than the {MAX_DELETE_KEYS} allowed in one call",
                keys.len()
            ))));
        }
        if let Some(key) = keys.iter().find(|k| k.len() > MAX_KEY_BYTES) {
            return Ok(Err(self.invalid(format!(
                "key of {} bytes is longer than {MAX_KEY_BYTES}",
                key.len()
            ))));
        }
        if keys.is_empty() {
            return Ok(Ok(0));
        }
        let cache = self.env.backends.cache.clone();
        match cache.delete(&keys).await {
            Ok(removed) => {
                self.effects.keys_deleted += removed;
                Ok(Ok(removed))
            }
            Err(error) => {
                tracing::warn!(handler = %self.env.name, keys = keys.len(), %error, "cache delete failed");
                Ok(Err(self.backend_error(error)))
            }
        }
    }
}
