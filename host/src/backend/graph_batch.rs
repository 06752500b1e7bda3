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
//! row the server refuses fails its own caller only.
//!
//! Neo4j's cost is mostly per transaction, not per row: on the bench
//! machine, 1,000 rows/s as single-row transactions kept it at 84% of a
//! core, as 4-row ones at 28%, as 16-row ones at 16%. So a batch starts at
//! once only when no other is running; while one is, rows queue and the
//! next batch starts when it commits (its rows are then the next batch) or
//! as soon as [`OPEN_ANOTHER_AT`] rows are waiting, whichever comes first.
//! A light load thus runs one transaction at a time of everything that
//! arrived during the last commit, and a heavy one opens more beside it,
//! up to `in_flight` (`graph.write_transactions`) at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use neo4rs::{BoltType, Graph, query};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::BackendError;

/// Default for the most batches written at once
/// (`graph.write_transactions`). Beyond the first, a batch opens only
/// with [`OPEN_ANOTHER_AT`] rows, so this matters under heavy load only:
/// more keep a remote server with a longer round trip busy.
pub const DEFAULT_IN_FLIGHT: usize = 4;
/// Most batches written at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most rows in one batch.
pub const MAX_ROWS: usize = 2000;
/// Rows waiting that open another transaction beside a running one.
pub const OPEN_ANOTHER_AT: usize = 32;
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
    totals: Arc<Totals>,
}

/// Transactions sent and rows committed, counted by the writing tasks.
#[derive(Default)]
struct Totals {
    transactions: AtomicU64,
    rows: AtomicU64,
}

impl Batcher {
    /// Starts the task writing through `graph` with `run`, at most
    /// `in_flight` transactions at once (at least one).
    pub fn start(graph: Graph, run: Run, in_flight: usize) -> Self {
        let (rows, queue) = mpsc::unbounded_channel();
        let totals = Arc::new(Totals::default());
        let in_flight = in_flight.max(1);
        tokio::spawn(batches(graph, run, queue, totals.clone(), in_flight));
        Batcher { rows, totals }
    }

    /// Write transactions run so far.
    pub fn transactions(&self) -> u64 {
        self.totals.transactions.load(Ordering::Relaxed)
    }

    /// Transactions sent and rows committed so far.
    pub fn totals(&self) -> super::WriteTotals {
        super::WriteTotals {
            transactions: self.totals.transactions.load(Ordering::Relaxed),
            rows: self.totals.rows.load(Ordering::Relaxed),
        }
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
    totals: Arc<Totals>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let committed = Arc::new(Notify::new());
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        take_queued(&mut queue, &mut batch);
        // Beside a running transaction, gather until it commits or the
        // batch is worth a transaction of its own.
        let running = || in_flight - slots.available_permits() - 1;
        loop {
            // Listening before looking: a commit after the look wakes it.
            let commit = committed.notified();
            tokio::pin!(commit);
            commit.as_mut().enable();
            if running() == 0 || batch.len() >= OPEN_ANOTHER_AT {
                break;
            }
            tokio::select! {
                row = queue.recv() => match row {
                    Some(row) => {
                        batch.push(row);
                        take_queued(&mut queue, &mut batch);
                    }
                    None => break,
                },
                () = &mut commit => break,
            }
        }
        let (graph, run, totals) = (graph.clone(), run.clone(), totals.clone());
        let committed = committed.clone();
        tokio::spawn(async move {
            write_batch(&graph, &run, batch, &totals).await;
            drop(slot);
            committed.notify_waiters();
        });
    }
}

/// Moves the rows already queued into `batch`, up to [`MAX_ROWS`].
fn take_queued(queue: &mut mpsc::UnboundedReceiver<Row>, batch: &mut Vec<Row>) {
    while batch.len() < MAX_ROWS {
        match queue.try_recv() {
            Ok(row) => batch.push(row),
            Err(_) => break,
        }
    }
}

async fn write_batch(graph: &Graph, run: &Run, batch: Vec<Row>, totals: &Totals) {
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
        write_group(graph, run, &shape, rows, totals).await;
    }
}

async fn write_group(graph: &Graph, run: &Run, shape: &Shape, rows: Vec<Row>, totals: &Totals) {
    let cypher = shape.cypher();
    // Halves of a refused group are tried on their own, down to single
    // rows: a few rows the server refuses cost a few transactions more,
    // not one per row.
    let mut pending = vec![rows];
    while let Some(rows) = pending.pop() {
        match write_rows(graph, run, &cypher, &rows, &totals.transactions).await {
            Ok(()) => {
                totals.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A writer whose transactions each wait for a permit of `commits`
    /// before they commit, counting how many began.
    struct Held {
        batcher: Batcher,
        begun: Arc<AtomicUsize>,
        commits: Arc<Semaphore>,
    }

    async fn held(in_flight: usize) -> Held {
        let begun = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(Semaphore::new(0));
        let run: Run = {
            let (begun, commits) = (begun.clone(), commits.clone());
            Arc::new(move |_graph, _query| {
                let (begun, commits) = (begun.clone(), commits.clone());
                Box::pin(async move {
                    begun.fetch_add(1, Ordering::SeqCst);
                    commits.acquire().await.expect("open").forget();
                    Ok(())
                })
            })
        };
        // No server: the double never uses the graph's connections.
        let graph = Graph::new("127.0.0.1:1", "nobody", "none")
            .await
            .expect("graph");
        Held {
            batcher: Batcher::start(graph, run, in_flight),
            begun,
            commits,
        }
    }

    impl Held {
        fn write(&self) -> tokio::task::JoinHandle<Result<(), BackendError>> {
            let batcher = self.batcher.clone();
            let shape = Shape::Entity {
                label: "Story".into(),
            };
            tokio::spawn(async move { batcher.write(shape, BoltType::from("row")).await })
        }

        async fn begun_reaches(&self, n: usize) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.begun.load(Ordering::SeqCst) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} transactions began, waited for {n}",
                    self.begun.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        fn begun(&self) -> usize {
            self.begun.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn rows_arriving_during_a_commit_wait_for_it_and_share_the_next_transaction() {
        let writer = held(4).await;
        let first = writer.write();
        writer.begun_reaches(1).await;
        let waiting: Vec<_> = (0..10).map(|_| writer.write()).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            writer.begun(),
            1,
            "no transaction opens beside a running one for 10 rows"
        );

        writer.commits.add_permits(1);
        first.await.expect("task").expect("first row committed");
        writer.begun_reaches(2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            writer.begun(),
            2,
            "the 10 rows that waited go in one transaction"
        );
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "before it commits, none returns"
        );

        writer.commits.add_permits(1);
        for write in waiting {
            write.await.expect("task").expect("row committed");
        }
        assert_eq!(writer.begun(), 2);
    }

    #[tokio::test]
    async fn enough_rows_waiting_open_another_transaction_beside_a_running_one() {
        let writer = held(4).await;
        let first = writer.write();
        writer.begun_reaches(1).await;
        let waiting: Vec<_> = (0..OPEN_ANOTHER_AT).map(|_| writer.write()).collect();
        writer.begun_reaches(2).await;
        assert!(
            !first.is_finished(),
            "the first transaction is still running"
        );

        writer.commits.add_permits(2);
        first.await.expect("task").expect("first row committed");
        for write in waiting {
            write.await.expect("task").expect("row committed");
        }
        assert_eq!(writer.begun(), 2);
    }

    #[tokio::test]
    async fn one_transaction_at_a_time_when_only_one_may_run() {
        let writer = held(1).await;
        let first = writer.write();
        writer.begun_reaches(1).await;
        let waiting: Vec<_> = (0..OPEN_ANOTHER_AT * 2).map(|_| writer.write()).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(writer.begun(), 1, "write_transactions = 1 is a limit");

        writer.commits.add_permits(2);
        first.await.expect("task").expect("first row committed");
        for write in waiting {
            write.await.expect("task").expect("row committed");
        }
        assert_eq!(writer.begun(), 2);
    }
}
