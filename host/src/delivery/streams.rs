//! Stream and consumer set-up: the connection to NATS, the source and
//! dead-letter streams, and each handler's durable pull consumer.
//!
//! The server's own `max_deliver` is left unlimited: the host counts
//! deliveries and dead-letters the event itself (see [`super::settle`]), so
//! an event whose every delivery crashed its host is still dead-lettered
//! instead of silently dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, StorageType, Stream};

use crate::config::{HandlerConfig, NatsConfig};
use crate::handler::Handler;
use crate::health::Health;

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
    .with_context(|| {
        format!(
            "cannot create or open dead-letter stream {}",
            config.dead_letter_stream
        )
    })?;
    Ok(())
}

/// The consumer settings for a handler.
pub fn consumer_config(handler: &HandlerConfig) -> pull::Config {
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

/// Creates the handler's durable consumer, or updates it to the handler's
/// settings when it exists.
pub async fn open_consumer(stream: &Stream, handler: &Handler) -> anyhow::Result<PullConsumer> {
    let config = consumer_config(&handler.config);
    match stream.create_consumer(config.clone()).await {
        Ok(consumer) => Ok(consumer),
        Err(_) => stream.update_consumer(config).await.with_context(|| {
            format!(
                "handler `{}`: cannot create or update durable consumer {}",
                handler.name(),
                handler.config.durable
            )
        }),
    }
}
