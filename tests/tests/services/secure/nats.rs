//! NATS over TLS with each authentication the server offers: user and
//! password (from a file), NKey seed, credentials file (operator/JWT
//! mode), token, a client certificate, TLS before the greeting. Each mode
//! stores and reads back a message through JetStream; each refusal names
//! the server and the cause and never the secret.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use switchyard::config::NatsConfig;
use switchyard_tests::services;

use super::secure;

/// NATS settings for the secure server `name` (`USERS`, `JWT`, ...) with
/// the test CA and the TOML lines in `auth`.
fn settings(name: &str, auth: &str) -> NatsConfig {
    let toml = format!(
        "url = {url:?}\nstream = \"UNUSED\"\nstream_subjects = [\"unused.>\"]\nca_file = {ca:?}\n{auth}\n",
        url = secure(&format!("NATS_{name}_URL")),
        ca = secure("CA"),
    );
    toml::from_str(&toml).unwrap_or_else(|e| panic!("settings for {name}: {e}\n{toml}"))
}

fn user_and_password_file() -> String {
    format!(
        "user = {:?}\npassword_file = {:?}",
        secure("NATS_USER"),
        secure("NATS_PASSWORD_FILE")
    )
}

async fn connect(settings: &NatsConfig) -> anyhow::Result<async_nats::Client> {
    switchyard::nats::connect_once(settings, "secure-test", Duration::from_secs(5)).await
}

/// Creates a stream of its own, stores a message and reads it back.
async fn round_trip(settings: &NatsConfig) {
    let client = connect(settings)
        .await
        .unwrap_or_else(|e| panic!("{} refused: {e:#}", settings.url));
    let js = jetstream::new(client);
    let name = services::unique("SECURE_");
    let subject = format!("secure.{}", name.to_lowercase());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(subject, "over TLS".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut stream = js.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    assert_eq!(
        &stream.get_raw_message(1).await.unwrap().payload[..],
        b"over TLS"
    );
    js.delete_stream(&name).await.unwrap();
}

async fn refusal(settings: &NatsConfig) -> String {
    match connect(settings).await {
        Ok(_) => panic!("{} accepted a connection it should refuse", settings.url),
        Err(error) => format!("{error:#}"),
    }
}

#[tokio::test]
async fn user_and_password_from_a_file_does_real_work() {
    round_trip(&settings("USERS", &user_and_password_file())).await;
}

#[tokio::test]
async fn an_nkey_seed_file_does_real_work() {
    let auth = format!("nkey_seed_file = {:?}", secure("NATS_NKEY_SEED_FILE"));
    round_trip(&settings("USERS", &auth)).await;
}

#[tokio::test]
async fn a_credentials_file_does_real_work_on_an_operator_mode_server() {
    let auth = format!("creds_file = {:?}", secure("NATS_CREDS_FILE"));
    round_trip(&settings("JWT", &auth)).await;
}

#[tokio::test]
async fn a_token_from_a_file_does_real_work() {
    let auth = format!("token_file = {:?}", secure("NATS_TOKEN_FILE"));
    round_trip(&settings("TOKEN", &auth)).await;
}

#[tokio::test]
async fn a_client_certificate_does_real_work_where_one_is_required() {
    let auth = format!(
        "cert_file = {:?}\nkey_file = {:?}\n{}",
        secure("CLIENT_CERT"),
        secure("CLIENT_KEY"),
        user_and_password_file()
    );
    round_trip(&settings("MTLS", &auth)).await;
}

#[tokio::test]
async fn tls_first_does_real_work_on_a_handshake_first_server() {
    let auth = format!("tls_first = true\n{}", user_and_password_file());
    round_trip(&settings("TLS_FIRST", &auth)).await;
}

#[tokio::test]
async fn several_server_urls_are_accepted_and_one_that_answers_is_used() {
    let mut settings = settings("USERS", &user_and_password_file());
    // A port nothing listens on first: the client moves on to the next.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.url = format!("tls://127.0.0.1:{dead},{}", settings.url);
    round_trip(&settings).await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_server_and_never_the_password() {
    let auth = format!(
        "user = {:?}\npassword = \"not-the-password-7f3a\"",
        secure("NATS_USER")
    );
    let settings = settings("USERS", &auth);
    let error = refusal(&settings).await;
    assert!(error.contains(&settings.url), "names the server: {error}");
    assert!(
        error.contains("refused the connection") && error.contains("authorization violation"),
        "names the cause: {error}"
    );
    assert!(
        !error.contains("not-the-password-7f3a"),
        "the password leaked: {error}"
    );
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_saying_so() {
    let error = refusal(&settings("UNTRUSTED", &user_and_password_file())).await;
    assert!(
        error.contains("certificate is not trusted") && error.contains("nats.ca_file"),
        "names the certificate and the key that fixes it: {error}"
    );
}

#[tokio::test]
async fn a_missing_credentials_file_is_refused_naming_the_key_and_the_file() {
    let auth = "creds_file = \"/nonexistent/switchyard/user.creds\"";
    let error = refusal(&settings("JWT", auth)).await;
    assert!(
        error.contains("`nats.creds_file`") && error.contains("/nonexistent/switchyard/user.creds"),
        "names the key and the file: {error}"
    );
}

#[tokio::test]
async fn credentials_of_an_account_the_operator_never_signed_are_refused() {
    let creds = format!("{}/stranger.creds", secure("JWT_DIR"));
    let error = refusal(&settings("JWT", &format!("creds_file = {creds:?}"))).await;
    assert!(error.contains("authorization violation"), "{error}");
}

#[tokio::test]
async fn a_missing_client_certificate_is_refused_where_one_is_required() {
    let error = refusal(&settings("MTLS", &user_and_password_file())).await;
    assert!(error.contains("CertificateRequired"), "{error}");
}

#[tokio::test]
async fn serve_stops_at_start_up_when_nats_refuses_the_credentials() {
    let names = crate::support::Names::new("r");
    let mut config =
        crate::support::service_config(&names, &crate::support::Options::default(), None).parse();
    config.nats = NatsConfig {
        stream: config.nats.stream.clone(),
        stream_subjects: config.nats.stream_subjects.clone(),
        ..settings(
            "USERS",
            &format!("user = {:?}\npassword = \"wrong\"", secure("NATS_USER")),
        )
    };
    let health = std::sync::Arc::new(switchyard::health::Health::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = switchyard::service::run(config, health, shutdown.clone());
    let result = tokio::time::timeout(Duration::from_secs(20), run).await;
    shutdown.cancel();
    let error = match result {
        Ok(Err(error)) => format!("{error:#}"),
        Ok(Ok(())) => panic!("serve ran to completion with refused credentials"),
        Err(_) => panic!("serve kept retrying credentials the server refused"),
    };
    assert!(error.contains("authorization violation"), "{error}");
}
