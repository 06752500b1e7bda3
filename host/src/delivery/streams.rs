//! Stream and consumer set-up: the connection to NATS, the source and
//! dead-letter streams, and each handler's durable pull consumer.
//!
//! The server's own `max_deliver` is left unlimited: the host counts
//! deliveries and dead-letters the event itself (see [`super::settle`]), so
//! an event whose every delivery crashed its host is still dead-lettered
//! instead of silently dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, StorageType, Stream, SubjectTransform};

use tokio_util::sync::CancellationToken;

use crate::config::{HandlerConfig, NatsConfig};
use crate::handler::Handler;
use crate::health::Health;
use crate::partition::Mapping;
use crate::secret::mask_urls;

/// Connects to NATS with the configuration's TLS and credentials. A server
/// that is down or unreachable is retried, one warning per attempt naming
/// the server and the cause, readiness false meanwhile; what retrying
/// cannot fix (credentials refused, an untrusted certificate, a secret
/// file missing) is an error naming the server and the cause. Once
/// connected the client reconnects by itself for as long as the process
/// lives; `health.nats` follows the connection state. `None` when
/// `shutdown` came first.
pub async fn connect(
    config: &NatsConfig,
    health: Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Context>> {
    let url = mask_urls(&config.url);
    let mut delay = Duration::from_millis(250);
    for attempt in 1u32.. {
        let options = crate::nats::options(config, "switchyard")?
            .max_reconnects(None)
            .event_callback({
                let health = health.clone();
                let url: Arc<str> = url.as_str().into();
                move |event| on_event(health.clone(), url.clone(), event)
            });
        let error = tokio::select! {
            connected = options.connect(crate::nats::servers(&config.url)) => match connected {
                Ok(client) => {
                    health.nats.store(true, Ordering::Relaxed);
                    return Ok(Some(async_nats::jetstream::new(client)));
                }
                Err(error) => error,
            },
            () = shutdown.cancelled() => return Ok(None),
        };
        let described = crate::nats::describe(&config.url, &error);
        if crate::nats::refusal(&error).is_some() {
            return Err(described);
        }
        tracing::warn!(attempt, retry_in = ?delay, "{described}; not ready until it answers");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    Ok(None)
}

/// Follows the connection after the first connect: readiness, and a
/// warning for each failed reconnect or server error.
async fn on_event(health: Arc<Health>, url: Arc<str>, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            health.nats.store(true, Ordering::Relaxed);
            tracing::info!(%url, "NATS connected");
        }
        async_nats::Event::Disconnected => {
            health.nats.store(false, Ordering::Relaxed);
            tracing::warn!("NATS disconnected; reconnecting");
        }
        async_nats::Event::ClientError(error) => {
            tracing::warn!(%error, "NATS reconnect failed; retrying");
        }
        async_nats::Event::ServerError(error) => {
            tracing::warn!(%error, "NATS server error");
        }
        other => tracing::debug!(event = %other, "NATS event"),
    }
}

/// Waits until JetStream answers on the connection, so that an unreachable
/// NATS at start-up is retried like the other backends instead of ending
/// the process: one warning per attempt naming the server and the cause,
/// readiness false meanwhile. Returns false when `shutdown` came first.
pub async fn wait_for_jetstream(
    js: &Context,
    config: &NatsConfig,
    shutdown: &CancellationToken,
) -> bool {
    let url = mask_urls(&config.url);
    let mut delay = Duration::from_millis(250);
    for attempt in 1u32.. {
        let error = tokio::select! {
            answer = js.query_account() => match answer {
                Ok(_) => return true,
                Err(error) => error,
            },
            () = shutdown.cancelled() => return false,
        };
        let state = js.client().connection_state();
        tracing::warn!(
            %url,
            attempt,
            connection = %state,
            %error,
            retry_in = ?delay,
            "NATS JetStream not answering; not ready until it does"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    false
}

/// Makes sure the source and dead-letter streams exist, with the
/// configured replica count, and the source stream with the partition
/// mapping when a handler is partitioned (see [`crate::partition`]).
pub async fn ensure_streams(
    js: &Context,
    config: &NatsConfig,
    mapping: Option<&Mapping>,
) -> anyhow::Result<()> {
    let transform = mapping.map(|m| SubjectTransform {
        source: m.source().to_string(),
        destination: m.destination(),
    });
    let source = ensure_stream(
        js,
        stream::Config {
            name: config.stream.clone(),
            subjects: config.stream_subjects.clone(),
            storage: StorageType::File,
            num_replicas: config.replicas as usize,
            subject_transform: transform,
            ..Default::default()
        },
        "stream",
    )
    .await?;
    tracing::info!(
        stream = %source.config.name,
        subjects = ?source.config.subjects,
        replicas = source.config.num_replicas,
        partitions = ?source.config.subject_transform.as_ref().map(|t| &t.destination),
        "source stream ready"
    );
    ensure_stream(
        js,
        stream::Config {
            name: config.dead_letter_stream.clone(),
            subjects: vec![format!("{}.>", config.dead_letter_subject)],
            storage: StorageType::File,
            num_replicas: config.replicas as usize,
            ..Default::default()
        },
        "dead-letter stream",
    )
    .await?;
    Ok(())
}

/// Creates the stream `wanted` when missing; an existing one is brought to
/// its replica count and given its subject transform when it has none. A
/// transform other than the wanted one is refused: changing it would move
/// keys between partitions under events already stored.
async fn ensure_stream(
    js: &Context,
    wanted: stream::Config,
    what: &str,
) -> anyhow::Result<stream::Info> {
    let name = wanted.name.clone();
    let mut existing = match js.get_stream(&name).await {
        Ok(existing) => existing,
        Err(_) => {
            let mut created = js
                .create_stream(wanted)
                .await
                .with_context(|| format!("cannot create {what} {name}"))?;
            return Ok(created.info().await?.clone());
        }
    };
    let info = existing
        .info()
        .await
        .with_context(|| format!("cannot read {what} {name}"))?
        .clone();
    let mut config = info.config.clone();
    let mut changes = Vec::new();
    if config.num_replicas != wanted.num_replicas {
        changes.push(format!(
            "replicas {} -> {}",
            config.num_replicas, wanted.num_replicas
        ));
        config.num_replicas = wanted.num_replicas;
    }
    match (&config.subject_transform, &wanted.subject_transform) {
        (Some(have), Some(want)) if have != want => anyhow::bail!(
            "{what} {name} maps `{}` to `{}`, but the configuration partitions it as `{}`; \
             changing the mapping would move keys between partitions under events already \
             stored: drain the stream, delete the partition durables and the stream's \
             transform, then start again",
            have.source,
            have.destination,
            want.destination
        ),
        (None, Some(want)) => {
            tracing::warn!(
                stream = %name,
                pending = info.state.messages,
                "the stream is partitioned from now on; messages it stored before keep their \
                 subjects and are not seen by the partition consumers"
            );
            changes.push(format!(
                "subject transform `{}` -> `{}`",
                want.source, want.destination
            ));
            config.subject_transform = Some(want.clone());
        }
        (Some(have), None) => tracing::warn!(
            stream = %name,
            transform = %format!("{} -> {}", have.source, have.destination),
            "the stream partitions its subjects but no handler here is partitioned"
        ),
        _ => {}
    }
    if changes.is_empty() {
        return Ok(info);
    }
    tracing::info!(stream = %name, changes = %changes.join("; "), "updating the {what}");
    js.update_stream(config)
        .await
        .with_context(|| format!("cannot update {what} {name} ({})", changes.join("; ")))
}

/// The consumer settings of partition `partition` of a partitioned handler.
pub fn partition_consumer_config(
    handler: &HandlerConfig,
    mapping: &Mapping,
    partition: u32,
) -> pull::Config {
    pull::Config {
        durable_name: Some(Mapping::durable(&handler.durable, partition)),
        description: Some(format!(
            "switchyard handler {}, partition {partition} of {}",
            handler.name, mapping.count
        )),
        filter_subjects: vec![mapping.filter(partition)],
        ..consumer_config(handler)
    }
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

/// Creates the handler's durable consumer, or brings an existing one to
/// the handler's settings. A durable that another handler (or anything but
/// Switchyard) created is refused, never shared: one consumer has one
/// filter, and sharing it would silently starve one of the two.
pub async fn open_consumer(stream: &Stream, handler: &Handler) -> anyhow::Result<PullConsumer> {
    open_consumer_with(stream, handler, consumer_config(&handler.config)).await
}

/// [`open_consumer`] for one partition of a partitioned handler.
pub async fn open_partition_consumer(
    stream: &Stream,
    handler: &Handler,
    mapping: &Mapping,
    partition: u32,
) -> anyhow::Result<PullConsumer> {
    let config = partition_consumer_config(&handler.config, mapping, partition);
    open_consumer_with(stream, handler, config).await
}

async fn open_consumer_with(
    stream: &Stream,
    handler: &Handler,
    config: pull::Config,
) -> anyhow::Result<PullConsumer> {
    let durable = config.durable_name.clone().unwrap_or_default();
    let durable = &durable;
    let existing = match stream.consumer_info(durable).await {
        Ok(info) => info.config,
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
            return stream.create_consumer(config).await.with_context(|| {
                format!(
                    "handler `{}`: cannot create durable consumer {durable}",
                    handler.name()
                )
            });
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "handler `{}`: cannot read durable consumer {durable}",
                    handler.name()
                )
            });
        }
    };
    if existing.description != config.description {
        let owner = existing.description.as_deref().unwrap_or("no description");
        anyhow::bail!(
            "handler `{}`: durable consumer {durable} on stream {} is not this handler's \
             (its description: \"{owner}\"); give the handler a durable of its own, \
             or delete that consumer if it is no longer used",
            handler.name(),
            stream.cached_info().config.name,
        );
    }
    let changes = consumer_changes(&existing, &config);
    if changes.is_empty() {
        return stream
            .get_consumer(durable)
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| {
                format!(
                    "handler `{}`: cannot open durable consumer {durable}",
                    handler.name()
                )
            });
    }
    tracing::warn!(
        handler = handler.name(),
        durable = %durable,
        changes = %changes.join("; "),
        "durable consumer differs from the configuration; updating it"
    );
    stream.update_consumer(config).await.with_context(|| {
        format!(
            "handler `{}`: durable consumer {durable} differs from the configuration ({}) \
             and cannot be updated",
            handler.name(),
            changes.join("; ")
        )
    })
}

/// The settings of `existing` that differ from `wanted`, as
/// `name: old -> new`.
fn consumer_changes(existing: &consumer::Config, wanted: &pull::Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{name}: {old} -> {new}"));
        }
    };
    let mut old_filters = existing.filter_subjects.clone();
    if !existing.filter_subject.is_empty() {
        old_filters.push(existing.filter_subject.clone());
    }
    old_filters.sort();
    let mut new_filters = wanted.filter_subjects.clone();
    new_filters.sort();
    compare(
        "filter_subjects",
        format!("{old_filters:?}"),
        format!("{new_filters:?}"),
    );
    compare(
        "ack_wait",
        format!("{:?}", existing.ack_wait),
        format!("{:?}", wanted.ack_wait),
    );
    compare(
        "max_ack_pending",
        existing.max_ack_pending.to_string(),
        wanted.max_ack_pending.to_string(),
    );
    compare(
        "max_deliver",
        existing.max_deliver.to_string(),
        wanted.max_deliver.to_string(),
    );
    compare(
        "deliver_policy",
        format!("{:?}", existing.deliver_policy),
        format!("{:?}", wanted.deliver_policy),
    );
    compare(
        "ack_policy",
        format!("{:?}", existing.ack_policy),
        format!("{:?}", wanted.ack_policy),
    );
    changes
}
