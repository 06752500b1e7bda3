//! The control plane, on NATS itself: plugin versions for a whole fleet,
//! and status from every running host.
//!
//! - Components live in an Object Store bucket (`nats.plugin_bucket`), one
//!   immutable object per version, named `<handler>/<digest hex>`, with its
//!   fixtures (if pushed) beside it as `<handler>/<digest hex>.fixtures`.
//! - Which version is live is a Key-Value entry (`nats.plugin_kv`, key
//!   `<handler>`, a JSON [`Version`]). Hosts watch the key; a push or a
//!   rollback is one put, and the key's history is the version history.
//!   A candidate pushed with `--shadow` sits under `<handler>.shadow` until
//!   promoted.
//! - `<nats.control_subject>.status` is a request every host answers with
//!   its status: see [`super::status`].

use anyhow::{Context as _, bail};
use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::object_store::{self, ObjectStore};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::config::NatsConfig;
use crate::isolation::Fixture;
use crate::process::now_ms;
use crate::runtime::Digest;

/// Versions of one handler kept in the live pointer's history.
const KV_HISTORY: i64 = 64;

/// One version of a handler's plugin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub digest: String,
    pub size: u64,
    pub pushed_at_ms: u64,
    pub fixtures: bool,
    /// Who pushed it (`user@host`), for the history.
    pub pushed_by: String,
    /// The handler's push count when it was pushed: 1 for the first
    /// version, then one more per push. A rollback or promotion keeps the
    /// number of the version it makes live.
    #[serde(default)]
    pub number: u64,
    /// Free text given at push (`--label`), such as a release or commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Version {
    /// `#3`, or `#3 (1.4.2)` with a label: how status and history name it.
    pub fn name(&self) -> String {
        match &self.label {
            Some(label) => format!("#{} ({label})", self.number),
            None => format!("#{}", self.number),
        }
    }
}

fn object_name(handler: &str, digest: &str) -> String {
    format!("{handler}/{}", digest.trim_start_matches("sha256:"))
}

fn shadow_key(handler: &str) -> String {
    format!("{handler}.shadow")
}

/// Handles on the plugin buckets.
#[derive(Clone)]
pub struct ControlPlane {
    objects: ObjectStore,
    live: kv::Store,
}

impl ControlPlane {
    /// Opens the buckets named in `config`, creating them (with
    /// `replicas` copies) when missing.
    pub async fn open(js: &Context, config: &NatsConfig) -> anyhow::Result<Self> {
        let objects = match js.get_object_store(&config.plugin_bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: config.plugin_bucket.clone(),
                    description: Some(
                        "Switchyard plugin components, one object per version".into(),
                    ),
                    num_replicas: config.replicas as usize,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create object store {}", config.plugin_bucket))?,
        };
        let live = match js.get_key_value(&config.plugin_kv).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: config.plugin_kv.clone(),
                    description: "Switchyard: the live plugin version of each handler".into(),
                    history: KV_HISTORY,
                    num_replicas: config.replicas as usize,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create key-value bucket {}", config.plugin_kv))?,
        };
        Ok(ControlPlane { objects, live })
    }

    /// Stores `bytes` (and `fixtures`) and makes it the live version of
    /// `handler`, or its shadow candidate.
    pub async fn push(
        &self,
        handler: &str,
        bytes: &[u8],
        fixtures: Option<&[u8]>,
        shadow: bool,
    ) -> anyhow::Result<Version> {
        self.push_labelled(handler, bytes, fixtures, shadow, None)
            .await
    }

    /// [`ControlPlane::push`] with a label shown beside the version number.
    pub async fn push_labelled(
        &self,
        handler: &str,
        bytes: &[u8],
        fixtures: Option<&[u8]>,
        shadow: bool,
        label: Option<&str>,
    ) -> anyhow::Result<Version> {
        let pushed_before = self
            .history(handler)
            .await?
            .into_iter()
            .chain(self.shadow(handler).await?)
            .map(|v| v.number)
            .max()
            .unwrap_or(0);
        let digest = Digest::of(bytes);
        let name = object_name(handler, digest.as_str());
        self.objects
            .put(name.as_str(), &mut &bytes[..])
            .await
            .with_context(|| format!("cannot store {name}"))?;
        if let Some(fixtures) = fixtures {
            let fixtures_name = format!("{name}.fixtures");
            self.objects
                .put(fixtures_name.as_str(), &mut &fixtures[..])
                .await
                .with_context(|| format!("cannot store {fixtures_name}"))?;
        }
        let version = Version {
            digest: digest.to_string(),
            size: bytes.len() as u64,
            pushed_at_ms: now_ms(),
            fixtures: fixtures.is_some(),
            pushed_by: crate::process::user_at_host(),
            number: pushed_before + 1,
            label: label.map(str::to_string),
        };
        let key = if shadow {
            shadow_key(handler)
        } else {
            handler.to_string()
        };
        self.put(&key, &version).await?;
        Ok(version)
    }

    async fn put(&self, key: &str, version: &Version) -> anyhow::Result<()> {
        let value = serde_json::to_vec(version)?;
        self.live
            .put(key, value.into())
            .await
            .with_context(|| format!("cannot update live version of {key}"))?;
        Ok(())
    }

    /// Every name with a live version, sorted (shadow candidates are
    /// under their handler's name, not listed apart).
    pub async fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut keys = self
            .live
            .keys()
            .await
            .context("cannot list the live versions")?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("cannot list the live versions")?;
            if !key.ends_with(".shadow") {
                names.push(key);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The live version of `handler`, if one was pushed.
    pub async fn live(&self, handler: &str) -> anyhow::Result<Option<Version>> {
        self.entry(handler).await
    }

    /// The shadow candidate of `handler`, if any.
    pub async fn shadow(&self, handler: &str) -> anyhow::Result<Option<Version>> {
        self.entry(&shadow_key(handler)).await
    }

    async fn entry(&self, key: &str) -> anyhow::Result<Option<Version>> {
        match self
            .live
            .entry(key)
            .await
            .with_context(|| format!("cannot read {key}"))?
        {
            Some(entry) if entry.operation == Operation::Put => {
                Ok(Some(serde_json::from_slice(&entry.value)?))
            }
            _ => Ok(None),
        }
    }

    /// Every version that was live for `handler`, oldest first.
    pub async fn history(&self, handler: &str) -> anyhow::Result<Vec<Version>> {
        let mut entries = self
            .live
            .history(handler)
            .await
            .with_context(|| format!("cannot read the history of {handler}"))?;
        let mut versions = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.operation == Operation::Put {
                versions.push(serde_json::from_slice(&entry.value)?);
            }
        }
        Ok(versions)
    }

    /// Makes an earlier version live again: `to`, or the one before the
    /// current version.
    pub async fn rollback(&self, handler: &str, to: Option<&str>) -> anyhow::Result<Version> {
        let history = self.history(handler).await?;
        let Some(current) = history.last() else {
            bail!("handler {handler} has no pushed version");
        };
        let target = match to {
            Some(wanted) => history
                .iter()
                .rev()
                .find(|v| match wanted.strip_prefix('#') {
                    Some(number) => number.parse() == Ok(v.number),
                    None => {
                        v.digest == wanted
                            || v.digest.trim_start_matches("sha256:").starts_with(wanted)
                    }
                })
                .with_context(|| format!("{wanted} is not in the history of {handler}"))?,
            None => history
                .iter()
                .rev()
                .find(|v| v.digest != current.digest)
                .with_context(|| format!("{handler} has no earlier version to roll back to"))?,
        };
        let mut version = target.clone();
        version.pushed_at_ms = now_ms();
        version.pushed_by = format!("rollback by {}", crate::process::user_at_host());
        self.put(handler, &version).await?;
        Ok(version)
    }

    /// Makes the shadow candidate live and clears it.
    pub async fn promote(&self, handler: &str) -> anyhow::Result<Version> {
        let Some(mut version) = self.shadow(handler).await? else {
            bail!("handler {handler} has no shadow candidate; push one with --shadow");
        };
        version.pushed_at_ms = now_ms();
        self.put(handler, &version).await?;
        self.live
            .delete(shadow_key(handler))
            .await
            .with_context(|| format!("cannot clear the shadow of {handler}"))?;
        Ok(version)
    }

    /// The component bytes and fixtures of `version`.
    pub async fn fetch(
        &self,
        handler: &str,
        version: &Version,
    ) -> anyhow::Result<(Vec<u8>, Vec<Fixture>)> {
        let name = object_name(handler, &version.digest);
        let bytes = self.read(&name).await?;
        let actual = Digest::of(&bytes);
        if actual.as_str() != version.digest {
            bail!("object {name} holds {actual}, not {}", version.digest);
        }
        let fixtures = if version.fixtures {
            let text = String::from_utf8(self.read(&format!("{name}.fixtures")).await?)
                .context("fixtures are not UTF-8")?;
            Fixture::parse_lines(&text).map_err(|e| anyhow::anyhow!("fixtures of {name}: {e}"))?
        } else {
            Vec::new()
        };
        Ok((bytes, fixtures))
    }

    async fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let mut object = self
            .objects
            .get(name)
            .await
            .with_context(|| format!("cannot fetch {name}"))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read {name}"))?;
        Ok(bytes)
    }

    /// Watches the live pointer of `key`, current value first.
    pub async fn watch(&self, key: &str) -> anyhow::Result<kv::Watch> {
        self.live
            .watch_with_history(key)
            .await
            .with_context(|| format!("cannot watch {key}"))
    }

    pub fn shadow_key(handler: &str) -> String {
        shadow_key(handler)
    }
}
