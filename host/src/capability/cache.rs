//! `cache`: `scan`, `delete` and `delete-matching` against the handler's
//! cache backend.
//!
//! All are limited to the handler's `cache_keys` grant (see
//! [`crate::grant`]): a scan only with a pattern whose every possible match
//! is granted, a delete only of granted keys, at most `max_delete_keys` at
//! a time; `delete-matching` checks each pattern once, like a scan, before
//! the backend sees any of them.

use tracing::instrument;

use crate::backend::{ScanPage, Swept};
use crate::bindings::cache::{Host, ScanPage as WitScanPage};
use crate::bindings::types::Error as WitError;
use crate::capability::HostState;
use crate::glob::Compiled;
use crate::limits::{MAX_DELETE_KEYS, MAX_KEY_BYTES, MAX_SCAN_COUNT};

impl Host for HostState {
    #[instrument(level = "debug", skip(self), fields(handler = %self.env.name, backend = self.env.backends.cache.kind()))]
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
        if let Err(denial) = self.env.grants.check_scan(&pattern) {
            tracing::warn!(handler = %self.env.name, subject = %self.subject, sequence = self.sequence, pattern = ?denial.offending, "cache scan denied: {}", denial.message);
            return Ok(Err(self.denied(denial.message)));
        }
        let count = count.clamp(1, MAX_SCAN_COUNT);
        let cache = self.env.backends.cache.clone();
        let started = std::time::Instant::now();
        let result = cache.scan(&pattern, cursor, count).await;
        self.effects.timed("cache.scan", started);
        match result {
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

    #[instrument(level = "debug", skip(self, keys), fields(handler = %self.env.name, backend = self.env.backends.cache.kind(), keys = keys.len()))]
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
        if let Err(denial) = self.env.grants.check_delete(&keys) {
            tracing::warn!(handler = %self.env.name, subject = %self.subject, sequence = self.sequence, key = ?denial.offending, "cache delete denied: {}", denial.message);
            return Ok(Err(self.denied(denial.message)));
        }
        let cache = self.env.backends.cache.clone();
        let started = std::time::Instant::now();
        let result = cache.delete(&keys).await;
        self.effects.timed("cache.delete", started);
        match result {
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

    #[instrument(level = "debug", skip(self, patterns), fields(handler = %self.env.name, backend = self.env.backends.cache.kind(), patterns = patterns.len()))]
    async fn delete_matching(
        &mut self,
        patterns: Vec<String>,
    ) -> wasmtime::Result<Result<u64, WitError>> {
        self.charge_call()?;
        if patterns.len() > MAX_DELETE_KEYS {
            return Ok(Err(self.invalid(format!(
                "delete-matching names {} patterns, more than the {MAX_DELETE_KEYS} allowed in one call",
                patterns.len()
            ))));
        }
        if let Some(pattern) = patterns
            .iter()
            .find(|p| p.is_empty() || p.len() > MAX_KEY_BYTES)
        {
            return Ok(Err(self.invalid(format!(
                "pattern must be 1 to {MAX_KEY_BYTES} bytes, got {}",
                pattern.len()
            ))));
        }
        if patterns.is_empty() {
            return Ok(Ok(0));
        }
        if let Err(denial) = self.env.grants.check_pattern_count(patterns.len()) {
            return Ok(Err(self.denied(denial.message)));
        }
        let mut compiled = Vec::with_capacity(patterns.len());
        for pattern in &patterns {
            let one = Compiled::new(pattern.as_bytes());
            if let Err(denial) = self.env.grants.check_compiled(pattern, &one) {
                tracing::warn!(handler = %self.env.name, subject = %self.subject, sequence = self.sequence, pattern = ?denial.offending, "cache delete-matching denied: {}", denial.message);
                return Ok(Err(self.denied(denial.message)));
            }
            compiled.push(one);
        }
        let cache = self.env.backends.cache.clone();
        let started = std::time::Instant::now();
        let result = cache.delete_matching(&compiled).await;
        self.effects.timed("cache.delete-matching", started);
        match result {
            Ok(Swept { deleted, .. }) => {
                self.effects.keys_deleted += deleted;
                Ok(Ok(deleted))
            }
            Err(error) => {
                tracing::warn!(handler = %self.env.name, patterns = patterns.len(), %error, "cache delete-matching failed");
                Ok(Err(self.backend_error(error)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::memory::MemoryCache;
    use crate::capability::HandlerEnv;
    use crate::grant::{Grants, GrantsConfig};
    use crate::limits::Limits;

    fn granted(cache_keys: &[&str]) -> (HostState, MemoryCache) {
        let (backends, cache, _) = crate::backend::memory::backends();
        for key in ["context:S1", "context:S1:dev", "other:S1"] {
            cache.set(key, "v");
        }
        let grants = Grants::new(&GrantsConfig {
            cache_keys: cache_keys.iter().map(|k| k.to_string()).collect(),
            max_delete_keys: 2,
            ..GrantsConfig::default()
        });
        let env =
            HandlerEnv::with_grants("h", BTreeMap::new(), backends, Limits::default(), grants);
        (HostState::new(env, "s".into(), 1), cache)
    }

    #[tokio::test]
    async fn scan_inside_the_grant_runs() {
        let (mut state, _) = granted(&["context:*"]);
        let page = state
            .scan("context:S1:*".into(), 0, 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.keys, ["context:S1:dev"]);
        assert_eq!(state.effects.errors.denied, 0);
    }

    #[tokio::test]
    async fn scan_of_everything_is_denied_and_counted() {
        let (mut state, _) = granted(&["context:*"]);
        match state.scan("*".into(), 0, 100).await.unwrap() {
            Err(WitError::Denied(message)) => {
                assert!(message.contains("it can match"), "{message}")
            }
            other => panic!("expected denied, got {other:?}"),
        }
        assert_eq!(state.effects.errors.denied, 1);
        assert_eq!(state.effects.keys_scanned, 0);
    }

    #[tokio::test]
    async fn delete_outside_the_grant_deletes_nothing() {
        let (mut state, cache) = granted(&["context:*"]);
        let result = state
            .delete(vec!["context:S1".into(), "other:S1".into()])
            .await
            .unwrap();
        assert!(
            matches!(result, Err(WitError::Denied(ref m)) if m.contains("\"other:S1\"")),
            "{result:?}"
        );
        assert_eq!(cache.len(), 3, "a refused delete removes none of its keys");
        assert_eq!(state.effects.errors.denied, 1);
        let result = state
            .delete(vec![
                "context:a".into(),
                "context:b".into(),
                "context:c".into(),
            ])
            .await
            .unwrap();
        assert!(
            matches!(result, Err(WitError::Denied(ref m)) if m.contains("max_delete_keys")),
            "{result:?}"
        );
        assert_eq!(
            state
                .delete(vec!["context:S1".into(), "context:S1:dev".into()])
                .await
                .unwrap(),
            Ok(2)
        );
        assert_eq!(cache.keys(), ["other:S1"]);
    }

    /// Log output captured for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_denied_call_is_logged_with_the_handler_and_what_it_named() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (mut state, _) = granted(&["context:*"]);
        // A callsite first hit by another test thread while this subscriber
        // was being registered can cache "no interest". Once every callsite
        // here is registered, rebuilding the cache makes the run below see
        // this subscriber.
        let _ = state.scan("*".into(), 0, 10).await.unwrap();
        let _ = state.delete(vec!["other:S1".into()]).await.unwrap();
        tracing::callsite::rebuild_interest_cache();
        captured.0.lock().unwrap().clear();
        let _ = state.scan("*".into(), 0, 10).await.unwrap();
        let _ = state.delete(vec!["other:S1".into()]).await.unwrap();
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let scan = logs
            .lines()
            .find(|l| l.contains("cache scan denied"))
            .unwrap_or_else(|| panic!("{logs}"));
        assert!(
            scan.contains("WARN") && scan.contains("handler=h") && scan.contains("pattern=\"*\""),
            "{scan}"
        );
        let delete = logs
            .lines()
            .find(|l| l.contains("cache delete denied"))
            .unwrap_or_else(|| panic!("{logs}"));
        assert!(
            delete.contains("handler=h") && delete.contains("key=\"other:S1\""),
            "{delete}"
        );
    }

    #[tokio::test]
    async fn a_handler_without_grants_reaches_no_key() {
        let (mut state, cache) = granted(&[]);
        assert!(matches!(
            state.scan("context:S1:*".into(), 0, 10).await.unwrap(),
            Err(WitError::Denied(_))
        ));
        assert!(matches!(
            state.delete(vec!["context:S1".into()]).await.unwrap(),
            Err(WitError::Denied(_))
        ));
        assert_eq!(cache.len(), 3);
        assert_eq!(state.effects.errors.denied, 2);
    }
}
