//! The Grafana dashboard against what the host really exports: every
//! series it queries exists, and every label it filters or groups by is
//! one that series carries.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Series name -> its label names, from a render of a registry with one
/// exclusive handler registered (every per-handler series at zero).
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let metrics = switchyard::metrics::Metrics::new();
    metrics.register_handler("h", true);
    metrics.plugin_live("h", None, "sha256:0");
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics.render().lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_string()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{') {
            let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
            for pair in inner.split(',') {
                if let Some((name, _)) = pair.split_once('=') {
                    labels.insert(name.trim().to_string());
                }
            }
        }
    }
    series
}

/// The identifiers in `expr` that name a series.
fn series_in(expr: &str) -> Vec<String> {
    words(expr)
        .into_iter()
        .filter(|w| w.starts_with("switchyard_") || w.starts_with("process_"))
        .collect()
}

/// Identifiers (letters, digits, `_`) in `text`, in order.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The label names `expr` uses: those before `=`, `=~`, `!=` inside
/// selectors, and those in `by (...)` / `without (...)` lists.
fn labels_in(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        for matcher in rest[open + 1..close].split(',') {
            if let Some(at) = matcher.find(['=', '!']) {
                labels.push(matcher[..at].trim().to_string());
            }
        }
        rest = &rest[close.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    for keyword in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let list = &rest[at + keyword.len()..];
            let close = list.find(')').unwrap_or(list.len());
            labels.extend(words(&list[..close]));
            rest = &list[close..];
        }
    }
    labels
}

#[test]
fn the_dashboard_queries_only_series_and_labels_the_host_exports() {
    let exported = exported();
    let text = std::fs::read_to_string(example("grafana/switchyard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    exprs.push(expr.clone());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(exprs.len() >= 25, "found only {} queries", exprs.len());
    for expr in &exprs {
        let series = series_in(expr);
        assert!(!series.is_empty(), "a query on no series: {expr}");
        // Labels every series has, plus what Prometheus adds or a
        // histogram's buckets carry.
        let mut allowed: BTreeSet<String> = ["instance", "job", "le"]
            .map(String::from)
            .into_iter()
            .collect();
        for name in &series {
            let labels = exported
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not exported; in {expr}"));
            allowed.extend(labels.iter().cloned());
        }
        for label in labels_in(expr) {
            assert!(
                allowed.contains(&label),
                "label `{label}` is not on {series:?}; in {expr}"
            );
        }
    }
}

#[test]
fn every_series_of_a_configured_handler_exists_from_start_up() {
    let exported = exported();
    for series in [
        "switchyard_events_total",
        "switchyard_host_call_errors_total",
        "switchyard_faults_total",
        "switchyard_shadow_events_total",
        "switchyard_lease_held",
        "switchyard_consumer_pending",
        "switchyard_instance_wait_seconds_count",
        "switchyard_host_call_duration_seconds_count",
        "switchyard_build_info",
        "switchyard_instances_in_use",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            exported.contains_key(series),
            "{series} missing at start-up"
        );
    }
    assert!(exported["switchyard_faults_total"].contains("fault"));
    assert!(exported["switchyard_host_call_errors_total"].contains("error"));
    assert!(!exported["switchyard_faults_total"].contains("kind"));
}
