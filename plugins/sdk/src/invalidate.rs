//! Cache invalidation the way every such handler needs it: these exact
//! keys, and every key under these prefixes.
//!
//! Ids are escaped ([`crate::glob`]), so data never widens what is
//! deleted. Two methods, the same keys deleted by either:
//!
//! - [`Method::DeleteMatching`] (the default): one `delete-matching` call,
//!   which the host serves with one sweep shared with concurrent events,
//!   every matching key that exists for the whole call deleted, none other
//!   touched ([`keys_and_prefixes`], or [`matching`] through a [`Host`]);
//! - [`Method::Scan`]: the exact keys deleted by name, then a `scan` of
//!   each prefix followed to the end, each page's keys deleted
//!   ([`scanning`]). One scan per event: the design before
//!   `delete-matching`, kept for hosts and comparisons that want it.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::failure::{Failure, Named};
use crate::glob;
use crate::host::{Host, Imports};
use crate::logging::quote;
use crate::types::Error;

/// Keys asked for per `scan` call.
pub const SCAN_COUNT: u32 = 500;
/// Pages after which a scan that has not finished is abandoned (an `other`
/// failure, so the event is retried): a guard against a cursor that never
/// returns to 0.
pub const MAX_SCAN_PAGES: u32 = 100_000;

/// How the keys are found. Configured as `delete-matching` or `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// One `delete-matching` call; the host shares one sweep between events.
    #[default]
    DeleteMatching,
    /// A `scan` per prefix per event, and `delete`s.
    Scan,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "delete-matching" => Ok(Method::DeleteMatching),
            "scan" => Ok(Method::Scan),
            _ => Err(r#"expected "delete-matching" or "scan""#.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::DeleteMatching => "delete-matching",
            Method::Scan => "scan",
        })
    }
}

/// Deletes every key in `exact` and every key that starts with one of
/// `prefixes` (both taken literally), in one `delete-matching` call.
/// Returns how many keys were deleted.
pub fn keys_and_prefixes<K: AsRef<str>, P: AsRef<str>>(
    exact: &[K],
    prefixes: &[P],
) -> Result<u64, Error> {
    matching(&mut Imports, exact, prefixes).map_err(|failure| failure.error)
}

/// The patterns that select exactly `exact` and the keys under `prefixes`.
pub fn patterns<K: AsRef<str>, P: AsRef<str>>(exact: &[K], prefixes: &[P]) -> Vec<String> {
    exact
        .iter()
        .map(|key| glob::escape(key.as_ref()))
        .chain(prefixes.iter().map(|prefix| glob::under(prefix.as_ref())))
        .collect()
}

/// Invalidates with `method`; returns how many keys were deleted.
pub fn run<K: AsRef<str>, P: AsRef<str>>(
    host: &mut impl Host,
    method: Method,
    exact: &[K],
    prefixes: &[P],
) -> Result<u64, Failure> {
    match method {
        Method::DeleteMatching => matching(host, exact, prefixes),
        Method::Scan => scanning(host, exact, prefixes),
    }
}

/// [`keys_and_prefixes`] through `host`, the failure named
/// `cache.delete-matching of "<pattern>" and "<pattern>"`.
pub fn matching<K: AsRef<str>, P: AsRef<str>>(
    host: &mut impl Host,
    exact: &[K],
    prefixes: &[P],
) -> Result<u64, Failure> {
    let patterns = patterns(exact, prefixes);
    if patterns.is_empty() {
        return Ok(0);
    }
    host.delete_matching(&patterns)
        .named(|| format!("cache.delete-matching of {}", listed(&patterns)))
}

/// The keys of [`matching`] with [`Method::Scan`]: one `delete` of the
/// exact keys, then each prefix scanned to the end. A key the scan returns
/// twice is deleted once; one outside its prefix (which the escaped pattern
/// rules out) is logged and never deleted.
pub fn scanning<K: AsRef<str>, P: AsRef<str>>(
    host: &mut impl Host,
    exact: &[K],
    prefixes: &[P],
) -> Result<u64, Failure> {
    let mut deleted = 0;
    if !exact.is_empty() {
        let keys: Vec<String> = exact.iter().map(|k| k.as_ref().to_owned()).collect();
        deleted += host.delete(&keys).named(|| match keys.as_slice() {
            [key] => format!("cache.delete of key {}", quote(key)),
            _ => format!("cache.delete of keys {}", listed(&keys)),
        })?;
    }
    for prefix in prefixes {
        deleted += scan_under(host, prefix.as_ref())?;
    }
    Ok(deleted)
}

fn scan_under(host: &mut impl Host, prefix: &str) -> Result<u64, Failure> {
    let pattern = glob::under(prefix);
    let scan_call = || format!("cache.scan of pattern {}", quote(&pattern));
    let mut seen = HashSet::new();
    let (mut cursor, mut deleted) = (0, 0);
    for _ in 0..MAX_SCAN_PAGES {
        let page = host.scan(&pattern, cursor, SCAN_COUNT).named(scan_call)?;
        let mut batch = Vec::new();
        for key in page.keys {
            if !key.starts_with(prefix) {
                let fields = [("key", quote(&key)), ("pattern", pattern.clone())];
                host.warn("scan returned a key outside its prefix, skipped", &fields);
            } else if seen.insert(key.clone()) {
                batch.push(key);
            }
        }
        if let Some(first) = batch.first() {
            deleted += host.delete(&batch).named(|| {
                let (n, pattern, first) = (batch.len(), quote(&pattern), quote(first));
                format!("cache.delete of {n} key(s) matching {pattern} (first {first})")
            })?;
        }
        cursor = page.cursor;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
    Err(Failure {
        call: scan_call(),
        error: Error::Other(format!("no end after {MAX_SCAN_PAGES} pages")),
    })
}

/// `"a"`, `"a" and "b"`, `"a", "b" and "c"`.
fn listed(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::Scripted;
    use crate::log::Level;

    fn scan(host: &mut Scripted) -> Result<u64, Failure> {
        scanning(host, &["context:S-1"], &["context:S-1:"])
    }

    #[test]
    fn matching_deletes_escaped_keys_and_prefixes_in_one_call() {
        let mut host = Scripted::default().existing(&["context:S*1", "context:S*1:dev"]);
        let deleted = matching(&mut host, &["context:S*1"], &["context:S*1:"]);
        assert_eq!(deleted.ok(), Some(2));
        assert_eq!(host.calls, [r"delete-matching context:S\*1 context:S\*1:*"]);
        let none: [&str; 0] = [];
        assert_eq!(matching(&mut host, &none, &none).ok(), Some(0));
        assert_eq!(host.calls.len(), 1, "nothing to delete, no call");
    }

    #[test]
    fn matching_names_every_pattern_when_it_fails() {
        let mut host = Scripted::default().failing("delete-matching", Error::Denied("no".into()));
        let failure = matching(&mut host, &["a*"], &["b:", "c:"]).unwrap_err();
        assert_eq!(
            failure.to_string(),
            r#"cache.delete-matching of "a\\*", "b:*" and "c:*" failed (denied): no"#
        );
    }

    #[test]
    fn scanning_deletes_the_key_then_follows_the_cursor_to_zero() {
        let mut host =
            Scripted::with_pages(&[(17, &[]), (42, &["context:S-1:a"]), (0, &["context:S-1:b"])])
                .existing(&["context:S-1", "context:S-1:a", "context:S-1:b"]);
        assert_eq!(scan(&mut host).ok(), Some(3));
        assert_eq!(
            host.calls,
            [
                "delete context:S-1",
                "scan context:S-1:* 0 500",
                "scan context:S-1:* 17 500",
                "delete context:S-1:a",
                "scan context:S-1:* 42 500",
                "delete context:S-1:b",
            ]
        );
    }

    #[test]
    fn scanning_deletes_each_key_once_when_the_scan_repeats_it() {
        let mut host = Scripted::with_pages(&[
            (5, &["context:S-1:a", "context:S-1:a"]),
            (0, &["context:S-1:a", "context:S-1:b"]),
        ]);
        scan(&mut host).unwrap();
        let deletes: Vec<&str> = host
            .calls
            .iter()
            .filter(|c| c.starts_with("delete"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            deletes,
            [
                "delete context:S-1",
                "delete context:S-1:a",
                "delete context:S-1:b"
            ]
        );
    }

    #[test]
    fn scanning_never_deletes_keys_outside_the_prefix() {
        let page: &[&str] = &[
            "context:S-10",
            "context:S-10:dev",
            "context:S-1",
            "context:S-1:ok",
        ];
        let mut host = Scripted::with_pages(&[(0, page)]);
        scan(&mut host).unwrap();
        assert_eq!(
            host.calls.last().map(String::as_str),
            Some("delete context:S-1:ok")
        );
        let skipped = host
            .logs
            .iter()
            .filter(|(l, m, _)| *l == Level::Warn && m.contains("outside its prefix"))
            .count();
        assert_eq!(skipped, 3);
    }

    #[test]
    fn scanning_counts_only_keys_that_existed() {
        let mut host = Scripted::with_pages(&[(0, &["context:S-1:a", "context:S-1:gone"])])
            .existing(&["context:S-1:a"]);
        assert_eq!(scan(&mut host).ok(), Some(1));
    }

    #[test]
    fn scanning_names_the_failed_call() {
        let mut host = Scripted::default().failing("scan", Error::Unavailable("refused".into()));
        assert_eq!(
            scan(&mut host).unwrap_err().to_string(),
            r#"cache.scan of pattern "context:S-1:*" failed (unavailable): refused"#
        );
        let mut host = Scripted::default().failing("delete", Error::Denied("grant".into()));
        assert_eq!(
            scan(&mut host).unwrap_err().to_string(),
            r#"cache.delete of key "context:S-1" failed (denied): grant"#
        );
        // The exact key's delete goes through; the page's fails.
        let pages = Scripted::with_pages(&[(0, &["context:S-1:a", "context:S-1:b"])]);
        let mut host = FailSecond(pages, 0);
        assert_eq!(
            scan_second(&mut host),
            r#"cache.delete of 2 key(s) matching "context:S-1:*" (first "context:S-1:a") failed (unavailable): timeout"#
        );
    }

    /// Fails the second `delete` with `unavailable`.
    struct FailSecond(Scripted, u32);

    fn scan_second(host: &mut FailSecond) -> String {
        scanning(host, &["context:S-1"], &["context:S-1:"])
            .unwrap_err()
            .to_string()
    }

    impl Host for FailSecond {
        fn config(&mut self, key: &str) -> Option<String> {
            self.0.config(key)
        }
        fn scan(&mut self, p: &str, c: u64, n: u32) -> Result<crate::cache::ScanPage, Error> {
            self.0.scan(p, c, n)
        }
        fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
            self.1 += 1;
            if self.1 == 2 {
                return Err(Error::Unavailable("timeout".into()));
            }
            self.0.delete(keys)
        }
        fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
            self.0.delete_matching(patterns)
        }
        fn upsert_entity(
            &mut self,
            l: &str,
            i: &str,
            p: &[(String, crate::graph::Value)],
        ) -> Result<(), Error> {
            self.0.upsert_entity(l, i, p)
        }
        fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
            self.0.log(level, message, fields);
        }
    }

    #[test]
    fn scanning_gives_up_on_a_cursor_that_never_returns_to_zero() {
        let endless = crate::cache::ScanPage {
            cursor: 1,
            keys: Vec::new(),
        };
        let mut host = Scripted {
            pages: vec![endless; MAX_SCAN_PAGES as usize].into(),
            ..Scripted::default()
        };
        let failure = scan(&mut host).unwrap_err();
        assert!(failure.error.is_retryable());
        assert_eq!(failure.error.message(), "no end after 100000 pages");
    }

    #[test]
    fn methods_read_as_configured() {
        assert_eq!("scan".parse(), Ok(Method::Scan));
        assert_eq!("delete-matching".parse(), Ok(Method::DeleteMatching));
        assert!("SCAN".parse::<Method>().is_err());
        assert_eq!(Method::default().to_string(), "delete-matching");
    }
}
