//! Replaying dead letters: each is republished to its original subject and
//! deleted from the dead-letter stream only once the stream that takes the
//! replay has acknowledged it.

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;

use super::read::{DeadLetter, DeadLetterReader};
use super::{DeadLetterSource, headers, is_publish_directive};

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
