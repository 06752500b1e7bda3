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
//!    otherwise it starts at once, up to `concurrency` running. [`recent`]
//!    remembers, per key, what was settled here, so a copy the server
//!    redelivers after the key moved on is acked without running.
//! 5. [`settle`]: one delivery attempt runs through the handler's dispatch,
//!    and its outcome becomes an ack, a nak with delay, a retry in place,
//!    or a dead letter.
//! 6. [`dead_letter`]: rejected events are written to the dead-letter
//!    stream with their reason, and can be listed and replayed.
//! 7. [`lease`]: an exclusive handler pulls only while this host holds its
//!    NATS Key-Value lease.
//! 8. [`balance`]: a partitioned handler has one durable and one flow per
//!    partition (the mapping is [`crate::partition`]), each under its own
//!    lease; the balancer spreads the partitions over the live hosts.
//!
//! At shutdown (see [`pull`]) the task stops pulling, hands back what has
//! not started, gives running events `drain_grace`, and returns once every
//! held message is settled.
//!
//! Delivery imports the handler, configuration, metrics, health and the
//! runtime's outcome type; it must not import the service, the fleet parts
//! (control plane, reload, shadow) or the commands.

pub mod balance;
pub mod dead_letter;
pub mod flow;
pub mod hold;
pub mod lease;
pub mod order;
pub mod pull;
pub mod recent;
pub mod settle;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::Stream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::handler::Handler;
use crate::partition::Mapping;

pub use self::streams::{connect, wait_for_jetstream};

/// Creates (or updates) each handler's durable consumers and starts one
/// task per consumer: one per handler, or one per partition of a
/// partitioned handler. The tasks end once `shutdown` is cancelled and every
/// message they hold is settled (see [`pull`] on draining).
pub async fn start(
    js: &Context,
    nats: &NatsConfig,
    handlers: &[Arc<Handler>],
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mapping = handlers.iter().find_map(|h| partition_mapping(h));
    streams::ensure_streams(js, nats, mapping.as_ref()).await?;
    let stream = js
        .get_stream(&nats.stream)
        .await
        .with_context(|| format!("cannot open stream {}", nats.stream))?;
    let leases = if handlers
        .iter()
        .any(|h| h.config.exclusive || h.config.partitions.is_some())
    {
        Some(lease::open_bucket(js, &nats.lease_kv, nats.replicas).await?)
    } else {
        None
    };
    let holder = lease::holder_id();
    let nats = Arc::new(nats.clone());
    let mut tasks = Vec::new();
    for handler in handlers {
        if let (Some(mapping), Some(store)) = (partition_mapping(handler), &leases) {
            let consumers = start_partitions(
                js, &stream, &nats, handler, &mapping, store, &holder, &shutdown, &mut tasks,
            )
            .await?;
            tokio::spawn(watch_consumers(
                consumers,
                handler.clone(),
                shutdown.clone(),
            ));
            continue;
        }
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
            None,
        );
        tracing::info!(
            handler = %handler.name(),
            durable = %handler.config.durable,
            subjects = ?handler.config.subjects,
            order_key = %flow.order_key_text(),
            hold = flow.hold_capacity(),
            "consumer ready"
        );
        tokio::spawn(watch_consumers(
            vec![consumer.clone()],
            handler.clone(),
            shutdown.clone(),
        ));
        tasks.push(tokio::spawn(pull::consume(flow, consumer)));
    }
    Ok(tasks)
}

/// A partitioned handler's subject mapping; `None` for the others (and for
/// a mapping the configuration check would have refused).
fn partition_mapping(handler: &Handler) -> Option<Mapping> {
    let config = &handler.config;
    Mapping::new(
        &config.subjects,
        config.order_key_subject_token?,
        config.partitions?,
    )
    .ok()
}

/// One consumer and flow per partition, under the partition's lease, and
/// the balancer that spreads the partitions over the hosts.
#[allow(clippy::too_many_arguments)]
async fn start_partitions(
    js: &Context,
    stream: &Stream,
    nats: &Arc<NatsConfig>,
    handler: &Arc<Handler>,
    mapping: &Mapping,
    store: &kv::Store,
    holder: &str,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Vec<PullConsumer>> {
    let balancer = Arc::new(balance::Balancer::new(
        store.clone(),
        &nats.stream,
        &handler.config.durable,
        mapping.count,
        holder,
    ));
    let _ = handler.partitions.set((mapping.count, balancer.watch()));
    let run = Arc::new(Semaphore::new(handler.config.concurrency as usize));
    let mut consumers = Vec::new();
    for partition in 0..mapping.count {
        let consumer =
            streams::open_partition_consumer(stream, handler, mapping, partition).await?;
        let flow = flow::Flow::new(
            js.clone(),
            handler.clone(),
            nats.clone(),
            shutdown.clone(),
            Some(balancer.lease(partition)),
            Some(run.clone()),
        );
        tasks.push(tokio::spawn(pull::consume(flow, consumer.clone())));
        consumers.push(consumer);
    }
    tracing::info!(
        handler = %handler.name(),
        durables = %format!("{}-p0 .. {}-p{}", handler.config.durable, handler.config.durable, mapping.count - 1),
        subject = %mapping.subject,
        partitions = mapping.count,
        "partition consumers ready; spreading them over the hosts"
    );
    tokio::spawn(balancer.run(shutdown.clone()));
    Ok(consumers)
}

/// Keeps the pending, ack-pending and lease gauges current: summed over
/// a partitioned handler's consumers.
async fn watch_consumers(
    mut consumers: Vec<PullConsumer>,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut partitions = handler.partitions.get().map(|(_, held)| held.clone());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A partition taken or handed over shows at once.
            Some(Ok(())) = async {
                match partitions.as_mut() {
                    Some(held) => Some(held.changed().await),
                    None => None,
                }
            } => {}
            () = shutdown.cancelled() => return,
        }
        let metrics = handler.metrics();
        let (mut pending, mut ack_pending, mut read) = (0, 0, true);
        for consumer in &mut consumers {
            match consumer.info().await {
                Ok(info) => {
                    pending += info.num_pending;
                    ack_pending += info.num_ack_pending;
                }
                Err(_) => read = false,
            }
        }
        if read {
            metrics.consumer_state(handler.name(), pending, ack_pending);
        }
        if let Some(held) = handler.lease_held() {
            metrics.lease_held(handler.name(), usize::from(held));
        }
        if let Some((_, held)) = handler.partitions_held() {
            metrics.lease_held(handler.name(), held.len());
        }
    }
}
