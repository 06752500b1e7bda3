//! Checks on a parsed configuration, before anything connects: ranges,
//! names, and how streams, subjects and handlers fit together. Each error
//! names the key.

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::handler::HandlerConfig;
use super::sections::Config;
use crate::backend::graph_batch::MAX_IN_FLIGHT;

/// One server, or with `cluster` the seed nodes of a cluster: all
/// `redis://` or all `rediss://`, each with a host, and the same
/// credentials and database in each.
fn check_cache_nodes(cache: &super::sections::CacheConfig) -> Result<(), ConfigError> {
    let urls: Vec<&str> = cache.url.split(',').map(str::trim).collect();
    if !cache.cluster {
        if urls.len() > 1 {
            return Err(invalid(
                "cache.url",
                "lists several servers; set `cluster = true` if they are nodes of a Valkey cluster",
            ));
        }
        return check_url("cache.url", &cache.url, &["redis", "rediss", "memory"]);
    }
    let mut first: Option<(&str, &str, &str)> = None;
    for url in urls {
        if url.is_empty() {
            return Err(invalid(
                "cache.url",
                "an empty entry in the list of cluster nodes",
            ));
        }
        check_url("cache.url", url, &["redis", "rediss"]).map_err(|_| {
            invalid(
                "cache.url",
                format!(
                    "`{}`: a cluster's nodes are redis:// or rediss:// URLs",
                    crate::secret::mask_url(url)
                ),
            )
        })?;
        let (scheme, rest) = url.split_once("://").unwrap_or_default();
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, database) = rest.split_at(authority_end);
        let (credentials, host) = authority.rsplit_once('@').unwrap_or(("", authority));
        if host.is_empty() || host.starts_with(':') {
            return Err(invalid(
                "cache.url",
                format!("`{}` names no host", crate::secret::mask_url(url)),
            ));
        }
        let database = database.trim_start_matches('/');
        let database = if database.is_empty() { "0" } else { database };
        match first {
            None => first = Some((scheme, credentials, database)),
            Some((s, _, _)) if s != scheme => {
                return Err(invalid(
                    "cache.url",
                    "mixes redis:// and rediss://: every node of a cluster is reached the same way",
                ));
            }
            Some((_, c, d)) if c != credentials || d != database => {
                return Err(invalid(
                    "cache.url",
                    "every node URL of a cluster needs the same credentials and database",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Credentials come from one place; certificates only with TLS, and a
/// client certificate with its key.
fn check_cache_access(cache: &super::sections::CacheConfig) -> Result<(), ConfigError> {
    if cache.password.is_some() && cache.password_file.is_some() {
        return Err(invalid(
            "cache.password_file",
            "set `password` or `password_file`, not both",
        ));
    }
    let tls = cache.url.starts_with("rediss://");
    for (key, file) in [
        ("cache.ca_file", &cache.ca_file),
        ("cache.cert_file", &cache.cert_file),
        ("cache.key_file", &cache.key_file),
    ] {
        if file.is_some() && !tls {
            return Err(invalid(key, "certificates need a rediss:// cache.url"));
        }
    }
    if cache.insecure && !tls {
        return Err(invalid(
            "cache.insecure",
            "only applies to a rediss:// cache.url",
        ));
    }
    if cache.insecure && cache.ca_file.is_some() {
        return Err(invalid(
            "cache.insecure",
            "skips verifying the server, so `ca_file` would be ignored; set one of them",
        ));
    }
    if cache.cert_file.is_some() != cache.key_file.is_some() {
        return Err(invalid(
            "cache.key_file",
            "a client certificate needs both `cert_file` and `key_file`",
        ));
    }
    Ok(())
}

/// NATS: each server URL a nats:// or tls:// one, at most one way to
/// authenticate, each secret from one place, a client certificate with
/// its key.
fn check_nats_access(nats: &super::sections::NatsConfig) -> Result<(), ConfigError> {
    for url in nats.url.split(',') {
        check_url("nats.url", url.trim(), &["nats", "tls"])?;
    }
    let pairs = [
        (
            "nats.password_file",
            nats.password.is_some(),
            nats.password_file.is_some(),
            "password",
        ),
        (
            "nats.token_file",
            nats.token.is_some(),
            nats.token_file.is_some(),
            "token",
        ),
        (
            "nats.nkey_seed_file",
            nats.nkey_seed.is_some(),
            nats.nkey_seed_file.is_some(),
            "nkey_seed",
        ),
    ];
    for (key, inline, file, name) in pairs {
        if inline && file {
            return Err(invalid(
                key,
                format!("set `{name}` or `{name}_file`, not both"),
            ));
        }
    }
    let password = nats.password.is_some() || nats.password_file.is_some();
    if password != nats.user.is_some() {
        return Err(invalid(
            if password {
                "nats.user"
            } else {
                "nats.password"
            },
            "user and password go together",
        ));
    }
    let methods: Vec<&str> = [
        ("user", nats.user.is_some()),
        ("token", nats.token.is_some() || nats.token_file.is_some()),
        (
            "nkey_seed",
            nats.nkey_seed.is_some() || nats.nkey_seed_file.is_some(),
        ),
        ("creds_file", nats.creds_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if let [first, second, ..] = methods[..] {
        return Err(invalid(
            format!("nats.{second}"),
            format!("one way to authenticate: `{first}` is set already"),
        ));
    }
    if nats.cert_file.is_some() != nats.key_file.is_some() {
        return Err(invalid(
            "nats.key_file",
            "a client certificate needs both `cert_file` and `key_file`",
        ));
    }
    Ok(())
}

/// Neo4j: certificates only with an encrypted (`+s`/`+ssc`) URL.
fn check_graph_access(graph: &super::sections::GraphConfig) -> Result<(), ConfigError> {
    if graph.password_file.is_some() && !graph.password.is_empty() {
        return Err(invalid(
            "graph.password_file",
            "set `password` or `password_file`, not both",
        ));
    }
    let encrypted = graph
        .url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.ends_with("+s") || scheme.ends_with("+ssc"));
    if graph.ca_file.is_some() && !encrypted {
        return Err(invalid(
            "graph.ca_file",
            "certificates need a bolt+s://, bolt+ssc://, neo4j+s:// or neo4j+ssc:// graph.url",
        ));
    }
    if !(1..=MAX_IN_FLIGHT).contains(&graph.write_transactions) {
        return Err(invalid(
            "graph.write_transactions",
            format!(
                "{} transactions at once: must be between 1 and {MAX_IN_FLIGHT}",
                graph.write_transactions
            ),
        ));
    }
    Ok(())
}

pub fn validate(config: &Config) -> Result<(), ConfigError> {
    check_nats_access(&config.nats)?;
    check_cache_nodes(&config.cache)?;
    check_url(
        "graph.url",
        &config.graph.url,
        &[
            "bolt",
            "bolt+s",
            "bolt+ssc",
            "neo4j",
            "neo4j+s",
            "neo4j+ssc",
            "memory",
        ],
    )?;
    check_cache_access(&config.cache)?;
    check_graph_access(&config.graph)?;
    if config.cache.seed.is_some() && !config.cache.url.starts_with("memory://") {
        return Err(invalid(
            "cache.seed",
            "only a memory:// cache can be seeded",
        ));
    }
    check_name("nats.stream", &config.nats.stream)?;
    check_name("nats.dead_letter_stream", &config.nats.dead_letter_stream)?;
    if config.nats.stream == config.nats.dead_letter_stream {
        return Err(invalid(
            "nats.dead_letter_stream",
            "must differ from nats.stream",
        ));
    }
    if config.nats.stream_subjects.is_empty() {
        return Err(invalid(
            "nats.stream_subjects",
            "needs at least one subject",
        ));
    }
    check_subject_prefix("nats.dead_letter_subject", &config.nats.dead_letter_subject)?;
    check_subject_prefix("nats.control_subject", &config.nats.control_subject)?;
    check_name("nats.plugin_bucket", &config.nats.plugin_bucket)?;
    check_name("nats.plugin_kv", &config.nats.plugin_kv)?;
    check_name("nats.lease_kv", &config.nats.lease_kv)?;
    if !(1..=5).contains(&config.nats.replicas) {
        return Err(invalid(
            "nats.replicas",
            format!(
                "{} copies: must be between 1 and 5 (JetStream's limit); 3 on a three-server cluster",
                config.nats.replicas
            ),
        ));
    }
    for subject in &config.nats.stream_subjects {
        let dead_letter = format!("{}.x", config.nats.dead_letter_subject);
        if subject_matches(subject, &dead_letter) {
            return Err(invalid(
                "nats.dead_letter_subject",
                format!(
                    "dead letters would land in the source stream: `{subject}` covers `{dead_letter}`"
                ),
            ));
        }
        let status = format!("{}.status", config.nats.control_subject);
        if subject_matches(subject, &status) {
            return Err(invalid(
                "nats.control_subject",
                format!(
                    "status requests would land in the source stream: `{subject}` covers `{status}`"
                ),
            ));
        }
    }
    if config.runtime.max_instances == 0 {
        return Err(invalid("runtime.max_instances", "must be at least 1"));
    }
    if config.handlers.is_empty() {
        return Err(invalid(
            "handlers",
            "configure at least one [[handlers]] entry",
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut durables = std::collections::HashMap::new();
    let mut partitioned: Option<(&str, crate::partition::Mapping)> = None;
    for (i, handler) in config.handlers.iter().enumerate() {
        let key = |field: &str| format!("handlers[{i}].{field}");
        check_name(&key("name"), &handler.name)?;
        if !names.insert(handler.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("handler `{}` is configured twice", handler.name),
            ));
        }
        check_name(&key("durable"), &handler.durable)?;
        // One durable consumer has one filter: two handlers on it would
        // replace each other's subjects and one would receive nothing.
        if let Some(first) = durables.insert(handler.durable.as_str(), handler.name.as_str()) {
            return Err(invalid(
                key("durable"),
                format!(
                    "durable `{}` is already used by handler `{first}`; handler `{}` needs a durable of its own",
                    handler.durable, handler.name
                ),
            ));
        }
        match (&handler.plugin, &handler.plugin_object) {
            (Some(_), None) => {}
            (None, Some(object)) => check_name(&key("plugin_object"), object)?,
            _ => {
                return Err(invalid(
                    key("plugin"),
                    "set exactly one of `plugin` (a file) and `plugin_object` (pushed versions)",
                ));
            }
        }
        if handler.subjects.is_empty() {
            return Err(invalid(key("subjects"), "needs at least one subject"));
        }
        for subject in &handler.subjects {
            if !config
                .nats
                .stream_subjects
                .iter()
                .any(|s| covers(s, subject))
            {
                return Err(invalid(
                    key("subjects"),
                    format!(
                        "`{subject}` is not inside nats.stream_subjects {:?}",
                        config.nats.stream_subjects
                    ),
                ));
            }
        }
        if handler.max_deliver == 0 {
            return Err(invalid(key("max_deliver"), "must be at least 1"));
        }
        if handler.concurrency == 0 || handler.concurrency > 4096 {
            return Err(invalid(key("concurrency"), "must be between 1 and 4096"));
        }
        if handler.max_ack_pending < handler.concurrency {
            return Err(invalid(
                key("max_ack_pending"),
                "must be at least concurrency",
            ));
        }
        if handler.ack_wait < Duration::from_secs(1) {
            return Err(invalid(key("ack_wait"), "must be at least 1s"));
        }
        if handler.deadline.is_zero() || handler.deadline >= handler.ack_wait {
            return Err(invalid(
                key("deadline"),
                format!(
                    "must be above 0 and below ack_wait ({:?})",
                    handler.ack_wait
                ),
            ));
        }
        if handler.memory_mib == 0 || handler.memory_mib > 1024 {
            return Err(invalid(key("memory_mib"), "must be between 1 and 1024"));
        }
        if handler.max_host_calls == 0 {
            return Err(invalid(key("max_host_calls"), "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&handler.retry.jitter) {
            return Err(invalid(key("retry.jitter"), "must be between 0 and 1"));
        }
        if handler.retry.base.is_zero() || handler.retry.base > handler.retry.max {
            return Err(invalid(
                key("retry.base"),
                "must be above 0 and at most retry.max",
            ));
        }
        if let Err((field, message)) = handler.grants.check() {
            return Err(invalid(key(&format!("grants.{field}")), message));
        }
        check_order_key(handler).map_err(|(field, message)| invalid(key(field), message))?;
        let mapping =
            check_partitions(handler).map_err(|(field, message)| invalid(key(field), message))?;
        // The stream has one subject transform.
        match (&partitioned, mapping) {
            (Some((first, theirs)), Some(ours)) if *theirs != ours => {
                return Err(invalid(
                    key("partitions"),
                    format!(
                        "handler `{first}` already partitions the stream's `{}` into {}; \
                         a stream has one subject transform, so every partitioned handler of \
                         it takes that same subject and count",
                        theirs.subject, theirs.count
                    ),
                ));
            }
            (None, Some(ours)) => partitioned = Some((handler.name.as_str(), ours)),
            _ => {}
        }
        if handler.drain_grace > Duration::from_secs(3600) {
            return Err(invalid(key("drain_grace"), "must be at most 1h"));
        }
    }
    Ok(())
}

fn check_order_key(handler: &HandlerConfig) -> Result<(), (&'static str, String)> {
    if handler.order_key_subject_token.is_some() && !handler.order_key.is_empty() {
        return Err((
            "order_key",
            "set either order_key or order_key_subject_token, not both".into(),
        ));
    }
    if handler
        .order_key_subject_token
        .is_some_and(|token| token > 255)
    {
        return Err((
            "order_key_subject_token",
            "must be between 0 and 255".into(),
        ));
    }
    for pointer in &handler.order_key {
        crate::pointer::Pointer::parse(pointer).map_err(|message| ("order_key", message))?;
        if pointer.is_empty() {
            return Err((
                "order_key",
                "the empty pointer (the whole payload) is not a key".into(),
            ));
        }
    }
    Ok(())
}

/// A partitioned handler needs its key in one subject token, because NATS
/// maps subjects, not payloads, into partitions.
fn check_partitions(
    handler: &HandlerConfig,
) -> Result<Option<crate::partition::Mapping>, (&'static str, String)> {
    let Some(count) = handler.partitions else {
        return Ok(None);
    };
    if !(1..=1024).contains(&count) {
        return Err(("partitions", format!("{count}: must be between 1 and 1024")));
    }
    if handler.exclusive {
        return Err((
            "exclusive",
            "a partitioned handler is spread over the hosts by its partitions; \
             set either partitions or exclusive, not both"
                .into(),
        ));
    }
    let Some(token) = handler.order_key_subject_token else {
        let hint = if handler.order_key.is_empty() {
            "set order_key_subject_token to the subject token that carries the key"
        } else {
            "order_key reads the payload, which NATS cannot partition by: have producers put \
             the key in the subject and set order_key_subject_token, or use exclusive = true"
        };
        return Err((
            "partitions",
            format!("partitioned handlers need the key in the subject; {hint}"),
        ));
    };
    crate::partition::Mapping::new(&handler.subjects, token, count)
        .map(Some)
        .map_err(|message| ("subjects", message))
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) => Ok(()),
        _ => Err(invalid(
            key,
            format!(
                "`{url}` must start with one of {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{name}` must be 1 to 64 of A-Z, a-z, 0-9, `-`, `_`"),
        ))
    }
}

fn check_subject_prefix(key: &str, subject: &str) -> Result<(), ConfigError> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{subject}` must be dot-separated literal tokens"),
        ))
    }
}

/// Whether the subject filter `filter` matches the literal subject `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut filter = filter.split('.');
    let mut subject = subject.split('.');
    loop {
        match (filter.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `inner` matches is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut outer = outer.split('.');
    let mut inner = inner.split('.');
    loop {
        match (outer.next(), inner.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(i)) if i != ">" => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
