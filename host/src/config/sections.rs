//! The configuration's sections: the whole file, NATS, the cache, the
//! graph, HTTP and the runtime. Handlers are in [`super::handler`].

use std::path::PathBuf;

use serde::Deserialize;

use super::handler::HandlerConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub cache: CacheConfig,
    pub graph: GraphConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub handlers: Vec<HandlerConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` or `tls://host:port`; several servers of one
    /// cluster separated by commas.
    pub url: String,
    /// CA certificates (PEM) to verify the server with, instead of the
    /// system's. Any TLS setting makes TLS required.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// TLS before the server's greeting, for servers with
    /// `handshake_first`.
    #[serde(default)]
    pub tls_first: bool,
    /// Authentication: at most one of user and password, token, NKey seed
    /// or credentials file. Each secret inline or in a `*_file`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An NKey user seed (`SU...`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A credentials file (user JWT and NKey seed), as `nsc` writes them.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// The source stream, created when missing.
    pub stream: String,
    /// Subjects of the source stream, used when creating it.
    pub stream_subjects: Vec<String>,
    /// The dead-letter stream, created when missing.
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
    /// Dead letters of handler `h` go to `<dead_letter_subject>.<h>`.
    #[serde(default = "default_dead_letter_subject")]
    pub dead_letter_subject: String,
    /// Object Store bucket holding pushed plugin versions.
    #[serde(default = "default_plugin_bucket")]
    pub plugin_bucket: String,
    /// Key-Value bucket holding each handler's live version.
    #[serde(default = "default_plugin_kv")]
    pub plugin_kv: String,
    /// Hosts answer `<control_subject>.status` requests.
    #[serde(default = "default_control_subject")]
    pub control_subject: String,
    /// Key-Value bucket holding the leases of exclusive handlers, and the
    /// partition leases and host membership of partitioned ones.
    #[serde(default = "default_lease_kv")]
    pub lease_kv: String,
    /// Copies of every stream and bucket the host creates (the source and
    /// dead-letter streams, the plugin and lease buckets): 1, or 3 (or 5)
    /// on a JetStream cluster so that losing a server loses nothing. An
    /// existing stream is brought to this count; existing buckets keep
    /// theirs.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    1
}

fn default_lease_kv() -> String {
    "switchyard-leases".into()
}

fn default_plugin_bucket() -> String {
    "switchyard-plugins".into()
}

fn default_plugin_kv() -> String {
    "switchyard-plugin-live".into()
}

fn default_control_subject() -> String {
    "switchyard.control".into()
}

fn default_dead_letter_stream() -> String {
    "SWITCHYARD_DEAD_LETTERS".into()
}

fn default_dead_letter_subject() -> String {
    "switchyard.dead".into()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or `memory://`.
    /// With `cluster`: the seed nodes, comma-separated, all of one scheme.
    pub url: String,
    /// `url` names nodes of a Valkey cluster (any of them; the others are
    /// found from it), not one server.
    #[serde(default)]
    pub cluster: bool,
    /// ACL user, in place of one in the URL.
    #[serde(default)]
    pub user: Option<String>,
    /// ACL password, in place of one in the URL; or `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored), the
    /// Kubernetes and systemd credential convention.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: CA certificates (PEM) to verify the server with,
    /// instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// With `rediss://`: do not verify the server's certificate. For
    /// testing only; logged as a warning at every start.
    #[serde(default)]
    pub insecure: bool,
    /// With `memory://` only: a JSON object of key to value loaded at
    /// start-up, relative to the config file.
    #[serde(default)]
    pub seed: Option<PathBuf>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// `bolt://host:port`, `bolt+s://` (TLS), `bolt+ssc://`, `neo4j://`,
    /// `neo4j+s://`, `neo4j+ssc://` or `memory://`.
    pub url: String,
    /// With a `+s`/`+ssc` URL: CA certificates (PEM) to verify the server
    /// with, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// A file holding the password, in place of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Most batched write transactions open at once (1 to 64). While one
    /// runs, the upserts of other events queue for the next one; another
    /// opens beside it only once 32 rows are waiting.
    #[serde(default = "default_write_transactions")]
    pub write_transactions: usize,
}

fn default_write_transactions() -> usize {
    crate::backend::graph_batch::DEFAULT_IN_FLIGHT
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty to disable.
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

fn default_http_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Most Wasm instances alive at once, across handlers; a dispatch
    /// beyond it waits for a free instance.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// The memory this process may use, in MiB. Start-up is refused when
    /// the instance pool could need more (`max_instances` x the largest
    /// `memory_mib`, plus the host's own). Without it, the cgroup limit is
    /// checked and a pool that could exceed it is a warning.
    #[serde(default)]
    pub memory_budget_mib: Option<u64>,
}

fn default_max_instances() -> u32 {
    128
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            max_instances: default_max_instances(),
            memory_budget_mib: None,
        }
    }
}

/// Never prints a password, token or seed.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "***");
        f.debug_struct("NatsConfig")
            .field("url", &crate::secret::mask_urls(&self.url))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls_first", &self.tls_first)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &hidden(&self.token))
            .field("token_file", &self.token_file)
            .field("nkey_seed", &hidden(&self.nkey_seed))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("stream", &self.stream)
            .field("stream_subjects", &self.stream_subjects)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("dead_letter_subject", &self.dead_letter_subject)
            .field("plugin_bucket", &self.plugin_bucket)
            .field("plugin_kv", &self.plugin_kv)
            .field("control_subject", &self.control_subject)
            .field("lease_kv", &self.lease_kv)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// Never prints a password.
impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &crate::secret::mask_urls(&self.url))
            .field("cluster", &self.cluster)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("insecure", &self.insecure)
            .field("seed", &self.seed)
            .finish()
    }
}

/// Never prints a password.
impl std::fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConfig")
            .field("url", &crate::secret::mask_url(&self.url))
            .field("user", &self.user)
            .field("password", &(!self.password.is_empty()).then_some("***"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("write_transactions", &self.write_transactions)
            .finish()
    }
}
