//! Writing a dead letter: the original message with its headers, plus
//! `Switchyard-*` headers saying why, from where, and when.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Context};

use super::{DeadLetterSource, headers};
use crate::config::NatsConfig;
use crate::delivery::hold::Held;
use crate::handler::Handler;
use crate::process::millis_since_epoch;

/// Longest reason put in a header; NATS headers are one line each.
const MAX_REASON_BYTES: usize = 1024;

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
/// from, then terms it. If the publish is not acknowledged, the event is
/// kept: returns the delay after which to try again (the caller naks it or
/// retries in place).
pub async fn dead_letter(
    js: &Context,
    handler: &Handler,
    nats: &NatsConfig,
    held: &Held,
    attempt: u32,
    digest: &str,
    reason: &str,
) -> Option<Duration> {
    let message = &held.message;
    let mut headers = message.headers.clone().unwrap_or_default();
    let reason = one_line(reason);
    headers.insert(headers::REASON, reason.as_str());
    headers.insert(headers::HANDLER, handler.name());
    headers.insert(headers::PLUGIN_DIGEST, digest);
    headers.insert(headers::DELIVERY_COUNT, attempt.to_string().as_str());
    headers.insert(headers::ORIGINAL_SUBJECT, message.subject.as_str());
    headers.insert(headers::ORIGINAL_STREAM, nats.stream.as_str());
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
    let subject = DeadLetterSource::new(
        &nats.dead_letter_stream,
        &nats.dead_letter_subject,
        handler.name(),
    )
    .subject;
    let published = async {
        js.publish_with_headers(subject.clone(), headers, payload)
            .await?
            .await
    };
    match published.await {
        Ok(_) => {
            held.keepalive.stop();
            handler.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            handler.metrics().dead_lettered(handler.name());
            tracing::warn!(%reason, dead_letter_subject = %subject, "event dead-lettered");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%error, "term failed after dead-lettering; a redelivery will be dead-lettered again");
            }
            None
        }
        Err(error) => {
            let delay = handler.config.retry.delay(attempt);
            tracing::error!(%error, %reason, retry_in = ?delay, "cannot publish dead letter; keeping the event");
            Some(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_wire_length_counts_every_value() {
        let mut headers = HeaderMap::new();
        headers.insert("A", "1");
        headers.append("A", "22");
        // "NATS/1.0\r\n" + "A: 1\r\n" + "A: 22\r\n" + "\r\n"
        assert_eq!(headers_wire_len(&headers), 10 + 6 + 7 + 2);
    }
}
