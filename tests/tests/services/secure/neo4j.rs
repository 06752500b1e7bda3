//! Neo4j over `bolt+s://` with authentication on, and the seed scenario
//! end to end with TLS and credentials on all three servers: NATS with a
//! credentials file, Valkey over `rediss://` with an ACL user, Neo4j over
//! `bolt+s://`, every secret read from a file.

use std::path::Path;
use std::time::Duration;

use switchyard::backend::neo4j::{Neo4jGraph, Neo4jOptions};
use switchyard::backend::{BackendError, GraphBackend, NodeKey};
use switchyard::bindings::graph::Value;
use switchyard_tests::services;

use super::{read, secure};
use crate::support::{
    HANDLER, Names, Options, TestService, service_config, transition, transitions_at,
};

fn password() -> String {
    String::from_utf8(read("NEO4J_PASSWORD_FILE")).unwrap()
}

async fn connect(url: &str, password: &str) -> Result<Neo4jGraph, BackendError> {
    let ca = secure("CA");
    let options = Neo4jOptions {
        ca_file: Some(Path::new(&ca)),
        ..Neo4jOptions::default()
    };
    Neo4jGraph::connect_with(url, &secure("NEO4J_USER"), password, &options).await
}

/// A plain driver of this test's own on the TLS server.
async fn raw_graph() -> neo4rs::Graph {
    let config = neo4rs::ConfigBuilder::default()
        .uri(secure("NEO4J_URL"))
        .user(secure("NEO4J_USER"))
        .password(password())
        .with_client_certificate(secure("CA"))
        .build()
        .unwrap();
    neo4rs::Graph::connect(config).await.unwrap()
}

#[tokio::test]
async fn bolt_s_with_the_ca_and_a_password_does_real_work() {
    let graph = connect(&secure("NEO4J_URL"), &password()).await.unwrap();
    let timestamp = services::unique("secure-probe-");
    let node = NodeKey {
        label: "PhaseTransition".into(),
        id: timestamp.clone(),
    };
    let properties = [("timestamp".to_string(), Value::Text(timestamp.clone()))];
    graph.upsert_entity(&node, &properties).await.unwrap();
    let found = transitions_at(&raw_graph().await, &timestamp)
        .await
        .unwrap();
    assert_eq!(found, 1);
}

#[tokio::test]
async fn a_wrong_neo4j_password_is_refused_saying_so() {
    let error = connect(&secure("NEO4J_URL"), "not-the-password-c41")
        .await
        .err()
        .expect("a wrong password is refused");
    let text = error.to_string();
    assert!(matches!(error, BackendError::Refused { .. }), "{text}");
    assert!(text.contains("graph.password"), "{text}");
    assert!(
        !text.contains("not-the-password-c41"),
        "the password leaked: {text}"
    );
}

#[tokio::test]
async fn a_neo4j_certificate_from_another_ca_is_refused_saying_so() {
    let error = connect(&secure("NEO4J_UNTRUSTED_URL"), &password())
        .await
        .err()
        .expect("an untrusted certificate is refused");
    let text = error.to_string();
    assert!(matches!(error, BackendError::Refused { .. }), "{text}");
    assert!(
        text.contains("not trusted") && text.contains("graph.ca_file"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_runs_over_tls_with_credentials_on_all_three_servers() {
    let _servers = services::shared().await;
    let names = Names::new("tls");
    let mut config = service_config(&names, &Options::default(), None).parse();
    config.nats.url = secure("NATS_JWT_URL");
    config.nats.ca_file = Some(secure("CA").into());
    config.nats.creds_file = Some(secure("NATS_CREDS_FILE").into());
    config.cache.url = secure("REDIS_URL");
    config.cache.user = Some(secure("REDIS_USER"));
    config.cache.password_file = Some(secure("REDIS_PASSWORD_FILE").into());
    config.cache.ca_file = Some(secure("CA").into());
    config.graph.url = secure("NEO4J_URL");
    config.graph.user = secure("NEO4J_USER");
    config.graph.password = String::new();
    config.graph.password_file = Some(secure("NEO4J_PASSWORD_FILE").into());
    config.graph.ca_file = Some(secure("CA").into());
    let service = TestService::run(names, HANDLER, config, None).await;

    let story = services::unique("TLS-E2E-");
    let timestamp = services::unique("2026-12-04T00:00:00Z#");
    let mut cache =
        super::valkey::raw_connection(&secure("REDIS_URL"), &super::valkey::options()).await;
    let keys = [format!("context:{story}"), format!("context:{story}:dev")];
    for key in &keys {
        super::valkey::set(&mut cache, key).await;
    }
    service.publish(transition(&story, &timestamp)).await;
    service.settled(Duration::from_secs(30)).await;
    let left = crate::support::existing(&mut cache, &keys).await.unwrap();
    assert_eq!(left, 0, "keys deleted over rediss://");
    let upserts = transitions_at(&raw_graph().await, &timestamp)
        .await
        .unwrap();
    assert_eq!(upserts, 1, "the transition reached Neo4j over bolt+s://");
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}
