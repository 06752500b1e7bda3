//! Valkey/Redis cache backend over the `redis` crate.
//!
//! One multiplexed, self-reconnecting connection per backend. `scan` sends
//! exactly one `SCAN` step with the plugin's own cursor, so a failure in the
//! middle of a sweep reaches the plugin instead of ending an iterator early.
//! Connection failures and timeouts are [`BackendError::Unavailable`].

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use super::{BackendError, CacheBackend, ScanPage};

const BACKEND: &str = "valkey";

/// A Valkey or Redis server.
#[derive(Clone)]
pub struct ValkeyCache {
    connection: ConnectionManager,
}

/// How long one command may take before the call reports `unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl ValkeyCache {
    /// Connects to `url` (`redis://host:port/db`). Fails if the server does
    /// not answer now; later outages are retried per command.
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        let client = Client::open(url).map_err(|e| BackendError::Invalid {
            backend: BACKEND,
            detail: format!("bad URL {url:?}: {e}"),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| classify(&e))?;
        Ok(ValkeyCache { connection })
    }
}

fn classify(error: &RedisError) -> BackendError {
    let detail = error.to_string();
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
    {
        BackendError::Unavailable {
            backend: BACKEND,
            detail,
        }
    } else {
        BackendError::Other {
            backend: BACKEND,
            detail,
        }
    }
}

#[async_trait]
impl CacheBackend for ValkeyCache {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn scan(&self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, BackendError> {
        let mut connection = self.connection.clone();
        let (cursor, raw_keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))?;
        let keys = raw_keys
            .into_iter()
            .map(|key| {
                String::from_utf8(key).map_err(|e| BackendError::Other {
                    backend: BACKEND,
                    detail: format!(
                        "key {:?} is not UTF-8 and cannot be handed to a plugin",
                        String::from_utf8_lossy(e.as_bytes())
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScanPage { cursor, keys })
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let mut connection = self.connection.clone();
        redis::cmd("UNLINK")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}
