//! The handler's configuration (`[handlers.config]`), typed, with defaults.

use std::fmt::Display;
use std::str::FromStr;

use crate::config;
use crate::host::Host;
use crate::logging::quote;

/// The value of `key`, if the handler's configuration has one.
pub fn get(key: &str) -> Option<String> {
    config::get(key)
}

/// The value of `key`, or `default`.
pub fn get_or(key: &str, default: &str) -> String {
    config::get(key).unwrap_or_else(|| default.to_string())
}

/// `key` parsed as `T`, or `default` when it is not set; a value that does
/// not parse is an error naming the key, to reject or log with.
pub fn parse_or<T: FromStr>(key: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match config::get(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|e| format!("config key `{key}` = {text:?}: {e}")),
    }
}

/// `key` read through `host` and parsed as `T` (surrounding whitespace
/// ignored), or `default` when it is not set or does not parse. For a
/// setting that shapes how an event is handled but never whether: a value
/// that does not parse is logged at error, as `invalid <what> setting,
/// using the default` with the key, the value and the default, and the
/// event goes on.
pub fn parse_or_log<T: FromStr + Display>(
    host: &mut impl Host,
    key: &str,
    default: T,
    what: &str,
) -> T {
    let Some(text) = host.config(key) else {
        return default;
    };
    text.trim().parse().unwrap_or_else(|_| {
        let fields = [
            ("key", key.to_owned()),
            ("value", quote(&text)),
            ("default", default.to_string()),
        ];
        host.error(
            &format!("invalid {what} setting, using the default"),
            &fields,
        );
        default
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::Scripted;

    fn configured(key: &str, value: &str) -> Scripted {
        Scripted {
            config: vec![(key.to_owned(), value.to_owned())],
            ..Scripted::default()
        }
    }

    #[test]
    fn parses_a_set_value_and_defaults_an_unset_one() {
        let mut host = configured("retry_base_ms", " 100 ");
        assert_eq!(
            parse_or_log(&mut host, "retry_base_ms", 500u64, "retry"),
            100
        );
        assert_eq!(parse_or_log(&mut host, "retry_max_ms", 9u64, "retry"), 9);
        assert!(host.logs.is_empty());
    }

    #[test]
    fn logs_a_value_that_does_not_parse_and_uses_the_default() {
        let mut host = configured("retry_base_ms", "soon");
        assert_eq!(
            parse_or_log(&mut host, "retry_base_ms", 500u64, "retry"),
            500
        );
        let message = "invalid retry setting, using the default";
        assert_eq!(
            host.log_field(message, "key").as_deref(),
            Some("retry_base_ms")
        );
        assert_eq!(
            host.log_field(message, "value").as_deref(),
            Some("\"soon\"")
        );
        assert_eq!(host.log_field(message, "default").as_deref(), Some("500"));
    }
}
