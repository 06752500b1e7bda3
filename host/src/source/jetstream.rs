//! NATS JetStream: streams, durable pull consumers, and settling events.
//!
//! Each handler gets one durable pull consumer with explicit acks. A
//! consumer task pulls messages and runs up to `concurrency` of them at
//! once; each message is settled only after its handler returned, so its
//! effects are complete before the server hears anything:
//!
//! | outcome           | settlement                                         |
//! |-------------------|----------------------------------------------------|
//! | `ack`             | ack                                                |
//! | `retry(d)`        | nak with delay `d` (the handler's backoff if none) |
//! | `reject(reason)`  | publish to the dead-letter stream, then term       |
//! | any, at the last delivery | dead-letter as above, with the last reason |
//!
//! The server's own `max_deliver` is left unlimited: the host counts
//! deliveries and dead-letters the event itself, so an event whose every
//! delivery crashed its host is still dead-lettered (on the delivery after
//! `max_deliver`, without running it again) instead of silently dropped.
//! A dead letter that cannot be published is not termed: the event is
//! nak'ed and comes back, so nothing is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{AckKind, Context, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bindings::event::Event;
use crate::config::NatsConfig;
use crate::runtime::Outcome;
use crate::service::{Handler, Health, Shared};

/// Headers a dead letter carries, besides the original message's own.
pub mod headers {
    pub const REASON: &str = "Switchyard-Reason";
    pub const HANDLER: &str = "Switchyard-Handler";
    pub const PLUGIN_DIGEST: &str = "Switchyard-Plugin-Digest";
    pub const DELIVERY_COUNT: &str = "Switchyard-Delivery-Count";
    pub const ORIGINAL_SUBJECT: &str = "Switchyard-Original-Subject";
    pub const ORIGINAL_STREAM: &str = "Switchyard-Original-Stream";
    pub const ORIGINAL_SEQUENCE: &str = "Switchyard-Original-Sequence";
    pub const DEAD_LETTERED_AT: &str = "Switchyard-Dead-Lettered-At";
}

/// Longest reason put in a header; NATS headers are one line each.
const MAX_REASON_BYTES: usize = 1024;

/// Connects to NATS. The client reconnects by itself for as long as the
/// process lives; `health.nats` follows the connection state.
pub async fn connect(config: &NatsConfig, health: Arc<Health>) -> anyhow::Result<Context> {
    let events = health.clone();
    let client = async_nats::ConnectOptions::new()
        .name("switchyard")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let health = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        health.nats.store(true, Ordering::Relaxed);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        health.nats.store(false, Ordering::Relaxed);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(&config.url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.url))?;
    if client.connection_state() == async_nats::connection::State::Connected {
        health.nats.store(true, Ordering::Relaxed);
    }
    Ok(async_nats::jetstream::new(client))
}

/// Makes sure the source and dead-letter streams exist.
pub async fn ensure_streams(js: &Context, config: &NatsConfig) -> anyhow::Result<()> {
    let source = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: config.stream_subjects.clone(),
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create or open stream {}", config.stream))?;
    tracing::info!(stream = %source.cached_info().config.name, subjects = ?source.cached_info().config.subjects, "source stream ready");
    js.get_or_create_stream(stream::Config {
        name: config.dead_letter_stream.clone(),
        subjects: vec![format!("{}.>", config.dead_letter_subject)],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create or open dead-letter stream {}", config.dead_letter_stream))?;
    Ok(())
}

/// The consumer settings for a handler.
pub fn consumer_config(handler: &crate::config::HandlerConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(handler.durable.clone()),
        description: Some(format!("switchyard handler {}", handler.name)),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: handler.ack_wait,
        // Unlimited on the server; the host dead-letters (see module docs).
        max_deliver: -1,
        filter_subjects: handler.subjects.clone(),
        max_ack_pending: i64::from(handler.max_ack_pending),
        ..Default::default()
    }
}

/// Creates (or updates) each handler's durable consumer and starts one task
/// per handler. The tasks end once `shutdown` is cancelled and their
/// in-flight events are settled.
pub async fn start(
    js: &Context,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    ensure_streams(js, &shared.config.nats).await?;
    let stream = js
        .get_stream(&shared.config.nats.stream)
        .await
        .with_context(|| format!("cannot open stream {}", shared.config.nats.stream))?;
    let mut tasks = Vec::new();
    for handler in &shared.handlers {
        let config = consumer_config(&handler.config);
        let consumer: PullConsumer = match stream.create_consumer(config.clone()).await {
            Ok(consumer) => consumer,
            Err(_) => stream.update_consumer(config).await.with_context(|| {
                format!(
                    "handler `{}`: cannot create or update durable consumer {}",
                    handler.name(),
                    handler.config.durable
                )
            })?,
        };
        tracing::info!(handler = %handler.name(), durable = %handler.config.durable, subjects = ?handler.config.subjects, "consumer ready");
        tokio::spawn(watch_consumer(
            consumer.clone(),
            handler.clone(),
            shared.clone(),
            shutdown.clone(),
        ));
        tasks.push(tokio::spawn(consume(
            js.clone(),
            consumer,
            handler.clone(),
            shared.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

/// Keeps the pending and ack-pending gauges current.
async fn watch_consumer(
    mut consumer: PullConsumer,
    handler: Arc<Handler>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Ok(info) = consumer.info().await {
            shared
                .metrics
                .consumer_state(handler.name(), info.num_pending, info.num_ack_pending);
        }
    }
}

async fn consume(
    js: Context,
    consumer: PullConsumer,
    handler: Arc<Handler>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let concurrency = handler.config.concurrency as usize;
    let slots = Arc::new(Semaphore::new(concurrency));
    'pull: while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(handler = %handler.name(), %error, "cannot pull messages; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        loop {
            // Take a slot before the next message, so at most `concurrency`
            // messages are in this host's hands and unstarted ones stay on
            // the server for other hosts.
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'pull,
                },
                () = shutdown.cancelled() => break 'pull,
            };
            let next = tokio::select! {
                next = messages.next() => next,
                () = shutdown.cancelled() => break 'pull,
            };
            match next {
                Some(Ok(message)) => {
                    let (js, handler, shared) = (js.clone(), handler.clone(), shared.clone());
                    tokio::spawn(async move {
                        handle(&js, &handler, &shared, message).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(handler = %handler.name(), %error, "pull interrupted; resuming");
                }
                None => continue 'pull,
            }
        }
    }
    // Drain: wait until every slot is back, i.e. every in-flight event has
    // been settled.
    let _all = slots.acquire_many(concurrency as u32).await;
    tracing::info!(handler = %handler.name(), "consumer drained");
}

fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn event_headers(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.as_str().to_string()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Runs one message through its handler and settles it.
async fn handle(js: &Context, handler: &Handler, shared: &Shared, message: Message) {
    let info = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32, info.published),
        Err(error) => {
            tracing::error!(handler = %handler.name(), subject = %message.subject, %error, "message without JetStream metadata; terminating it");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let (sequence, attempt, published) = info;
    let span = tracing::info_span!("event", handler = %handler.name(), subject = %message.subject, sequence, attempt);
    async {
        let max_deliver = handler.config.max_deliver;
        let plugin = handler.plugin.load_full();
        if attempt > max_deliver {
            let reason = format!(
                "delivered {attempt} times, more than max_deliver {max_deliver}, without being settled (host crash or lost acks)"
            );
            dead_letter(js, handler, shared, &message, sequence, attempt, plugin.digest().as_str(), &reason).await;
            return;
        }
        let event = Event {
            subject: message.subject.to_string(),
            payload: message.payload.to_vec(),
            headers: event_headers(message.headers.as_ref()),
            stream_sequence: sequence,
            delivery_attempt: attempt,
            published_at_ms: millis_since_epoch(published.into()),
        };
        let dispatch = shared.runtime.dispatch(&plugin, &handler.env, event).await;
        shared.metrics.record(handler.name(), attempt, &dispatch);
        let stats = &handler.stats;
        stats.handled.fetch_add(1, Ordering::Relaxed);
        stats.keys_deleted.fetch_add(dispatch.effects.keys_deleted, Ordering::Relaxed);
        tracing::info!(
            outcome = dispatch.outcome.kind(),
            keys_deleted = dispatch.effects.keys_deleted,
            keys_scanned = dispatch.effects.keys_scanned,
            upserts = dispatch.effects.entities_upserted + dispatch.effects.relations_upserted,
            elapsed_ms = dispatch.elapsed.as_millis() as u64,
            plugin = %plugin.digest().short(),
            "event handled"
        );
        match dispatch.outcome {
            Outcome::Ack => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = message.ack().await {
                    tracing::warn!(%error, "ack failed; the event will be redelivered");
                }
            }
            Outcome::Retry { delay } if attempt < max_deliver => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = delay.unwrap_or_else(|| handler.config.retry.delay(attempt));
                if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(%error, "nak failed; the event will be redelivered after ack_wait");
                }
            }
            Outcome::Retry { .. } => {
                let last = dispatch
                    .fault
                    .map(|f| f.to_string())
                    .unwrap_or_else(|| "the handler asked to retry".into());
                let reason = format!("gave up after {attempt} deliveries (max_deliver {max_deliver}); last: {last}");
                dead_letter(js, handler, shared, &message, sequence, attempt, plugin.digest().as_str(), &reason).await;
            }
            Outcome::Reject { reason } => {
                dead_letter(js, handler, shared, &message, sequence, attempt, plugin.digest().as_str(), &reason).await;
            }
        }
    }
    .instrument(span)
    .await
}

fn one_line(reason: &str) -> String {
    let mut line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// Publishes `message` to the dead-letter stream with why and where from,
/// then terms it. If the publish is not acknowledged, naks instead.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    js: &Context,
    handler: &Handler,
    shared: &Shared,
    message: &Message,
    sequence: u64,
    attempt: u32,
    digest: &str,
    reason: &str,
) {
    let mut headers = message.headers.clone().unwrap_or_default();
    let reason = one_line(reason);
    headers.insert(headers::REASON, reason.as_str());
    headers.insert(headers::HANDLER, handler.name());
    headers.insert(headers::PLUGIN_DIGEST, digest);
    headers.insert(headers::DELIVERY_COUNT, attempt.to_string().as_str());
    headers.insert(headers::ORIGINAL_SUBJECT, message.subject.as_str());
    headers.insert(headers::ORIGINAL_STREAM, shared.config.nats.stream.as_str());
    headers.insert(headers::ORIGINAL_SEQUENCE, sequence.to_string().as_str());
    headers.insert(
        headers::DEAD_LETTERED_AT,
        millis_since_epoch(SystemTime::now()).to_string().as_str(),
    );
    let subject = format!("{}.{}", shared.config.nats.dead_letter_subject, handler.name());
    let published = async {
        js.publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await?
            .await
    };
    match published.await {
        Ok(_) => {
            handler.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            shared.metrics.dead_lettered(handler.name());
            tracing::warn!(%reason, dead_letter_subject = %subject, "event dead-lettered");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%error, "term failed after dead-lettering; a redelivery will be dead-lettered again");
            }
        }
        Err(error) => {
            let delay = handler.config.retry.delay(attempt);
            tracing::error!(%error, %reason, retry_in = ?delay, "cannot publish dead letter; keeping the event");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}
