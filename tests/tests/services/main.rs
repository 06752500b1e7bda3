//! Tests against the real NATS, Valkey and Neo4j started by
//! `scripts/services up`, and the Valkey cluster started by
//! `scripts/clusters up valkey`. A missing server fails the test that
//! needs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

mod control;
mod delivery;
mod differential;
mod e2e;
mod graph_batch;
mod hostile;
mod partitions;
mod reload;
mod secure;
mod startup;
mod support;
mod sweep;
mod valkey_cluster;
