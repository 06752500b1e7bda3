//! Host status on the control plane: every host answers
//! `<nats.control_subject>.status` with its [`HostStatus`], and
//! `switchyard status` gathers the replies ([`gather_status`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::handler::history::ReloadState;
use crate::handler::shadow::ShadowReport;
use crate::lock;
use crate::process::{hostname, now_ms};

/// What `status` shows for one handler.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerStatus {
    pub handler: String,
    /// The control-plane object whose pushed versions it follows; none for
    /// a plugin file.
    pub plugin_object: Option<String>,
    pub digest: String,
    pub handled: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub keys_deleted: u64,
    pub reload: ReloadState,
    pub shadow: Option<ShadowReport>,
    /// For an exclusive handler, whether this host runs it (`active`) or
    /// waits to take over (`standby`); for a partitioned one, which
    /// partitions it runs (`partitions 0,3 of 8`).
    pub lease: Option<String>,
}

/// A snapshot of every handler.
pub fn status(handlers: &[Arc<Handler>]) -> Vec<HandlerStatus> {
    handlers
        .iter()
        .map(|handler| HandlerStatus {
            handler: handler.name().to_string(),
            plugin_object: handler.config.plugin_object.clone(),
            digest: handler.plugin.load().digest().to_string(),
            handled: handler.stats.handled.load(Relaxed),
            acked: handler.stats.acked.load(Relaxed),
            retried: handler.stats.retried.load(Relaxed),
            dead_lettered: handler.stats.dead_lettered.load(Relaxed),
            keys_deleted: handler.stats.keys_deleted.load(Relaxed),
            reload: lock(&handler.reload).clone(),
            shadow: handler.shadow.load_full().map(|s| lock(&s.report).clone()),
            lease: lease_text(handler),
        })
        .collect()
}

fn lease_text(handler: &Handler) -> Option<String> {
    if let Some((count, held)) = handler.partitions_held() {
        let held: Vec<String> = held.iter().map(ToString::to_string).collect();
        let held = if held.is_empty() {
            "none".to_string()
        } else {
            held.join(",")
        };
        return Some(format!("partitions {held} of {count}"));
    }
    handler
        .lease_held()
        .map(|held| if held { "active" } else { "standby" }.to_string())
}

/// What one running host reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub pid: u32,
    pub started_at_ms: u64,
    pub handlers: Vec<HandlerStatusWire>,
}

/// [`HandlerStatus`] as it travels (owned, deserializable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlerStatusWire {
    pub handler: String,
    /// The pushed object it follows; none for a plugin file (and from hosts
    /// older than this field).
    #[serde(default)]
    pub plugin_object: Option<String>,
    pub digest: String,
    /// The pushed version live now (`#3 (label)`); none for a plugin file.
    #[serde(default)]
    pub version: Option<String>,
    pub handled: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub keys_deleted: u64,
    pub last_reload: Option<serde_json::Value>,
    pub versions_live: usize,
    /// The longest time a swap held the live pointer, in seconds.
    #[serde(default)]
    pub longest_swap_seconds: f64,
    pub shadow: Option<ShadowReport>,
    /// For an exclusive handler: `active` or `standby`; for a partitioned
    /// one: `partitions 0,3 of 8`.
    #[serde(default)]
    pub lease: Option<String>,
}

impl From<&HandlerStatus> for HandlerStatusWire {
    fn from(status: &HandlerStatus) -> Self {
        HandlerStatusWire {
            handler: status.handler.clone(),
            plugin_object: status.plugin_object.clone(),
            digest: status.digest.clone(),
            version: status.reload.version.clone(),
            handled: status.handled,
            acked: status.acked,
            retried: status.retried,
            dead_lettered: status.dead_lettered,
            keys_deleted: status.keys_deleted,
            last_reload: status
                .reload
                .last
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
            versions_live: status.reload.history.len(),
            longest_swap_seconds: status.reload.longest_swap_ns as f64 / 1e9,
            shadow: status.shadow.clone(),
            lease: status.lease.clone(),
        }
    }
}

/// Answers `<control_subject>.status` requests with this host's status.
pub async fn answer_status(
    client: async_nats::Client,
    control_subject: String,
    handlers: Vec<Arc<Handler>>,
    shutdown: CancellationToken,
) {
    let subject = format!("{control_subject}.status");
    let mut requests = match client.subscribe(subject.clone()).await {
        Ok(requests) => requests,
        Err(error) => {
            tracing::warn!(%subject, %error, "cannot answer status requests");
            return;
        }
    };
    let started_at_ms = now_ms();
    loop {
        let request = tokio::select! {
            request = requests.next() => request,
            () = shutdown.cancelled() => return,
        };
        let Some(request) = request else { return };
        let Some(reply) = request.reply else { continue };
        let status = HostStatus {
            host: hostname(),
            pid: std::process::id(),
            started_at_ms,
            handlers: status(&handlers).iter().map(Into::into).collect(),
        };
        if let Ok(body) = serde_json::to_vec(&status)
            && let Err(error) = client.publish(reply, body.into()).await
        {
            tracing::warn!(%error, "cannot send status reply");
        }
    }
}

/// Asks every host on `subject` for its status; collects replies for `wait`.
pub async fn gather_status(
    client: &async_nats::Client,
    subject: &str,
    wait: Duration,
) -> anyhow::Result<Vec<HostStatus>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await?;
    client.flush().await?;
    let mut hosts = Vec::new();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            message = replies.next() => match message {
                // With no host listening, the server answers "no responders":
                // an empty message, not a reply.
                Some(message) if message.payload.is_empty() => continue,
                Some(message) => match serde_json::from_slice::<HostStatus>(&message.payload) {
                    Ok(status) => hosts.push(status),
                    Err(error) => tracing::warn!(%error, "unreadable status reply"),
                },
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    hosts.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    Ok(hosts)
}
