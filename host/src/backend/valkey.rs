//! Valkey/Redis cache backend over the `redis` crate.
//!
//! One multiplexed, self-reconnecting connection per backend. `scan` sends
//! exactly one `SCAN` step with the plugin's own cursor, so a failure in the
//! middle of a sweep reaches the plugin instead of ending an iterator early.
//! Connection failures and timeouts are [`BackendError::Unavailable`].
//!
//! `delete_matching` goes through the backend's [`Sweeper`]: one sweep of
//! the keyspace serves every call waiting for it. Exact keys skip the
//! sweep: they are unlinked by name, on the multiplexed connection, which
//! pipelines concurrent commands.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo as _, RedisError, TlsCertificates,
};

use super::sweep::{Groups, Keyspace, Sweeper, UNLINK_CHUNK};
use super::{BackendError, CacheBackend, ScanPage, Swept};
use crate::glob::Compiled;
use crate::secret::mask_url;

const BACKEND: &str = "valkey";

/// A Valkey or Redis server.
#[derive(Clone)]
pub struct ValkeyCache {
    connection: ConnectionManager,
    sweeper: Sweeper,
}

/// How long one command may take before the call reports `unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach a server beyond its URL: ACL credentials (taking the
/// place of any in the URL) and, for `rediss://`, the certificates (PEM).
/// Its `Debug` never prints a secret.
#[derive(Clone, Default)]
pub struct ValkeyOptions {
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA certificates to verify the server with, instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that ask for one.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any server certificate (`rediss://` only). For testing.
    pub insecure: bool,
}

impl std::fmt::Debug for ValkeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyOptions")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ValkeyCache {
    /// Connects to `url` (`redis://host:port/db`). Fails if the server does
    /// not answer now; later outages are retried per command.
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, &ValkeyOptions::default()).await
    }

    /// [`connect`](Self::connect) with credentials and TLS settings. A
    /// `rediss://` server whose certificate does not verify is refused.
    pub async fn connect_with(url: &str, options: &ValkeyOptions) -> Result<Self, BackendError> {
        let invalid = |e: RedisError| BackendError::Invalid {
            backend: BACKEND,
            detail: format!("bad URL {:?}: {e}", mask_url(url)),
        };
        let mut info = url.into_connection_info().map_err(invalid)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &options.user {
            settings = settings.set_username(user);
        }
        if let Some(password) = &options.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        if options.insecure
            && let ConnectionAddr::TcpTls {
                host,
                port,
                tls_params,
                ..
            } = info.addr().clone()
        {
            info = info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            });
        }
        let client = if options.ca.is_some() || options.client_cert.is_some() {
            let certificates = TlsCertificates {
                client_tls: options
                    .client_cert
                    .clone()
                    .map(|(client_cert, client_key)| ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                root_cert: options.ca.clone(),
            };
            Client::build_with_tls(info, certificates).map_err(|e| BackendError::Invalid {
                backend: BACKEND,
                detail: format!("TLS settings for {:?}: {e}", mask_url(url)),
            })?
        } else {
            Client::open(info).map_err(invalid)?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| refused(&e).unwrap_or_else(|| classify(&e)))?;
        Ok(ValkeyCache::on(connection))
    }
}

impl ValkeyCache {
    /// The backend on an open connection; starts its sweeper.
    fn on(connection: ConnectionManager) -> Self {
        let sweeper = Sweeper::start(Server(connection.clone()));
        ValkeyCache {
            connection,
            sweeper,
        }
    }

    /// The sweeper's running totals.
    pub fn sweeps(&self) -> &super::sweep::SweepStats {
        self.sweeper.stats()
    }

    /// Unlinks exact keys (as bytes), one command each in one pipeline:
    /// the keys that existed.
    async fn unlink_exact(&self, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.per_key("UNLINK", keys).await
    }

    /// `command KEY` for each key in one pipeline: the keys it answered
    /// non-zero for.
    async fn per_key(&self, command: &str, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd(command).arg(*key);
        }
        let mut connection = self.connection.clone();
        let answers: Vec<u64> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))?;
        Ok(keys
            .iter()
            .zip(answers)
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k.to_vec())
            .collect())
    }
}

/// The one server's keyspace, as the sweeper walks it.
#[derive(Clone)]
struct Server(ConnectionManager);

#[async_trait]
impl Keyspace for Server {
    type Node = ();

    async fn nodes(&self) -> Result<Vec<()>, BackendError> {
        Ok(vec![()])
    }

    async fn scan(
        &self,
        _node: &(),
        cursor: u64,
        pattern: Option<&[u8]>,
        count: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), BackendError> {
        let mut command = redis::cmd("SCAN");
        command.arg(cursor);
        if let Some(pattern) = pattern {
            command.arg("MATCH").arg(pattern);
        }
        command.arg("COUNT").arg(count);
        command
            .query_async(&mut self.0.clone())
            .await
            .map_err(|e| classify(&e))
    }

    /// Every group's commands in one pipeline; a group split over several
    /// commands is summed back into one count.
    async fn unlink(&self, groups: &Groups) -> Result<Vec<u64>, BackendError> {
        let mut pipe = redis::pipe();
        let mut commands_per_group = Vec::with_capacity(groups.len());
        for (_, keys) in groups {
            let chunks = keys.chunks(UNLINK_CHUNK);
            commands_per_group.push(chunks.len());
            for chunk in chunks {
                pipe.cmd("UNLINK").arg(chunk);
            }
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.0.clone())
            .await
            .map_err(|e| classify(&e))?;
        let mut counts = counts.into_iter();
        Ok(commands_per_group
            .iter()
            .map(|&n| counts.by_ref().take(n).sum())
            .collect())
    }
}

/// The keys of a `SCAN` page a plugin can receive: a plugin's `string`
/// cannot carry a key that is not UTF-8, so such keys are skipped with a
/// warning (`delete-matching` deletes them).
pub(super) fn utf8_keys(raw_keys: Vec<Vec<u8>>, pattern: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(raw_keys.len());
    for key in raw_keys {
        match String::from_utf8(key) {
            Ok(key) => keys.push(key),
            Err(error) => tracing::warn!(
                key = %String::from_utf8_lossy(error.as_bytes()).escape_debug(),
                %pattern,
                "scan skipped a key that is not UTF-8 (delete-matching deletes such keys)"
            ),
        }
    }
    keys
}

/// A failed connect that retrying cannot fix: credentials refused, or TLS
/// failed.
pub(super) fn refused(error: &RedisError) -> Option<BackendError> {
    let detail = if let Some(tls) = crate::tls::failure(error, "cache.ca_file") {
        tls
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        format!("{error} (check cache.user and cache.password or password_file)")
    } else {
        return None;
    };
    Some(BackendError::Refused {
        backend: BACKEND,
        detail,
    })
}

pub(super) fn classify(error: &RedisError) -> BackendError {
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
        Ok(ScanPage {
            cursor,
            keys: utf8_keys(raw_keys, pattern),
        })
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let mut connection = self.connection.clone();
        redis::cmd("UNLINK")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))
    }

    async fn delete_matching(&self, patterns: &[Compiled]) -> Result<Swept, BackendError> {
        self.sweeper
            .delete_matching(
                patterns,
                |exact| async move { self.unlink_exact(&exact).await },
            )
            .await
    }

    async fn find_matching(&self, patterns: &[Compiled]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.sweeper
            .find_matching(patterns, |exact| async move {
                self.per_key("EXISTS", &exact).await
            })
            .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    fn sweep_totals(&self) -> Option<super::SweepTotals> {
        Some(self.sweeper.totals())
    }
}
