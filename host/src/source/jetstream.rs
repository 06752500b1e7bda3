//! NATS JetStream: streams, durable pull consumers, settling events, and
//! the dead-letter stream.
//!
//! Each handler gets one durable pull consumer with explicit acks. A
//! consumer task pulls messages and runs up to `concurrency` of them at
//! once; each message is settled only after its handler returned, so its
//! effects are complete before the server hears anything:
//!
//! | outcome           | settlement                                         |
//! |-------------------|----------------------------------------------------|
//! | `ack`             | ack                                                |
//! | `retry(d)`        | nak with delay `d` (the handler's backoff if none); with an order key, retried in place |
//! | `reject(reason)`  | publish to the dead-letter stream, then term       |
//! | any, at the last delivery | dead-letter as above, with the last reason |
//!
//! The server's own `max_deliver` is left unlimited: the host counts
//! deliveries and dead-letters the event itself, so an event whose every
//! delivery crashed its host is still dead-lettered (on the delivery after
//! `max_deliver`, without running it again) instead of silently dropped.
//! A dead letter that cannot be published is not termed: the event is
//! nak'ed and comes back, so nothing is lost.
//!
//! # Pulling and holding
//!
//! The consumer task owns its pull requests: each asks the server for as
//! many messages as this host has room to hold, and stays open for at most
//! [`PULL_EXPIRES`]. Every message received therefore already has its place
//! (a *hold* slot); nothing sits in a client buffer unaccounted for. Without
//! an order key a host holds at most `concurrency` messages, all running;
//! with one it holds up to [`HOLD_PER_SLOT`] × `concurrency` (at most
//! `max_ack_pending`), the extra ones waiting in per-key queues.
//!
//! While a message is held (queued, running or waiting to be retried), an
//! in-progress ack goes to the server every `ack_wait / 2`, so an event that
//! waits for its key or runs long is not redelivered behind its back.
//!
//! # Per-key ordering
//!
//! With `order_key` (JSON pointers into the payload, first match wins) or
//! `order_key_subject_token`, events that share a key run one at a time, in
//! stream order, while different keys run in parallel up to `concurrency`.
//! A `retry` of a keyed event is retried in place: the host keeps the
//! message (sending in-progress acks), waits the delay, and runs it again,
//! so later events of the key wait for it. An event whose key cannot be
//! extracted runs unordered. See the README's "Delivery" section for what
//! is and is not guaranteed.
//!
//! # Exclusive handlers
//!
//! With `exclusive = true` the pull loop runs only while this host holds
//! the handler's [`crate::lease::Lease`]; without it the host stands by. A
//! lost lease ends the current pull request: events already running finish
//! and are settled here, events queued behind their key are nak'ed so the
//! new holder runs them in order. A stopping host releases the lease after
//! its drain.
//!
//! # Draining
//!
//! When `shutdown` is cancelled the task stops asking for messages; queued
//! events that have not started are taken off their queues at once and,
//! with the messages that arrive on the last open pull request, nak'ed (no
//! delay, in stream order) when it closes, so another host takes them; in-flight events get `drain_grace`, after which
//! they are stopped and nak'ed. The task returns once every held message
//! is settled and the connection has flushed the settlements.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{AckKind, Context, Message};
use futures::StreamExt;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bindings::event::Event;
use crate::config::{HandlerConfig, NatsConfig};
use crate::lease::Lease;
use crate::lock;
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
    /// Set (to the payload's size in bytes) when the payload and headers
    /// together would exceed the server's `max_payload`: the dead letter
    /// then carries no payload, and a replay reads it from the original
    /// stream at `ORIGINAL_SEQUENCE`.
    pub const PAYLOAD_OMITTED: &str = "Switchyard-Payload-Omitted";
    /// Every header this host adds starts with this.
    pub const PREFIX: &str = "Switchyard-";
}

/// Longest reason put in a header; NATS headers are one line each.
const MAX_REASON_BYTES: usize = 1024;

/// How long one pull request stays open at the server. Also the longest a
/// drain waits for the last request to close.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long after [`PULL_EXPIRES`] a pull request is given up on when the
/// server has not closed it (a server that restarted forgot it): its
/// messages all arrive before the server expires it, so none can come later.
const PULL_SLACK: Duration = Duration::from_secs(2);

/// With an order key, messages held per concurrency slot (running or queued
/// behind their key).
pub const HOLD_PER_SLOT: u32 = 8;

/// After the grace period, how long a drain waits for stopped events to be
/// settled before giving up on them (they come back after `ack_wait`).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Creates (or updates) each handler's durable consumer and starts one task
/// per handler. The tasks end once `shutdown` is cancelled and every
/// message they hold is settled (see the module docs on draining).
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
    let leases = if shared.handlers.iter().any(|h| h.config.exclusive) {
        Some(crate::lease::open_bucket(js, &shared.config.nats.lease_kv).await?)
    } else {
        None
    };
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
        let lease = match (&leases, handler.config.exclusive) {
            (Some(store), true) => {
                let key = format!("{}.{}", shared.config.nats.stream, handler.config.durable);
                let lease = Lease::new(store.clone(), key);
                let _ = handler.lease.set(lease.clone());
                tokio::spawn(lease.clone().run(shutdown.clone()));
                Some(lease)
            }
            _ => None,
        };
        let flow = Flow::new(
            js.clone(),
            handler.clone(),
            shared.clone(),
            shutdown.clone(),
            lease,
        );
        tracing::info!(
            handler = %handler.name(),
            durable = %handler.config.durable,
            subjects = ?handler.config.subjects,
            order_key = %flow.order.as_ref().map_or_else(|| "none".to_string(), ToString::to_string),
            hold = flow.hold_capacity,
            "consumer ready"
        );
        tokio::spawn(watch_consumer(
            consumer.clone(),
            handler.clone(),
            shared.clone(),
            shutdown.clone(),
        ));
        tasks.push(tokio::spawn(consume(flow, consumer)));
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
        if let Some(lease) = handler.lease.get() {
            shared.metrics.lease_held(handler.name(), lease.is_held());
        }
    }
}

// --- order keys --------------------------------------------------------------

/// Where an event's ordering key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// JSON pointers (RFC 6901) into the payload; the first one that
    /// resolves to a string, number or boolean gives the key.
    Pointers(Vec<Pointer>),
    /// The subject token at this 0-based index.
    SubjectToken(usize),
}

/// A parsed JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `/a/b~1c` (tokens `a`, `b/c`). Must be empty or start with `/`;
    /// `~` must be followed by `0` or `1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("JSON pointer `{text}` must start with `/`"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "JSON pointer `{text}`: `~` must be followed by 0 or 1"
                            ));
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The value at this pointer in `payload` as a key: a string as is, a
    /// number or boolean as its JSON text. `None` when the payload is not
    /// JSON, the pointer does not resolve, or the value is null, an object
    /// or an array. Values outside the path are skipped without being
    /// built, however large or deeply nested.
    pub fn resolve(&self, payload: &[u8]) -> Option<String> {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let found = Walk {
            tokens: &self.tokens,
        }
        .deserialize(&mut deserializer)
        .ok()?;
        deserializer.end().ok()?;
        found
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl OrderKey {
    /// The handler's ordering, if it has one.
    pub fn of(config: &HandlerConfig) -> Option<OrderKey> {
        if let Some(token) = config.order_key_subject_token {
            return Some(OrderKey::SubjectToken(token as usize));
        }
        let pointers: Vec<Pointer> = config
            .order_key
            .iter()
            .filter_map(|text| Pointer::parse(text).ok())
            .collect();
        (!pointers.is_empty()).then_some(OrderKey::Pointers(pointers))
    }

    /// The key of an event, or `None` when it has none (it then runs
    /// unordered).
    pub fn extract(&self, subject: &str, payload: &[u8]) -> Option<String> {
        match self {
            OrderKey::SubjectToken(index) => subject.split('.').nth(*index).map(str::to_string),
            OrderKey::Pointers(pointers) => pointers.iter().find_map(|p| p.resolve(payload)),
        }
    }
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderKey::SubjectToken(index) => write!(f, "subject token {index}"),
            OrderKey::Pointers(pointers) => {
                let texts: Vec<&str> = pointers.iter().map(|p| p.text.as_str()).collect();
                write!(f, "{}", texts.join(", "))
            }
        }
    }
}

/// Follows a pointer's tokens through a JSON document, skipping everything
/// else with `IgnoredAny` (which serde_json skips without recursing).
struct Walk<'p> {
    tokens: &'p [String],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.tokens.is_empty() {
            deserializer.deserialize_any(Leaf)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (head, rest) = (&self.tokens[0], &self.tokens[1..]);
        let mut found = None;
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && name == head.as_str() {
                found = map.next_value_seed(Walk { tokens: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (head, rest) = (&self.tokens[0], &self.tokens[1..]);
        // RFC 6901: an index is `0` or digits without a leading zero.
        let index = (head == "0" || (!head.starts_with('0') && !head.is_empty()))
            .then(|| head.parse::<usize>().ok())
            .flatten();
        let mut found = None;
        let mut position = 0usize;
        loop {
            if Some(position) == index {
                match seq.next_element_seed(Walk { tokens: rest })? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            position += 1;
        }
        Ok(found)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The value a pointer ends at.
struct Leaf;

impl<'de> Visitor<'de> for Leaf {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }
    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

// --- the consumer task ---------------------------------------------------------

/// One handler's consumer state, shared by the pull loop and event tasks.
struct Flow {
    js: Context,
    handler: Arc<Handler>,
    shared: Arc<Shared>,
    order: Option<OrderKey>,
    /// Events running at once: `concurrency`.
    run: Arc<Semaphore>,
    /// Messages in this host's hands, settled or not yet: see the module docs.
    hold: Arc<Semaphore>,
    hold_capacity: u32,
    /// Per key, the events waiting behind the one running. A key is present
    /// exactly while a task runs its events.
    queues: Mutex<HashMap<String, VecDeque<Held>>>,
    shutdown: CancellationToken,
    /// Cancelled when the drain grace period is over: running events stop.
    abort: CancellationToken,
    drain: DrainCounts,
    /// For an exclusive handler: pull only while this is held.
    lease: Option<Arc<Lease>>,
}

#[derive(Default)]
struct DrainCounts {
    /// Nak'ed at shutdown without having started.
    unstarted: AtomicU64,
    /// Stopped after the grace period and nak'ed.
    stopped: AtomicU64,
}

/// A message this host holds, from receipt to settlement.
struct Held {
    message: Message,
    sequence: u64,
    /// The server's delivery count.
    delivered: u32,
    published: SystemTime,
    keepalive: KeepAlive,
    _hold: OwnedSemaphorePermit,
}

/// Sends an in-progress ack every `period` until stopped or dropped.
struct KeepAlive(AbortHandle);

impl KeepAlive {
    fn start(message: &Message, period: Duration) -> Self {
        let client = message.context.client();
        let reply = message.reply.clone();
        let task = tokio::spawn(async move {
            let Some(reply) = reply else { return };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match client
                    .publish(reply.clone(), bytes::Bytes::from_static(b"+WPI"))
                    .await
                {
                    Ok(()) => tracing::debug!(reply = %reply, "in-progress ack sent"),
                    Err(error) => tracing::debug!(%error, "in-progress ack not sent"),
                }
            }
        });
        KeepAlive(task.abort_handle())
    }

    fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Held {
    /// Naks (after stopping the in-progress acks).
    async fn nak(&self, delay: Option<Duration>) {
        self.keepalive.stop();
        if let Err(error) = self.message.ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(%error, sequence = self.sequence, "nak failed; the event will be redelivered after ack_wait");
        }
    }
}

/// What one run of an event left to do.
enum Step {
    /// Acked, nak'ed or dead-lettered.
    Settled,
    /// Retry in place after this delay (keyed events only).
    RetryIn(Duration),
    /// The drain grace period ended while it ran; not settled yet.
    Stopped,
}

impl Flow {
    fn new(
        js: Context,
        handler: Arc<Handler>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        lease: Option<Arc<Lease>>,
    ) -> Arc<Self> {
        let order = OrderKey::of(&handler.config);
        let concurrency = handler.config.concurrency;
        let hold_capacity = match order {
            None => concurrency,
            Some(_) => concurrency
                .saturating_mul(HOLD_PER_SLOT)
                .min(handler.config.max_ack_pending)
                .max(concurrency),
        };
        Arc::new(Flow {
            js,
            handler,
            shared,
            order,
            run: Arc::new(Semaphore::new(concurrency as usize)),
            hold: Arc::new(Semaphore::new(hold_capacity as usize)),
            hold_capacity,
            queues: Mutex::new(HashMap::new()),
            shutdown,
            abort: CancellationToken::new(),
            drain: DrainCounts::default(),
            lease,
        })
    }

    /// For an exclusive handler without the lease: stands by until this
    /// host takes it; then, if a previous holder left messages waiting for
    /// an ack, waits `ack_wait` so they come back before any later event.
    /// False when shut down first.
    async fn take_over(&self, consumer: &mut PullConsumer) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        if lease.is_held() {
            return true;
        }
        // Events waiting behind their key go back to the stream, so the
        // holder runs them in order; what is running finishes here.
        let handed_back = self.nak_queued().await;
        if handed_back > 0 {
            tracing::warn!(handler = %self.name(), handed_back, "lease lost: queued events handed back");
        }
        tracing::info!(handler = %self.name(), lease = %lease.key(), "standing by: another host runs this handler");
        tokio::select! {
            () = lease.acquired() => {}
            () = self.shutdown.cancelled() => return false,
        }
        // Unsettled messages this host holds itself (after a lost lease) are
        // not a previous holder's.
        let ours = (self.hold_capacity as usize).saturating_sub(self.hold.available_permits());
        // When the consumer cannot be read, assume the worst and wait.
        let unacked = match consumer.info().await {
            Ok(info) => Some(info.num_ack_pending.saturating_sub(ours)),
            Err(error) => {
                tracing::warn!(handler = %self.name(), %error, "cannot read the consumer after taking the lease");
                None
            }
        };
        if unacked != Some(0) {
            let wait = self.handler.config.ack_wait;
            tracing::info!(handler = %self.name(), ?unacked, ?wait, "took over with events a previous holder may not have settled; waiting for them to come back first");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return false,
            }
        }
        true
    }

    /// Returns when an exclusive handler's lease is lost; never otherwise.
    async fn lease_lost(&self) {
        match &self.lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    }

    fn name(&self) -> &str {
        self.handler.name()
    }

    /// Wraps a received message, or terms it when it carries no JetStream
    /// metadata (it could never be acked).
    async fn hold_message(&self, message: Message, permit: OwnedSemaphorePermit) -> Option<Held> {
        let (sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                SystemTime::from(info.published),
            ),
            Err(error) => {
                tracing::error!(handler = %self.name(), subject = %message.subject, %error, "message without JetStream metadata; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let period = (self.handler.config.ack_wait / 2).max(Duration::from_millis(100));
        let keepalive = KeepAlive::start(&message, period);
        Some(Held {
            message,
            sequence,
            delivered,
            published,
            keepalive,
            _hold: permit,
        })
    }

    /// Starts a received message: on its key's queue, or on its own.
    fn dispatch(self: &Arc<Self>, held: Held) {
        let key = self
            .order
            .as_ref()
            .and_then(|order| order.extract(held.message.subject.as_str(), &held.message.payload));
        let Some(key) = key else {
            tokio::spawn(process(self.clone(), held, false));
            return;
        };
        let mut queues = lock(&self.queues);
        match queues.get_mut(&key) {
            Some(queue) => enqueue(queue, held),
            None => {
                queues.insert(key.clone(), VecDeque::new());
                tokio::spawn(run_key(self.clone(), key, held));
            }
        }
    }

    /// Takes every event waiting behind its key out of the queues: none of
    /// them will start here.
    fn take_queued(&self) -> Vec<Held> {
        let mut queues = lock(&self.queues);
        queues.values_mut().flat_map(std::mem::take).collect()
    }

    /// Naks, without delay, every event waiting behind its key; how many.
    async fn nak_queued(&self) -> u64 {
        let mut waiting = self.take_queued();
        waiting.sort_by_key(|held| held.sequence);
        let count = waiting.len() as u64;
        for held in waiting {
            held.nak(None).await;
        }
        count
    }

    /// At shutdown: [`Flow::nak_queued`], counted for the drain report.
    async fn nak_queued_at_shutdown(&self) {
        let count = self.nak_queued().await;
        self.drain.unstarted.fetch_add(count, Ordering::Relaxed);
    }
}

/// Puts `held` behind the queued events of its key with a lower stream
/// sequence (a redelivery goes before later events that are still waiting).
/// A second delivery of a message already queued replaces the first.
fn enqueue(queue: &mut VecDeque<Held>, held: Held) {
    if let Some(same) = queue.iter_mut().find(|h| h.sequence == held.sequence) {
        *same = held;
        return;
    }
    let at = queue
        .iter()
        .rposition(|h| h.sequence < held.sequence)
        .map_or(0, |i| i + 1);
    queue.insert(at, held);
}

/// Runs a key's events one after the other until its queue is empty.
async fn run_key(flow: Arc<Flow>, key: String, first: Held) {
    let mut next = Some(first);
    while let Some(held) = next.take() {
        process(flow.clone(), held, true).await;
        let mut queues = lock(&flow.queues);
        match queues.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(held) => next = Some(held),
            None => {
                queues.remove(&key);
            }
        }
    }
}

/// Runs one held message to its settlement: waits for a slot, runs it,
/// and (keyed events) retries it in place.
async fn process(flow: Arc<Flow>, held: Held, in_place: bool) {
    let mut local_retries = 0u32;
    loop {
        let permit = tokio::select! {
            biased;
            () = flow.shutdown.cancelled() => None,
            permit = flow.run.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            flow.drain.unstarted.fetch_add(1, Ordering::Relaxed);
            held.nak(None).await;
            return;
        };
        let attempt = held.delivered.saturating_add(local_retries);
        let step = run_event(&flow, &held, attempt, in_place).await;
        drop(permit);
        match step {
            Step::Settled => return,
            Step::Stopped => {
                flow.drain.stopped.fetch_add(1, Ordering::Relaxed);
                held.nak(None).await;
                return;
            }
            Step::RetryIn(delay) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => local_retries += 1,
                    () = flow.shutdown.cancelled() => {
                        // Another host retries it; no point waiting here.
                        held.nak(None).await;
                        return;
                    }
                }
            }
        }
    }
}

/// The pull loop, then the drain.
async fn consume(flow: Arc<Flow>, mut consumer: PullConsumer) {
    let name = flow.name().to_string();
    let mut stopping_at: Option<Instant> = None;
    'pull: while stopping_at.is_none() {
        if !flow.take_over(&mut consumer).await {
            break 'pull;
        }
        // Room for at least one message; then ask for as many as there is room.
        let first = tokio::select! {
            biased;
            () = flow.shutdown.cancelled() => break 'pull,
            permit = flow.hold.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break 'pull,
            },
        };
        let mut room = vec![first];
        while let Ok(permit) = flow.hold.clone().try_acquire_owned() {
            room.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(room.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                drop(room);
                tracing::warn!(handler = %name, %error, "cannot pull messages; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                    () = flow.shutdown.cancelled() => break 'pull,
                }
            }
        };
        // Messages that arrive after the shutdown signal, nak'ed once the
        // request is closed (a nak while it is open could bring them back
        // to this same request, behind later events of their key). Events
        // taken out of the key queues at shutdown or a lost lease wait here
        // too; all are nak'ed in stream order, so whoever runs them next
        // gets each key's events in order.
        let mut late: Vec<Held> = Vec::new();
        // The lease was lost during this request: what it still brings is
        // handed back like `late`.
        let mut handing_over = false;
        let mut failed = false;
        let give_up = tokio::time::Instant::now() + PULL_EXPIRES + PULL_SLACK;
        let mut connection = tokio::time::interval(Duration::from_millis(100));
        let mut disconnected = false;
        loop {
            let next = tokio::select! {
                biased;
                () = flow.shutdown.cancelled(), if stopping_at.is_none() => {
                    stopping_at = Some(Instant::now());
                    late.extend(flow.take_queued());
                    continue;
                }
                // Another host runs the handler now: hand back what waits
                // behind its key, then what this request still brings.
                () = flow.lease_lost(), if stopping_at.is_none() && !handing_over => {
                    handing_over = true;
                    late.extend(flow.take_queued());
                    tracing::warn!(handler = %name, "lease lost: stopped taking events; handing back the ones not started");
                    continue;
                }
                next = batch.next() => next,
                () = tokio::time::sleep_until(give_up) => break,
                _ = connection.tick() => {
                    // After a reconnect the request may be gone with the
                    // old connection: ask again rather than wait it out.
                    let connected = flow.js.client().connection_state() == async_nats::connection::State::Connected;
                    if !connected {
                        disconnected = true;
                    } else if disconnected {
                        break;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let Some(permit) = room.pop() else {
                        // More than asked for: cannot happen; never hold it unaccounted.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let Some(held) = flow.hold_message(message, permit).await else {
                        continue;
                    };
                    if stopping_at.is_some() || handing_over {
                        late.push(held);
                    } else {
                        flow.dispatch(held);
                    }
                }
                Some(Err(error)) => {
                    failed = true;
                    tracing::warn!(handler = %name, %error, "pull interrupted; resuming");
                }
                None => break,
            }
        }
        drop(batch);
        drop(room);
        late.sort_by_key(|held| held.sequence);
        let handed_back = late.len();
        for held in late {
            if stopping_at.is_some() {
                flow.drain.unstarted.fetch_add(1, Ordering::Relaxed);
            }
            held.nak(None).await;
        }
        if handing_over {
            tracing::warn!(handler = %name, handed_back, "lease lost: events not started handed back");
        }
        if failed && stopping_at.is_none() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = flow.shutdown.cancelled() => {}
            }
        }
    }
    let stopping_at = stopping_at.unwrap_or_else(Instant::now);
    if flow.shutdown.is_cancelled() {
        flow.nak_queued_at_shutdown().await;
    }

    // Drain: every hold slot back means every held message was settled.
    let grace = flow.handler.config.drain_grace;
    let all = flow.hold_capacity;
    let drained =
        tokio::time::timeout_at((stopping_at + grace).into(), flow.hold.acquire_many(all)).await;
    let drained = match drained {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(handler = %name, ?grace, "drain grace period over; stopping the events still running and nak'ing them");
            flow.abort.cancel();
            tokio::time::timeout(SETTLE_TIMEOUT, flow.hold.acquire_many(all))
                .await
                .is_ok()
        }
    };
    // Settlements are publishes: make sure they left this process.
    let flushed = tokio::time::timeout(Duration::from_secs(5), flow.js.client().flush()).await;
    let flushed = matches!(flushed, Ok(Ok(())));
    // Only now may a standby take over: nothing of ours is in flight.
    if let Some(lease) = &flow.lease {
        lease.release().await;
    }
    tracing::info!(
        handler = %name,
        nak_unstarted = flow.drain.unstarted.load(Ordering::Relaxed),
        nak_after_grace = flow.drain.stopped.load(Ordering::Relaxed),
        settled = drained,
        flushed,
        elapsed_ms = stopping_at.elapsed().as_millis() as u64,
        "consumer drained"
    );
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

/// Runs one delivery attempt of a held message through its handler and
/// settles it, unless it is to be retried in place or was stopped.
async fn run_event(flow: &Flow, held: &Held, attempt: u32, in_place: bool) -> Step {
    let (handler, shared, js) = (&*flow.handler, &*flow.shared, &flow.js);
    let message = &held.message;
    let sequence = held.sequence;
    let span = tracing::info_span!(
        "event",
        handler = %handler.name(),
        subject = %message.subject,
        sequence,
        attempt,
        plugin = tracing::field::Empty,
        outcome = tracing::field::Empty,
        keys_deleted = tracing::field::Empty,
    );
    async {
        let max_deliver = handler.config.max_deliver;
        let plugin = handler.plugin.load_full();
        if attempt > max_deliver {
            let reason = format!(
                "delivered {attempt} times, more than max_deliver {max_deliver}, without being settled (host crash or lost acks)"
            );
            dead_letter(js, handler, shared, held, attempt, plugin.digest().as_str(), &reason).await;
            return Step::Settled;
        }
        let event = Event {
            subject: message.subject.to_string(),
            payload: message.payload.to_vec(),
            headers: event_headers(message.headers.as_ref()),
            stream_sequence: sequence,
            delivery_attempt: attempt,
            published_at_ms: millis_since_epoch(held.published),
        };
        let dispatch = tokio::select! {
            dispatch = crate::shadow::dispatch(shared, handler, &plugin, event) => dispatch,
            () = flow.abort.cancelled() => {
                tracing::warn!("still running after the drain grace period; stopped, will be nak'ed");
                return Step::Stopped;
            }
        };
        shared.metrics.record(handler.name(), attempt, &dispatch);
        let span = tracing::Span::current();
        span.record("plugin", plugin.digest().as_str());
        span.record("outcome", dispatch.outcome.kind());
        span.record("keys_deleted", dispatch.effects.keys_deleted);
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
                held.keepalive.stop();
                if let Err(error) = message.ack().await {
                    tracing::warn!(%error, "ack failed; the event will be redelivered");
                }
            }
            Outcome::Retry { delay } if attempt < max_deliver => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = delay.unwrap_or_else(|| handler.config.retry.delay(attempt));
                if in_place {
                    tracing::debug!(retry_in = ?delay, "retrying in place; later events of the key wait");
                    return Step::RetryIn(delay);
                }
                held.keepalive.stop();
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
                dead_letter(js, handler, shared, held, attempt, plugin.digest().as_str(), &reason).await;
            }
            Outcome::Reject { reason } => {
                dead_letter(js, handler, shared, held, attempt, plugin.digest().as_str(), &reason).await;
            }
        }
        Step::Settled
    }
    .instrument(span)
    .await
}

fn one_line(reason: &str) -> String {
    let mut line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
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

/// The size NATS counts for a message's headers (`NATS/1.0`, one line per
/// value, a blank line).
fn headers_wire_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n".len() + 2;
    for (name, values) in headers.iter() {
        for value in values {
            len += name.to_string().len() + 2 + value.as_str().len() + 2;
        }
    }
    len
}

/// Publishes the held message to the dead-letter stream with why and where
/// from, then terms it. If the publish is not acknowledged, naks instead.
async fn dead_letter(
    js: &Context,
    handler: &Handler,
    shared: &Shared,
    held: &Held,
    attempt: u32,
    digest: &str,
    reason: &str,
) {
    held.keepalive.stop();
    let message = &held.message;
    let mut headers = message.headers.clone().unwrap_or_default();
    let reason = one_line(reason);
    headers.insert(headers::REASON, reason.as_str());
    headers.insert(headers::HANDLER, handler.name());
    headers.insert(headers::PLUGIN_DIGEST, digest);
    headers.insert(headers::DELIVERY_COUNT, attempt.to_string().as_str());
    headers.insert(headers::ORIGINAL_SUBJECT, message.subject.as_str());
    headers.insert(headers::ORIGINAL_STREAM, shared.config.nats.stream.as_str());
    headers.insert(
        headers::ORIGINAL_SEQUENCE,
        held.sequence.to_string().as_str(),
    );
    headers.insert(
        headers::DEAD_LETTERED_AT,
        millis_since_epoch(SystemTime::now()).to_string().as_str(),
    );
    let mut payload = message.payload.clone();
    // Room for the header that says the payload was left out.
    let omitted_header = headers::PAYLOAD_OMITTED.len() + 24;
    if headers_wire_len(&headers) + payload.len() + omitted_header > js.client().max_payload() {
        headers.insert(headers::PAYLOAD_OMITTED, payload.len().to_string().as_str());
        payload = bytes::Bytes::new();
    }
    let subject = format!(
        "{}.{}",
        shared.config.nats.dead_letter_subject,
        handler.name()
    );
    let published = async {
        js.publish_with_headers(subject.clone(), headers, payload)
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

// --- reading and replaying dead letters ----------------------------------------

/// One entry of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// When it was stored in the dead-letter stream.
    pub stored_at: SystemTime,
    pub handler: String,
    pub reason: String,
    pub plugin_digest: String,
    pub delivery_count: Option<u32>,
    pub original_subject: String,
    pub original_stream: String,
    pub original_sequence: Option<u64>,
    /// `Switchyard-Dead-Lettered-At`, else when it was stored.
    pub dead_lettered_at: SystemTime,
    /// The original message's headers: every header but `Switchyard-*`.
    pub original_headers: Vec<(String, String)>,
    /// `Some(size)` when the payload was too large to travel with the dead
    /// letter and stays in the original stream.
    pub payload_omitted: Option<u64>,
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    fn from_message(message: &Message) -> Option<Self> {
        let info = message.info().ok()?;
        let stored_at = SystemTime::from(info.published);
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let original_headers = message
            .headers
            .as_ref()
            .map(|headers| {
                headers
                    .iter()
                    .filter(|(name, _)| !is_switchyard_header(name.as_ref()))
                    .flat_map(|(name, values)| {
                        values
                            .iter()
                            .map(move |v| (name.to_string(), v.as_str().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dead_lettered_at = header(headers::DEAD_LETTERED_AT)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap_or(stored_at);
        Some(DeadLetter {
            sequence: info.stream_sequence,
            stored_at,
            handler: header(headers::HANDLER).unwrap_or_default(),
            reason: header(headers::REASON).unwrap_or_default(),
            plugin_digest: header(headers::PLUGIN_DIGEST).unwrap_or_default(),
            delivery_count: header(headers::DELIVERY_COUNT).and_then(|v| v.parse().ok()),
            original_subject: header(headers::ORIGINAL_SUBJECT).unwrap_or_default(),
            original_stream: header(headers::ORIGINAL_STREAM).unwrap_or_default(),
            original_sequence: header(headers::ORIGINAL_SEQUENCE).and_then(|v| v.parse().ok()),
            dead_lettered_at,
            original_headers,
            payload_omitted: header(headers::PAYLOAD_OMITTED).and_then(|v| v.parse().ok()),
            payload: message.payload.clone(),
        })
    }

    /// Whether `text` occurs in the reason, the original subject, the
    /// plugin digest or the payload (read as UTF-8, lossily).
    pub fn matches(&self, text: &str) -> bool {
        self.reason.contains(text)
            || self.original_subject.contains(text)
            || self.plugin_digest.contains(text)
            || String::from_utf8_lossy(&self.payload).contains(text)
    }
}

fn is_switchyard_header(name: &str) -> bool {
    name.len() >= headers::PREFIX.len()
        && name[..headers::PREFIX.len()].eq_ignore_ascii_case(headers::PREFIX)
}

/// Headers that steer the publish itself and must not travel with a
/// replay: a message id would make the stream drop the replay as a
/// duplicate, an expectation would fail it.
fn is_publish_directive(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "nats-msg-id" || lower.starts_with("nats-expected-")
}

/// Where a handler's dead letters are.
#[derive(Debug, Clone)]
pub struct DeadLetterSource {
    pub stream: String,
    /// `<dead_letter_subject>.<handler>`.
    pub subject: String,
}

impl DeadLetterSource {
    pub fn new(stream: &str, dead_letter_subject: &str, handler: &str) -> Self {
        DeadLetterSource {
            stream: stream.to_string(),
            subject: format!("{dead_letter_subject}.{handler}"),
        }
    }
}

/// Reads the dead letters of one handler, oldest first, without consuming
/// them (an ephemeral ordered consumer).
pub struct DeadLetterReader {
    messages: Option<pull::Ordered>,
    remaining: u64,
}

impl DeadLetterReader {
    pub async fn open(js: &Context, source: &DeadLetterSource) -> anyhow::Result<Self> {
        let stream = js
            .get_stream(&source.stream)
            .await
            .with_context(|| format!("cannot open dead-letter stream {}", source.stream))?;
        let mut consumer: async_nats::jetstream::consumer::Consumer<pull::OrderedConfig> = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: source.subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read {} from {}", source.subject, source.stream))?;
        let remaining = consumer
            .info()
            .await
            .map(|i| i.num_pending)
            .unwrap_or_default();
        if remaining == 0 {
            return Ok(DeadLetterReader {
                messages: None,
                remaining,
            });
        }
        let messages = consumer
            .messages()
            .await
            .context("cannot read dead letters")?;
        Ok(DeadLetterReader {
            messages: Some(messages),
            remaining,
        })
    }

    /// Dead letters left to read, as of the last one read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next dead letter, or `None` after the last one that was there
    /// when the reader was opened.
    pub async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("timed out reading the dead-letter stream")?;
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => anyhow::bail!("cannot read the dead-letter stream: {error}"),
            None => return Ok(None),
        };
        self.remaining = message.info().map(|i| i.pending).unwrap_or_default();
        DeadLetter::from_message(&message)
            .map(Some)
            .context("a dead letter without JetStream metadata")
    }
}

/// Every dead letter of one handler, oldest first.
pub async fn dead_letters(
    js: &Context,
    source: &DeadLetterSource,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut reader = DeadLetterReader::open(js, source).await?;
    let mut letters = Vec::new();
    while let Some(letter) = reader.next().await? {
        letters.push(letter);
    }
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read.
    pub seen: u64,
    /// Dead letters that matched the filter (all, without one).
    pub matched: u64,
    /// Republished, acknowledged by the stream, and deleted.
    pub replayed: u64,
    /// Republished and acknowledged, but the dead letter could not be deleted
    /// (it would be replayed again next time).
    pub not_deleted: u64,
    /// Not republished; left in the dead-letter stream. One line each.
    pub failures: Vec<String>,
}

/// Republishes dead letters to their original subjects, oldest first: each
/// (matching `filter`, at most `limit`) is published with its payload and
/// original headers (minus `Switchyard-*`, `Nats-Msg-Id` and
/// `Nats-Expected-*`), and deleted from the dead-letter stream only once the
/// stream that takes the replay has acknowledged it.
pub async fn replay_dead_letters(
    js: &Context,
    source: &DeadLetterSource,
    filter: Option<&str>,
    limit: Option<u64>,
    mut on_each: impl FnMut(&DeadLetter, Result<u64, &str>),
) -> anyhow::Result<ReplayReport> {
    let dead_stream = js
        .get_stream(&source.stream)
        .await
        .with_context(|| format!("cannot open dead-letter stream {}", source.stream))?;
    let mut reader = DeadLetterReader::open(js, source).await?;
    let mut report = ReplayReport::default();
    while limit.is_none_or(|limit| report.matched < limit) {
        let Some(letter) = reader.next().await? else {
            break;
        };
        report.seen += 1;
        if filter.is_some_and(|text| !letter.matches(text)) {
            continue;
        }
        report.matched += 1;
        match replay_one(js, &letter).await {
            Ok(sequence) => match dead_stream.delete_message(letter.sequence).await {
                Ok(_) => {
                    report.replayed += 1;
                    on_each(&letter, Ok(sequence));
                }
                Err(error) => {
                    report.not_deleted += 1;
                    let line = format!(
                        "dead letter {} replayed but not deleted: {error}",
                        letter.sequence
                    );
                    on_each(&letter, Err(&line));
                    report.failures.push(line);
                }
            },
            Err(error) => {
                let line = format!("dead letter {}: {error:#}", letter.sequence);
                on_each(&letter, Err(&line));
                report.failures.push(line);
            }
        }
    }
    Ok(report)
}

/// Publishes one dead letter back; returns the sequence the replay got.
async fn replay_one(js: &Context, letter: &DeadLetter) -> anyhow::Result<u64> {
    if letter.original_subject.is_empty() {
        anyhow::bail!(
            "no {} header: not a Switchyard dead letter",
            headers::ORIGINAL_SUBJECT
        );
    }
    let payload = match letter.payload_omitted {
        None => letter.payload.clone(),
        Some(_) => {
            let sequence = letter
                .original_sequence
                .context("payload omitted and no original sequence")?;
            let stream = js
                .get_stream(&letter.original_stream)
                .await
                .with_context(|| {
                    format!(
                        "payload omitted; cannot open stream {}",
                        letter.original_stream
                    )
                })?;
            let original = stream.get_raw_message(sequence).await.with_context(|| {
                format!(
                    "payload omitted and {} sequence {sequence} is gone",
                    letter.original_stream
                )
            })?;
            original.payload
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &letter.original_headers {
        if !is_publish_directive(name) {
            headers.append(name.as_str(), value.as_str());
        }
    }
    let ack = js
        .publish_with_headers(letter.original_subject.clone(), headers, payload)
        .await
        .with_context(|| format!("cannot publish to {}", letter.original_subject))?
        .await
        .with_context(|| {
            format!(
                "no stream acknowledged the publish to {}",
                letter.original_subject
            )
        })?;
    if ack.duplicate {
        anyhow::bail!(
            "the stream {} dropped the replay as a duplicate",
            ack.stream
        );
    }
    Ok(ack.sequence)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking
mod tests {
    use super::*;

    fn pointers(texts: &[&str]) -> OrderKey {
        OrderKey::Pointers(texts.iter().map(|t| Pointer::parse(t).unwrap()).collect())
    }

    #[test]
    fn pointer_parsing_unescapes_and_refuses_bad_text() {
        let pointer = Pointer::parse("/a~1b/c~0d/0").unwrap();
        assert_eq!(pointer.tokens, ["a/b", "c~d", "0"]);
        assert!(Pointer::parse("story_id").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn first_matching_pointer_gives_the_key() {
        let key = pointers(&["/payload/story_id", "/story_id"]);
        assert_eq!(
            key.extract("s", br#"{"story_id": "S1"}"#).as_deref(),
            Some("S1")
        );
        assert_eq!(
            key.extract(
                "s",
                br#"{"story_id": "OUT", "payload": {"story_id": "IN"}}"#
            )
            .as_deref(),
            Some("IN")
        );
        assert_eq!(
            key.extract("s", br#"{"payload": {"story_id": 42}}"#)
                .as_deref(),
            Some("42")
        );
        // null, objects and arrays are no key; the next pointer is tried.
        assert_eq!(
            key.extract("s", br#"{"payload": {"story_id": null}, "story_id": "S2"}"#)
                .as_deref(),
            Some("S2")
        );
        assert_eq!(key.extract("s", br#"{"story_id": {"x": 1}}"#), None);
        assert_eq!(
            pointers(&["/items/1"])
                .extract("s", br#"{"items": ["a", "b"]}"#)
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn bad_payloads_have_no_key() {
        let key = pointers(&["/story_id"]);
        assert_eq!(key.extract("s", b"{not json"), None);
        assert_eq!(key.extract("s", b"\xff\xfe"), None);
        assert_eq!(key.extract("s", br#"{"story_id": "S1"} trailing"#), None);
        assert_eq!(key.extract("s", b"[1, 2]"), None);
        assert_eq!(key.extract("s", b""), None);
    }

    #[test]
    fn deep_nesting_outside_the_path_is_skipped_without_recursion() {
        let key = pointers(&["/story_id"]);
        let deep = format!(
            r#"{{"extra": {}{}, "story_id": "S1"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(key.extract("s", deep.as_bytes()).as_deref(), Some("S1"));
        let top = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(key.extract("s", top.as_bytes()), None);
    }

    #[test]
    fn subject_token_gives_the_key() {
        let key = OrderKey::SubjectToken(2);
        assert_eq!(
            key.extract("planning.story.S1.transitioned", b"")
                .as_deref(),
            Some("S1")
        );
        assert_eq!(key.extract("planning.story", b""), None);
    }

    #[test]
    fn switchyard_headers_are_recognised_in_any_case() {
        assert!(is_switchyard_header("Switchyard-Reason"));
        assert!(is_switchyard_header("switchyard-reason"));
        assert!(!is_switchyard_header("Content-Type"));
        assert!(is_publish_directive("Nats-Msg-Id"));
        assert!(is_publish_directive("Nats-Expected-Last-Sequence"));
        assert!(!is_publish_directive("Trace-Id"));
    }

    #[test]
    fn headers_wire_length_counts_every_value() {
        let mut headers = HeaderMap::new();
        headers.insert("A", "1");
        headers.append("A", "22");
        // "NATS/1.0\r\n" + "A: 1\r\n" + "A: 22\r\n" + "\r\n"
        assert_eq!(headers_wire_len(&headers), 10 + 6 + 7 + 2);
    }
}
