//! Batched graph writes for the Neo4j backend.
//!
//! One upsert per event, each its own transaction, makes Neo4j's commit the
//! bottleneck of a busy handler. Here upserts from concurrent events queue
//! on one task; each batch takes everything queued, groups the rows by what
//! the Cypher text depends on (an entity's label; a relation's two labels
//! and kind), and writes each group as one `UNWIND $rows ...` transaction.
//! Rows keep their arrival order within a group, so two upserts of one node
//! apply in the order they were made.
//!
//! A caller's call returns only once the transaction holding its row has
//! committed, with that transaction's error if it failed. A group that
//! fails with a transient error (a deadlock between concurrent batches, a
//! leader switch) is retried whole, a few times; one that fails otherwise
//! is split in halves and each written again, down to single rows, so a
//! row the server refuses fails its own caller only. At most `in_flight`
//! batches run at once (`graph.write_transactions`): while they do, new
//! rows queue and make the next batch larger.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use neo4rs::{BoltType, Graph, query};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::BackendError;

/// Default batches written at once (`graph.write_transactions`). Each
/// open transaction costs the server CPU, so fewer and larger ones can
/// commit sooner on a server short of it; more keep a remote server with
/// a longer round trip busy. On the 2-vCPU bench machine with Neo4j
/// beside the host, 2 and 4 measured within each other's run-to-run
/// spread at 1,000 and 2,000 events/s, and 4 kept up at 5,000/s where 2
/// once fell behind.
pub const DEFAULT_IN_FLIGHT: usize = 4;
/// Most batches written at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most rows in one batch.
pub const MAX_ROWS: usize = 2000;
/// Attempts of a group that fails with a transient error.
const TRANSIENT_ATTEMPTS: u32 = 3;

/// One upsert, its labels and kind already checked as identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    Entity {
        label: String,
    },
    Relation {
        source: String,
        kind: String,
        target: String,
    },
}

impl Shape {
    fn cypher(&self) -> String {
        match self {
            Shape::Entity { label } => {
                format!("UNWIND $rows AS row MERGE (n:`{label}` {{id: row.id}}) SET n += row.props")
            }
            Shape::Relation {
                source,
                kind,
                target,
            } => format!(
                "UNWIND $rows AS row \
                 MERGE (a:`{source}` {{id: row.source}}) \
                 MERGE (b:`{target}` {{id: row.target}}) \
                 MERGE (a)-[r:`{kind}`]->(b) SET r += row.props"
            ),
        }
    }

    /// The labels whose uniqueness constraint must exist first.
    pub fn labels(&self) -> Vec<&str> {
        match self {
            Shape::Entity { label } => vec![label],
            Shape::Relation { source, target, .. } => vec![source, target],
        }
    }
}

struct Row {
    shape: Shape,
    /// `{id, props}` or `{source, target, props}`.
    row: BoltType,
    reply: oneshot::Sender<Result<(), BackendError>>,
}

/// Runs one query; the backend's timeout and error classification.
pub type Run = Arc<
    dyn Fn(
            Graph,
            neo4rs::Query,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>
        + Send
        + Sync,
>;

/// A handle on the batching task; the task ends with the last handle.
#[derive(Clone)]
pub struct Batcher {
    rows: mpsc::UnboundedSender<Row>,
    transactions: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the task writing through `graph` with `run`, at most
    /// `in_flight` transactions at once (at least one).
    pub fn start(graph: Graph, run: Run, in_flight: usize) -> Self {
        let (rows, queue) = mpsc::unbounded_channel();
        let transactions = Arc::new(AtomicU64::new(0));
        let in_flight = in_flight.max(1);
        tokio::spawn(batches(graph, run, queue, transactions.clone(), in_flight));
        Batcher { rows, transactions }
    }

    /// Write transactions run so far.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Queues one row and waits for its transaction.
    pub async fn write(&self, shape: Shape, row: BoltType) -> Result<(), BackendError> {
        let (reply, done) = oneshot::channel();
        let stopped = || BackendError::Other {
            backend: "neo4j",
            detail: "the graph writer stopped".into(),
        };
        self.rows
            .send(Row { shape, row, reply })
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

async fn batches(
    graph: Graph,
    run: Run,
    mut queue: mpsc::UnboundedReceiver<Row>,
    transactions: Arc<AtomicU64>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_ROWS {
            match queue.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let (graph, run, transactions) = (graph.clone(), run.clone(), transactions.clone());
        tokio::spawn(async move {
            write_batch(&graph, &run, batch, &transactions).await;
            drop(slot);
        });
    }
}

async fn write_batch(graph: &Graph, run: &Run, batch: Vec<Row>, transactions: &AtomicU64) {
    let mut groups: Vec<(Shape, Vec<Row>)> = Vec::new();
    let mut index: HashMap<Shape, usize> = HashMap::new();
    for row in batch {
        match index.get(&row.shape) {
            Some(&at) => groups[at].1.push(row),
            None => {
                index.insert(row.shape.clone(), groups.len());
                groups.push((row.shape.clone(), vec![row]));
            }
        }
    }
    for (shape, rows) in groups {
        write_group(graph, run, &shape, rows, transactions).await;
    }
}

async fn write_group(
    graph: &Graph,
    run: &Run,
    shape: &Shape,
    rows: Vec<Row>,
    transactions: &AtomicU64,
) {
    let cypher = shape.cypher();
    // Halves of a refused group are tried on their own, down to single
    // rows: a few rows the server refuses cost a few transactions more,
    // not one per row.
    let mut pending = vec![rows];
    while let Some(rows) = pending.pop() {
        match write_rows(graph, run, &cypher, &rows, transactions).await {
            Ok(()) => {
                tracing::debug!(rows = rows.len(), ?shape, "graph batch committed");
                for row in rows {
                    let _ = row.reply.send(Ok(()));
                }
            }
            Err(BackendError::Invalid { .. } | BackendError::Other { .. }) if rows.len() > 1 => {
                tracing::debug!(
                    rows = rows.len(),
                    ?shape,
                    "graph batch refused; writing it in halves"
                );
                let mut first = rows;
                let second = first.split_off(first.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            Err(error) => {
                for row in rows {
                    let _ = row.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One transaction for `rows`, retried while it fails transiently.
async fn write_rows(
    graph: &Graph,
    run: &Run,
    cypher: &str,
    rows: &[Row],
    transactions: &AtomicU64,
) -> Result<(), BackendError> {
    let values = BoltType::from(rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>());
    let mut attempt = 1;
    loop {
        transactions.fetch_add(1, Ordering::Relaxed);
        let result = run(graph.clone(), query(cypher).param("rows", values.clone())).await;
        match result {
            Err(BackendError::Unavailable { .. }) if attempt < TRANSIENT_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}
