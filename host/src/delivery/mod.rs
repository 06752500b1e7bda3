//! Delivery: from a JetStream stream to a handler and back to a
//! settlement, one durable pull consumer per handler.
//!
//! How an event flows through these files:
//!
//! 1. [`streams`]: at start-up the source and dead-letter streams and each
//!    handler's durable consumer are made to exist; [`start`] spawns one
//!    consumer task per handler.
//! 2. [`pull`]: the task asks the server for as many messages as it has
//!    room to hold, so every message received already has its place.
//! 3. [`hold`]: a received message becomes a [`hold::Held`]: it sends
//!    in-progress acks while this host keeps it.
//! 4. [`order`] and [`flow`]: with an order key, the event waits on its
//!    key's queue until the events of that key before it are settled;
//!    otherwise it starts at once, up to `concurrency` running.
//! 5. [`settle`]: one delivery attempt runs through the handler's dispatch,
//!    and its outcome becomes an ack, a nak with delay, a retry in place,
//!    or a dead letter.
//! 6. [`dead_letter`]: rejected events are written to the dead-letter
//!    stream with their reason, and can be listed and replayed.
//! 7. [`lease`]: an exclusive handler pulls only while this host holds its
//!    NATS Key-Value lease.
//!
//! At shutdown (see [`pull`]) the task stops pulling, hands back what has
//! not started, gives running events `drain_grace`, and returns once every
//! held message is settled.
//!
//! Delivery imports the handler, configuration, metrics, health and the
//! runtime's outcome type; it must not import the service, the fleet parts
//! (control plane, reload, shadow) or the commands.

pub mod dead_letter;
pub mod flow;
pub mod hold;
pub mod lease;
pub mod order;
pub mod pull;
pub mod settle;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::handler::Handler;

pub use self::streams::{connect, wait_for_jetstream};

/// Creates (or updates) each handler's durable consumer and starts one task
/// per handler. The tasks end once `shutdown` is cancelled and every
/// message they hold is settled (see [`pull`] on draining).
pub async fn start(
    js: &Context,
    nats: &NatsConfig,
    handlers: &[Arc<Handler>],
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    streams::ensure_streams(js, nats).await?;
    let stream = js
        .get_stream(&nats.stream)
        .await
        .with_context(|| format!("cannot open stream {}", nats.stream))?;
    let leases = if handlers.iter().any(|h| h.config.exclusive) {
        Some(lease::open_bucket(js, &nats.lease_kv).await?)
    } else {
        None
    };
    let nats = Arc::new(nats.clone());
    let mut tasks = Vec::new();
    for handler in handlers {
        let consumer = streams::open_consumer(&stream, handler).await?;
        let lease = match (&leases, handler.config.exclusive) {
            (Some(store), true) => {
                let key = format!("{}.{}", nats.stream, handler.config.durable);
                let lease = lease::Lease::new(store.clone(), key);
                let _ = handler.lease.set(lease.watch());
                tokio::spawn(lease.clone().run(shutdown.clone()));
                Some(lease)
            }
            _ => None,
        };
        let flow = flow::Flow::new(
            js.clone(),
            handler.clone(),
            nats.clone(),
            shutdown.clone(),
            lease,
        );
        tracing::info!(
            handler = %handler.name(),
            durable = %handler.config.durable,
            subjects = ?handler.config.subjects,
            order_key = %flow.order_key_text(),
            hold = flow.hold_capacity(),
            "consumer ready"
        );
        tokio::spawn(watch_consumer(
            consumer.clone(),
            handler.clone(),
            shutdown.clone(),
        ));
        tasks.push(tokio::spawn(pull::consume(flow, consumer)));
    }
    Ok(tasks)
}

/// Keeps the pending, ack-pending and lease gauges current.
async fn watch_consumer(
    mut consumer: PullConsumer,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let metrics = handler.metrics();
        if let Ok(info) = consumer.info().await {
            metrics.consumer_state(handler.name(), info.num_pending, info.num_ack_pending);
        }
        if let Some(held) = handler.lease_held() {
            metrics.lease_held(handler.name(), held);
        }
    }
}
