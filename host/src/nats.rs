//! Every NATS connection the binary makes (`serve`, `publish`, `plugin`,
//! `status`, `dlq`) is built here from one [`NatsConfig`]: TLS (CA,
//! client certificate, `tls_first`), one way to authenticate (user and
//! password, token, NKey seed or credentials file), each secret inline or
//! read from its `*_file`.
//!
//! [`refusal`] sorts a failed connection attempt into what retrying can
//! fix (the server is down or unreachable) and what it cannot (the server
//! refused our credentials, or its certificate is not trusted), so that
//! `serve` waits for the first and stops on the second.

use std::time::Duration;

use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions};

use crate::config::NatsConfig;
use crate::secret::{self, mask_urls};

/// The options for a connection named `name`, with the configuration's
/// TLS and authentication. Reads the secret and credentials files, so a
/// missing one is an error naming its key.
pub fn options(config: &NatsConfig, name: &str) -> anyhow::Result<ConnectOptions> {
    let mut options = match &config.creds_file {
        Some(path) => {
            let creds =
                secret::read("nats.creds_file", None, &Some(path.clone()))?.unwrap_or_default();
            ConnectOptions::with_credentials(&creds).map_err(|error| {
                anyhow::anyhow!(
                    "config key `nats.creds_file`: {} is not a credentials file: {error}",
                    path.display()
                )
            })?
        }
        None => ConnectOptions::new(),
    };
    options = options.name(name);
    if let Some(password) = secret::read(
        "nats.password_file",
        config.password.as_deref(),
        &config.password_file,
    )? {
        let user = config.user.clone().unwrap_or_default();
        options = options.user_and_password(user, password);
    }
    if let Some(token) = secret::read(
        "nats.token_file",
        config.token.as_deref(),
        &config.token_file,
    )? {
        options = options.token(token);
    }
    if let Some(seed) = secret::read(
        "nats.nkey_seed_file",
        config.nkey_seed.as_deref(),
        &config.nkey_seed_file,
    )? {
        check_seed(&seed)?;
        options = options.nkey(seed);
    }
    for (key, file) in [
        ("nats.ca_file", &config.ca_file),
        ("nats.cert_file", &config.cert_file),
        ("nats.key_file", &config.key_file),
    ] {
        if let Some(path) = file {
            std::fs::metadata(path).map_err(|error| {
                anyhow::anyhow!(
                    "config key `{key}`: cannot read {}: {error}",
                    path.display()
                )
            })?;
        }
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if config.tls_first {
        options = options.tls_first();
    }
    Ok(options)
}

/// An NKey seed that cannot sign is refused here, naming the key, rather
/// than as a failed handshake later. The seed itself is never printed.
fn check_seed(seed: &str) -> anyhow::Result<()> {
    nkeys::KeyPair::from_seed(seed.trim())
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("config key `nats.nkey_seed`: not an NKey seed (`SU...`)"))
}

/// The servers of a comma-separated `nats.url`.
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(str::to_string)
        .collect()
}

/// One connection attempt for a command: fails after `timeout` with an
/// error naming the server and the cause.
pub async fn connect_once(
    config: &NatsConfig,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    options(config, name)?
        .connection_timeout(timeout)
        .connect(servers(&config.url))
        .await
        .map_err(|error| describe(&config.url, &error))
}

/// Why the server at `url` could not be connected to, for a person.
pub fn describe(url: &str, error: &ConnectError) -> anyhow::Error {
    let url = mask_urls(url);
    match refusal(error) {
        Some(cause) => anyhow::anyhow!("NATS at {url} refused the connection: {cause}"),
        None => anyhow::anyhow!("cannot connect to NATS at {url}: {error}{}", hint(error)),
    }
}

/// A likely fix for a failure that is retried.
fn hint(error: &ConnectError) -> &'static str {
    if error.to_string().contains("expected INFO") {
        "; a server with TLS `handshake_first` needs `nats.tls_first = true`"
    } else {
        ""
    }
}

/// What retrying cannot fix: the server refused the credentials, or TLS
/// failed (an untrusted or mismatched certificate, a server without TLS
/// where TLS is required). `None` for a server that is down, unreachable
/// or slow, which retrying can.
pub fn refusal(error: &ConnectError) -> Option<String> {
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation => Some(
            "authorization violation: the server did not accept the credentials \
             (check nats.user/password, token, nkey_seed or creds_file)"
                .into(),
        ),
        ConnectErrorKind::Authentication => {
            Some("the credentials could not sign the server's challenge".into())
        }
        ConnectErrorKind::ServerParse => Some(format!("bad server URL: {error}")),
        ConnectErrorKind::Tls => crate::tls::failure(error, "nats.ca_file")
            .or_else(|| Some(format!("TLS: {}", chain(error)))),
        _ => crate::tls::failure(error, "nats.ca_file"),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = current.source();
    }
    text
}
