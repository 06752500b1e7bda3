//! Service configuration: a TOML file, then `SWITCHYARD_...` overrides.
//!
//! Everything is resolved and checked before anything connects: an unknown
//! key, a wrong type or an out-of-range value refuses start-up with a
//! message naming the key (and the variable, for overrides).
//!
//! Overrides: a variable `SWITCHYARD_<SECTION>__<KEY>` sets `<section>.<key>`
//! (lower-cased; `__` separates levels, a number indexes an array), e.g.
//! `SWITCHYARD_NATS__URL`, `SWITCHYARD_GRAPH__PASSWORD`,
//! `SWITCHYARD_HANDLERS__0__CONCURRENCY`. The value is read as TOML when it
//! parses as a number, boolean or array, and as a string otherwise.
//! `SWITCHYARD_UNSET=graph.password,handlers.0.fixtures` removes keys the
//! file sets (after the overrides), so their defaults apply.
//!
//! - [`sections`] and [`handler`]: what the file holds.
//! - [`overrides`]: environment variables applied to the document.
//! - [`validate`]: checks across keys, each error naming the key.
//! - [`error`] holds [`ConfigError`].
//!
//! Configuration is data: it imports the bounds, grants and pointers it
//! checks, and nothing that runs.

pub mod error;
pub mod handler;
pub mod overrides;
pub mod sections;
pub mod validate;

use std::path::Path;

pub use self::error::ConfigError;
pub use self::handler::{HandlerConfig, RetryConfig};
pub use self::sections::{
    CacheConfig, Config, GraphConfig, HttpConfig, NatsConfig, RuntimeSection,
};
pub use self::validate::{covers, subject_matches};

use self::error::invalid;
use self::overrides::apply_override;

impl Config {
    /// Reads `path`, applies `SWITCHYARD_...` overrides from the process
    /// environment, and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string(), std::env::vars())?;
        // Plugin paths are relative to the config file, not to where the
        // service happens to be started.
        let base = path.parent().unwrap_or(Path::new("."));
        for handler in &mut config.handlers {
            if let Some(plugin) = &mut handler.plugin
                && plugin.is_relative()
            {
                *plugin = base.join(&*plugin);
            }
            if let Some(fixtures) = &mut handler.fixtures
                && fixtures.is_relative()
            {
                *fixtures = base.join(&*fixtures);
            }
        }
        for file in [
            &mut config.cache.password_file,
            &mut config.cache.ca_file,
            &mut config.cache.cert_file,
            &mut config.cache.key_file,
            &mut config.graph.password_file,
            &mut config.graph.ca_file,
            &mut config.nats.ca_file,
            &mut config.nats.cert_file,
            &mut config.nats.key_file,
            &mut config.nats.password_file,
            &mut config.nats.token_file,
            &mut config.nats.nkey_seed_file,
            &mut config.nats.creds_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if let Some(seed) = &mut config.cache.seed
            && seed.is_relative()
        {
            *seed = base.join(&*seed);
        }
        Ok(config)
    }

    /// Parses `text` (named `origin` in errors) with overrides from `env`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let document = Self::document(text, origin, env)?;
        Self::from_document(document, origin)
    }

    /// The TOML document of `text` with the overrides and unsets of `env`
    /// applied: what [`parse`](Self::parse) reads, before defaults.
    pub fn document(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<toml::Table, ConfigError> {
        let mut document: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string() + &location(text, e.span()),
        })?;
        let mut overrides: Vec<(String, String)> = Vec::new();
        let mut unset = None;
        for (name, value) in env {
            if name == overrides::UNSET {
                unset = Some(value);
            } else if name.starts_with("SWITCHYARD_") && name.contains("__") {
                overrides.push((name, value));
            }
        }
        overrides.sort();
        for (variable, value) in overrides {
            apply_override(&mut document, &variable, &value)?;
        }
        if let Some(keys) = unset {
            overrides::unset(&mut document, &keys)?;
        }
        Ok(document)
    }

    /// Reads and checks a document from [`document`](Self::document).
    pub fn from_document(document: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(document))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().message().to_string();
                if key == "." {
                    ConfigError::Parse {
                        path: origin.to_string(),
                        message,
                    }
                } else {
                    invalid(key, message)
                }
            })?;
        validate::validate(&config)?;
        Ok(config)
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
