//! Reading dead letters: a handler's dead letters, oldest first, through
//! an ephemeral ordered consumer, so reading consumes nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{Context, Message};
use futures::StreamExt;

use super::{DeadLetterSource, headers, is_switchyard_header};

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
    pub fn from_message(message: &Message) -> Option<Self> {
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
