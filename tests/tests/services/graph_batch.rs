//! Batched graph writes on a real Neo4j: concurrent upserts share
//! transactions, each call returns once its row is committed, and a row the
//! server refuses fails its own caller and no other.

use std::sync::Arc;

use neo4rs::{Graph, query};
use switchyard::backend::neo4j::Neo4jGraph;
use switchyard::backend::{BackendError, GraphBackend, NodeKey};
use switchyard::bindings::graph::Value;
use switchyard_tests::services::{neo4j_url, unique};

async fn driver() -> Graph {
    let url = neo4j_url();
    Graph::new(&url, "neo4j", "unused")
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn count(graph: &Graph, cypher: &str) -> i64 {
    let mut rows = graph.execute(query(cypher)).await.unwrap();
    let row = rows.next().await.unwrap().expect("one row");
    row.get::<i64>("n").unwrap()
}

async fn drop_label(graph: &Graph, label: &str) {
    graph
        .run(query(&format!("MATCH (n:`{label}`) DETACH DELETE n")))
        .await
        .unwrap();
    let mut rows = graph
        .execute(query(&format!(
            "SHOW CONSTRAINTS YIELD name, labelsOrTypes WHERE '{label}' IN labelsOrTypes RETURN name"
        )))
        .await
        .unwrap();
    let mut names = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        names.push(row.get::<String>("name").unwrap());
    }
    for name in names {
        graph
            .run(query(&format!("DROP CONSTRAINT `{name}` IF EXISTS")))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_share_transactions_and_a_refused_row_fails_only_its_caller() {
    let label = unique("Batch");
    let label = label.replace('-', "_");
    let graph = driver().await;
    // A constraint the backend does not know about: ten rows will set the
    // same email, and the server refuses all but the first it sees.
    graph
        .run(query(&format!(
            "CREATE CONSTRAINT `{label}_email` FOR (n:`{label}`) REQUIRE n.email IS UNIQUE"
        )))
        .await
        .unwrap();
    let backend = Arc::new(
        Neo4jGraph::connect(&neo4j_url(), "neo4j", "unused")
            .await
            .unwrap(),
    );
    // A warm-up row creates the backend's own constraint on `id`.
    let warm = NodeKey {
        label: label.clone(),
        id: "warm".into(),
    };
    backend.upsert_entity(&warm, &[]).await.unwrap();
    let before = backend.transactions();
    let calls = 300;
    let mut tasks = Vec::new();
    for i in 0..calls {
        let (backend, label) = (backend.clone(), label.clone());
        tasks.push(tokio::spawn(async move {
            let email = if (150..160).contains(&i) {
                "shared@example.com".to_string()
            } else {
                format!("n{i}@example.com")
            };
            let node = NodeKey {
                label: label.clone(),
                id: format!("n{i}"),
            };
            let result = backend
                .upsert_entity(&node, &[("email".into(), Value::Text(email))])
                .await;
            // Returned Ok: the row is committed and visible to anyone now.
            let visible = if result.is_ok() {
                let reader = driver().await;
                count(
                    &reader,
                    &format!("MATCH (n:`{label}` {{id: 'n{i}'}}) RETURN count(n) AS n"),
                )
                .await
            } else {
                -1
            };
            (i, result, visible)
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        let (i, result, visible) = task.await.unwrap();
        match result {
            Ok(()) => assert_eq!(
                visible, 1,
                "n{i}: the call returned before its row was committed"
            ),
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        BackendError::Other { .. } | BackendError::Invalid { .. }
                    ),
                    "n{i}: {error}"
                );
                assert!(
                    error.to_string().contains("already exists"),
                    "n{i}: {error}"
                );
                failed.push(i);
            }
        }
    }
    assert_eq!(
        failed.len(),
        9,
        "exactly the nine duplicate emails fail: {failed:?}"
    );
    assert!(failed.iter().all(|i| (150..160).contains(i)), "{failed:?}");
    let written = count(&graph, &format!("MATCH (n:`{label}`) RETURN count(n) AS n")).await;
    assert_eq!(
        written,
        calls - 9 + 1,
        "failed rows leave no node; every other row is written"
    );
    for i in &failed {
        let n = count(
            &graph,
            &format!("MATCH (n:`{label}` {{id: 'n{i}'}}) RETURN count(n) AS n"),
        )
        .await;
        assert_eq!(n, 0, "n{i} failed but was written");
    }
    let transactions = backend.transactions() - before;
    println!("{calls} upserts (9 refused) in {transactions} write transactions");
    assert!(
        transactions <= calls as u64 / 4,
        "upserts were not batched: {transactions} transactions for {calls} calls"
    );
    drop_label(&graph, &label).await;
}
