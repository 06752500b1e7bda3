//! OpenTelemetry export of the service's spans, over OTLP/HTTP (protobuf).
//!
//! Off unless an endpoint is given (`--otlp-endpoint URL` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): without one nothing of OpenTelemetry is
//! initialised. With one, [`layer`] returns a `tracing` layer that turns the
//! service's spans (`event` per JetStream delivery, `dispatch` per handler
//! run, one per cache and graph call) into OpenTelemetry spans, and a
//! [`Telemetry`] guard that owns the tracer provider.
//!
//! Spans are batched and sent by a background thread with a blocking HTTP
//! client, so export never runs on the service's async runtime. The guard
//! flushes what is still batched when it is dropped (the `switchyard`
//! binary keeps it until `main` returns, i.e. after the graceful drain); a
//! process that exits at once (a second SIGTERM) loses the last batch.
//!
//! The endpoint is the collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is in the specification: traces go to `<endpoint>/v1/traces` (a URL that
//! already ends in `/v1/traces` is used as it is). Only `http://` is
//! supported (this build carries no TLS stack): send to a local collector
//! or agent. The exporter's other standard variables apply
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, ...), and
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` set the resource
//! (`service.name` is `switchyard` by default).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// How long flushing the last batch may take at exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why OpenTelemetry export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

fn bad(endpoint: &str, reason: &str) -> TelemetryError {
    TelemetryError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks an OTLP endpoint (a collector's base URL) and returns the URL
/// traces are sent to: `<endpoint>/v1/traces`.
pub fn traces_endpoint(endpoint: &str) -> Result<String, TelemetryError> {
    const EXPECTED: &str = "expected an http:// URL such as http://127.0.0.1:4318";
    let trimmed = endpoint.trim();
    let scheme_end = trimmed.find("://").ok_or_else(|| bad(endpoint, EXPECTED))?;
    let scheme = trimmed[..scheme_end].to_ascii_lowercase();
    match scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(bad(
                endpoint,
                "https is not supported (this build has no TLS); send to a local collector over http://",
            ));
        }
        _ => return Err(bad(endpoint, EXPECTED)),
    }
    let rest = &trimmed[scheme_end + 3..];
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(endpoint, "contains whitespace"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad(endpoint, "must not have a query or fragment"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad(endpoint, "has no host"));
    }
    if authority.contains('@') {
        return Err(bad(
            endpoint,
            "must not carry credentials; use OTEL_EXPORTER_OTLP_HEADERS",
        ));
    }
    // The port, if any: after the last ':' that is not inside an IPv6 literal.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    if let Some(colon) = authority[host_end..].rfind(':') {
        let (host, port) = authority.split_at(host_end + colon);
        if host.is_empty() {
            return Err(bad(endpoint, "has no host"));
        }
        if port[1..].parse::<u16>().is_err() {
            return Err(bad(endpoint, "the port must be a number from 0 to 65535"));
        }
    }
    let base = trimmed.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        Ok(base.to_string())
    } else {
        Ok(format!("{base}/v1/traces"))
    }
}

/// Owns the tracer provider; dropping it flushes the spans still batched and
/// stops the export thread.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    traces_url: String,
}

impl Telemetry {
    /// Where spans are sent.
    pub fn traces_url(&self) -> &str {
        &self.traces_url
    }

    /// Flushes and stops export now (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, url = %self.traces_url, "OpenTelemetry: the last spans may not have been exported");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The `tracing` layer exporting spans to `endpoint`, and the guard to keep
/// until exit. Must be called outside an async runtime (it builds a blocking
/// HTTP client).
///
/// The layer sees spans and events from `info` up, except those of the
/// exporter's own stack (`opentelemetry*`, `reqwest`, `hyper*`, `h2`), so
/// exporting never produces spans of its own. It is independent of the log
/// filter (`SWITCHYARD_LOG`).
pub fn layer<S>(endpoint: &str) -> Result<(impl Layer<S> + use<S>, Telemetry), TelemetryError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let traces_url = traces_endpoint(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url.clone())
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |name| name.is_empty()) {
        resource = resource.with_service_name("switchyard");
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("switchyard");
    // Targets match by prefix: `opentelemetry` also covers `opentelemetry_sdk`,
    // `opentelemetry-otlp`, ...; `hyper` covers `hyper_util`.
    let filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("h2", LevelFilter::OFF);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    Ok((
        layer,
        Telemetry {
            provider: Some(provider),
            traces_url,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    #[test]
    fn base_urls_get_the_traces_path() {
        assert_eq!(
            traces_endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/otlp").unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            traces_endpoint("HTTP://collector:4318/v1/traces").unwrap(),
            "HTTP://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://[::1]:4318").unwrap(),
            "http://[::1]:4318/v1/traces"
        );
    }

    #[test]
    fn building_the_layer_with_an_endpoint_succeeds() {
        let (_layer, mut telemetry) = layer::<Registry>("http://127.0.0.1:4318").unwrap();
        assert_eq!(telemetry.traces_url(), "http://127.0.0.1:4318/v1/traces");
        // Nothing was recorded: shutting down has nothing to send.
        telemetry.shutdown();
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        for (endpoint, reason) in [
            ("127.0.0.1:4318", "expected an http:// URL"),
            ("not a url", "expected an http:// URL"),
            ("grpc://127.0.0.1:4317", "expected an http:// URL"),
            ("https://collector:4318", "https is not supported"),
            ("http://", "has no host"),
            ("http://:4318", "has no host"),
            ("http://collector:port", "the port must be a number"),
            ("http://collector:99999", "the port must be a number"),
            ("http://coll ector:4318", "contains whitespace"),
            ("http://collector:4318/?a=b", "query"),
            ("http://user:secret@collector:4318", "credentials"),
        ] {
            let error = match layer::<Registry>(endpoint) {
                Ok(_) => panic!("{endpoint} was accepted"),
                Err(error) => error.to_string(),
            };
            assert!(error.contains(endpoint), "{error}");
            assert!(error.contains(reason), "{endpoint}: {error}");
        }
    }
}
