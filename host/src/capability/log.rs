//! `log`: guest log records into the host's `tracing`, tagged with the
//! handler, subject and stream sequence of the event being handled.

use crate::bindings::log::{Host, Level};
use crate::capability::HostState;

/// Longest guest message kept; the rest is cut so a guest cannot flood logs.
const MAX_MESSAGE_BYTES: usize = 4096;

fn truncate(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Host for HostState {
    async fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.charge_call()?;
        // In isolation, what the guest reports is already in the outcomes.
        let level = match level {
            Level::Info | Level::Warn | Level::Error if self.env.isolated => Level::Debug,
            level => level,
        };
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "switchyard::plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "switchyard::plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "switchyard::plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "switchyard::plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "switchyard::plugin", tracing::Level::ERROR),
        };
        // A record no subscriber wants costs its call and nothing more.
        if !enabled {
            return Ok(());
        }
        let message = truncate(message);
        let fields = truncate(
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let handler = self.env.name.as_str();
        let subject = self.subject.as_str();
        let sequence = self.sequence;
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "switchyard::plugin",
                    $level,
                    handler,
                    subject,
                    sequence,
                    fields = %fields,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}
