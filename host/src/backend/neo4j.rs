//! Neo4j graph backend over Bolt with `neo4rs`.
//!
//! Every write is `MERGE` on `(label {id})` followed by `SET += $props`,
//! with all values passed as parameters. Labels and relation kinds cannot
//! be parameters in Cypher, so they are spliced only after passing
//! [`check_identifier`] (again, even though the capability checked them).
//! The first write to a label creates a uniqueness constraint on `id`,
//! which is what makes concurrent `MERGE`s of one id produce one node.
//!
//! Upserts go through a [`Batcher`]: the rows of concurrent events are
//! written together, one `UNWIND` transaction per label (or relation
//! shape), and each call returns once its row has committed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use neo4rs::{BoltList, BoltNull, BoltType, ConfigBuilder, Graph, query};

use super::graph_batch::{Batcher, Run, Shape};
use super::{BackendError, GraphBackend, NodeKey};
use crate::bindings::graph::Value;
use crate::identifier::check_identifier;
use crate::lock;
use crate::secret::mask_url;

const BACKEND: &str = "neo4j";

/// How long one query may take before the call reports `unavailable`.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How to connect to Neo4j and write to it.
#[derive(Debug, Clone, Copy)]
pub struct Neo4jOptions<'a> {
    /// CA certificates (PEM) for a `+s`/`+ssc` URL, beside the system's.
    pub ca_file: Option<&'a std::path::Path>,
    /// Batched write transactions open at once (`graph.write_transactions`).
    pub write_transactions: usize,
}

impl Default for Neo4jOptions<'_> {
    fn default() -> Self {
        Neo4jOptions {
            ca_file: None,
            write_transactions: super::graph_batch::DEFAULT_IN_FLIGHT,
        }
    }
}

/// A Neo4j server.
pub struct Neo4jGraph {
    graph: Graph,
    constrained: Mutex<HashSet<String>>,
    batcher: Batcher,
}

impl Neo4jGraph {
    /// Connects to `url` (`bolt://host:port`) and checks it answers.
    pub async fn connect(url: &str, user: &str, password: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, user, password, &Neo4jOptions::default()).await
    }

    /// [`connect`](Self::connect) with `options`: the CA certificates
    /// (PEM) a `+s`/`+ssc` URL's server is verified with beside the
    /// system's, and how many batched write transactions may be open at
    /// once. Credentials refused or TLS failing is
    /// [`BackendError::Refused`].
    pub async fn connect_with(
        url: &str,
        user: &str,
        password: &str,
        options: &Neo4jOptions<'_>,
    ) -> Result<Self, BackendError> {
        let ca_file = options.ca_file;
        // Every open write transaction holds a connection; leave room for
        // constraint creation and health checks beside them.
        let connections = (options.write_transactions + 4).max(16);
        let mut builder = ConfigBuilder::default()
            .uri(url)
            .user(user)
            .password(password)
            .max_connections(connections);
        if let Some(ca) = ca_file {
            builder = builder.with_client_certificate(ca);
        }
        let config = builder.build().map_err(|e| BackendError::Invalid {
            backend: BACKEND,
            detail: format!("bad configuration for {:?}: {e}", mask_url(url)),
        })?;
        let graph = timed(Graph::connect(config)).await?;
        // A transaction opens one connection without the driver's retries
        // (which would retry refused credentials for a minute): the real
        // cause of a refusal surfaces at once.
        let probe = timed(graph.start_txn()).await.map_err(refused)?;
        timed(probe.rollback()).await?;
        let backend = Neo4jGraph::on(graph, options.write_transactions);
        backend.ping().await?;
        Ok(backend)
    }

    /// The backend on a connected driver; starts its batcher.
    fn on(graph: Graph, write_transactions: usize) -> Self {
        let run: Run = std::sync::Arc::new(|graph: Graph, q: neo4rs::Query| {
            Box::pin(async move { timed(graph.run(q)).await })
        });
        Neo4jGraph {
            batcher: Batcher::start(graph.clone(), run, write_transactions),
            graph,
            constrained: Mutex::new(HashSet::new()),
        }
    }

    /// Write transactions run so far (each may hold many upserts).
    pub fn transactions(&self) -> u64 {
        self.batcher.transactions()
    }

    async fn ensure_constraint(&self, label: &str) -> Result<(), BackendError> {
        if lock(&self.constrained).contains(label) {
            return Ok(());
        }
        checked(label)?;
        let name = format!("switchyard_{label}_id");
        let cypher = format!(
            "CREATE CONSTRAINT `{name}` IF NOT EXISTS FOR (n:`{label}`) REQUIRE n.id IS UNIQUE"
        );
        timed(self.graph.run(query(&cypher))).await?;
        lock(&self.constrained).insert(label.to_string());
        Ok(())
    }
}

fn checked(name: &str) -> Result<&str, BackendError> {
    check_identifier("identifier", name).map_err(|detail| BackendError::Invalid {
        backend: BACKEND,
        detail,
    })?;
    Ok(name)
}

async fn timed<T>(
    operation: impl std::future::Future<Output = Result<T, neo4rs::Error>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(QUERY_TIMEOUT, operation).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(BackendError::Unavailable {
            backend: BACKEND,
            detail: format!("no answer within {QUERY_TIMEOUT:?}"),
        }),
    }
}

/// A failed first query that retrying cannot fix becomes
/// [`BackendError::Refused`]: the server refused the credentials, or TLS
/// failed.
fn refused(error: BackendError) -> BackendError {
    match error {
        BackendError::Refused { .. } => error,
        BackendError::Other { detail, .. } | BackendError::Unavailable { detail, .. }
            if detail.contains("Neo.ClientError.Security") =>
        {
            BackendError::Refused {
                backend: BACKEND,
                detail: format!("{detail} (check graph.user and graph.password)"),
            }
        }
        other => other,
    }
}

fn classify(error: neo4rs::Error) -> BackendError {
    use neo4rs::Error as E;
    let detail = error.to_string();
    if let Some(tls) = crate::tls::failure(&error, "graph.ca_file") {
        return BackendError::Refused {
            backend: BACKEND,
            detail: tls,
        };
    }
    match &error {
        E::AuthenticationError(_) => BackendError::Refused {
            backend: BACKEND,
            detail: format!("{detail} (check graph.user and graph.password)"),
        },
        E::IOError { .. } | E::ConnectionError => BackendError::Unavailable {
            backend: BACKEND,
            detail,
        },
        E::Neo4j(e) if matches!(e.kind(), neo4rs::Neo4jErrorKind::Transient) => {
            BackendError::Unavailable {
                backend: BACKEND,
                detail,
            }
        }
        E::Neo4j(e) if e.code().starts_with("Neo.ClientError.Statement") => BackendError::Invalid {
            backend: BACKEND,
            detail,
        },
        _ => BackendError::Other {
            backend: BACKEND,
            detail,
        },
    }
}

fn bolt(value: &Value) -> BoltType {
    match value {
        Value::Null => BoltType::Null(BoltNull),
        Value::Boolean(b) => BoltType::from(*b),
        Value::Integer(i) => BoltType::from(*i),
        Value::Float(f) => BoltType::from(*f),
        Value::Text(s) => BoltType::from(s.as_str()),
        Value::TextList(items) => {
            let mut list = BoltList::new();
            for item in items {
                list.push(BoltType::from(item.as_str()));
            }
            BoltType::List(list)
        }
    }
}

fn bolt_map(properties: &[(String, Value)]) -> Result<BoltType, BackendError> {
    let mut map = HashMap::with_capacity(properties.len());
    for (key, value) in properties {
        checked(key)?;
        map.insert(key.clone(), bolt(value));
    }
    Ok(BoltType::from(map))
}

#[async_trait]
impl GraphBackend for Neo4jGraph {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn upsert_entity(
        &self,
        node: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        let label = checked(&node.label)?;
        self.ensure_constraint(label).await?;
        let row = HashMap::from([
            ("id".to_string(), BoltType::from(node.id.as_str())),
            ("props".to_string(), bolt_map(properties)?),
        ]);
        let shape = Shape::Entity {
            label: label.to_string(),
        };
        self.batcher.write(shape, BoltType::from(row)).await
    }

    async fn upsert_relation(
        &self,
        source: &NodeKey,
        kind: &str,
        target: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        let (source_label, target_label, kind) = (
            checked(&source.label)?,
            checked(&target.label)?,
            checked(kind)?,
        );
        self.ensure_constraint(source_label).await?;
        self.ensure_constraint(target_label).await?;
        let row = HashMap::from([
            ("source".to_string(), BoltType::from(source.id.as_str())),
            ("target".to_string(), BoltType::from(target.id.as_str())),
            ("props".to_string(), bolt_map(properties)?),
        ]);
        let shape = Shape::Relation {
            source: source_label.to_string(),
            kind: kind.to_string(),
            target: target_label.to_string(),
        };
        self.batcher.write(shape, BoltType::from(row)).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        timed(self.graph.run(query("RETURN 1"))).await
    }

    fn write_totals(&self) -> Option<super::WriteTotals> {
        Some(self.batcher.totals())
    }
}
