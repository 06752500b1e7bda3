//! The story-transitions handler compiled into the host, for the `native`
//! benchmark variant (`switchyard-native serve`).
//!
//! [`StoryTransitionsNative`] runs the plugin crate's own `handle` (the
//! same code the component runs) against the host's capabilities: every
//! call goes through [`HostState`]'s import implementations, so grants,
//! limits, effect counting, the shared sweeper and the graph batcher are
//! exactly those the component reaches. What is left out is the sandbox:
//! instantiation, the component ABI and the fibre the guest runs on.
//!
//! The plugin's logic is synchronous, as a guest's is. Here each event
//! runs on tokio's blocking pool (`spawn_blocking`) and each host call
//! blocks that thread on the capability's future (`Handle::block_on`),
//! where the component's fibre suspends on the executor instead. That
//! costs a thread hand-over per event the component does not pay, and
//! caps the events running at once at the pool's 512 threads; the
//! benchmark's README states it next to the figures.

use std::sync::Arc;

use story_transitions::Host;
use switchyard::bindings::cache::Host as _;
use switchyard::bindings::config::Host as _;
use switchyard::bindings::event::Event as HostEvent;
use switchyard::bindings::graph::Host as _;
use switchyard::bindings::graph::Value as HostValue;
use switchyard::bindings::log::Host as _;
use switchyard::bindings::log::Level as HostLevel;
use switchyard::bindings::outcome::Outcome as HostOutcome;
use switchyard::bindings::types::Error as HostError;
use switchyard::capability::HostState;
use switchyard::runtime::{NativeHandler, NativeRun, Natives};
use switchyard_plugin::cache::ScanPage;
use switchyard_plugin::event::Event;
use switchyard_plugin::graph::Value;
use switchyard_plugin::log::Level;
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::types::Error;
use tokio::runtime::Handle;

/// The name a plugin file gives as `native:story-transitions`.
pub const NAME: &str = "story-transitions";

/// The story-transitions handler, compiled in.
pub struct StoryTransitionsNative;

/// The natives a benchmark build registers.
pub fn natives() -> Natives {
    let mut natives = Natives::new();
    natives.insert(
        NAME.to_owned(),
        Arc::new(StoryTransitionsNative) as Arc<dyn NativeHandler>,
    );
    natives
}

impl NativeHandler for StoryTransitionsNative {
    fn handle(&self, mut host: HostState, event: HostEvent) -> NativeRun {
        Box::pin(async move {
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || {
                let event = guest_event(&event);
                let mut blocking = Blocking {
                    host: &mut host,
                    handle,
                };
                let outcome = host_outcome(story_transitions::handle(&mut blocking, &event));
                (outcome, host)
            })
            .await
            .map_err(|e| format!("native handler failed: {e}"))
        })
    }
}

/// The plugin's [`Host`] over the host's capabilities, one blocking call at
/// a time.
struct Blocking<'a> {
    host: &'a mut HostState,
    handle: Handle,
}

/// A capability call's result as the plugin sees it; a host-enforced limit
/// (a trap for a component) reaches the logic as `other`.
fn finish<T>(result: wasmtime::Result<Result<T, HostError>>) -> Result<T, Error> {
    match result {
        Ok(result) => result.map_err(guest_error),
        Err(trap) => Err(Error::Other(format!("{trap:#}"))),
    }
}

impl Host for Blocking<'_> {
    fn config(&mut self, key: &str) -> Option<String> {
        self.handle
            .block_on(self.host.get(key.to_owned()))
            .ok()
            .flatten()
    }

    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        let page = finish(
            self.handle
                .block_on(self.host.scan(pattern.to_owned(), cursor, count)),
        )?;
        Ok(ScanPage {
            cursor: page.cursor,
            keys: page.keys,
        })
    }

    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        finish(self.handle.block_on(self.host.delete(keys.to_vec())))
    }

    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        finish(
            self.handle
                .block_on(self.host.delete_matching(patterns.to_vec())),
        )
    }

    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        let properties = properties
            .iter()
            .map(|(k, v)| (k.clone(), host_value(v)))
            .collect();
        finish(
            self.handle.block_on(self.host.upsert_entity(
                label.to_owned(),
                id.to_owned(),
                properties,
            )),
        )
    }

    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        // A log call fails only past the host-call budget, which the next
        // effect call reports.
        let _ = self.handle.block_on(self.host.log(
            host_level(level),
            message.to_owned(),
            fields.to_vec(),
        ));
    }
}

fn guest_event(event: &HostEvent) -> Event {
    Event {
        subject: event.subject.clone(),
        payload: event.payload.clone(),
        headers: event.headers.clone(),
        stream_sequence: event.stream_sequence,
        delivery_attempt: event.delivery_attempt,
        published_at_ms: event.published_at_ms,
    }
}

fn host_outcome(outcome: Outcome) -> HostOutcome {
    match outcome {
        Outcome::Ack => HostOutcome::Ack,
        Outcome::Retry(delay) => HostOutcome::Retry(delay),
        Outcome::Reject(reason) => HostOutcome::Reject(reason),
    }
}

fn host_level(level: Level) -> HostLevel {
    match level {
        Level::Trace => HostLevel::Trace,
        Level::Debug => HostLevel::Debug,
        Level::Info => HostLevel::Info,
        Level::Warn => HostLevel::Warn,
        Level::Error => HostLevel::Error,
    }
}

pub(crate) fn host_value(value: &Value) -> HostValue {
    match value {
        Value::Null => HostValue::Null,
        Value::Boolean(b) => HostValue::Boolean(*b),
        Value::Integer(i) => HostValue::Integer(*i),
        Value::Float(f) => HostValue::Float(*f),
        Value::Text(s) => HostValue::Text(s.clone()),
        Value::TextList(items) => HostValue::TextList(items.clone()),
    }
}

fn guest_error(error: HostError) -> Error {
    match error {
        HostError::Unavailable(m) => Error::Unavailable(m),
        HostError::Denied(m) => Error::Denied(m),
        HostError::Invalid(m) => Error::Invalid(m),
        HostError::Other(m) => Error::Other(m),
    }
}
