//! Valkey over `rediss://` with an ACL user, with and without a
//! client certificate; a certificate the client cannot verify, a wrong
//! password and a missing client certificate are each refused, naming why.

use std::time::Duration;

use switchyard::backend::CacheBackend;
use switchyard::backend::valkey::{ValkeyCache, ValkeyOptions};
use switchyard_tests::services;

use super::{read, secure};
use crate::support::{HANDLER, Names, Options, TestService, existing, service_config, transition};

/// The ACL user and password and the test CA; no client certificate.
pub(super) fn options() -> ValkeyOptions {
    ValkeyOptions {
        user: Some(secure("REDIS_USER")),
        password: Some(String::from_utf8(read("REDIS_PASSWORD_FILE")).unwrap()),
        ca: Some(read("CA")),
        client_cert: None,
        insecure: false,
    }
}

fn with_client_cert(mut options: ValkeyOptions) -> ValkeyOptions {
    options.client_cert = Some((read("CLIENT_CERT"), read("CLIENT_KEY")));
    options
}

/// A plain client of this test's own on the TLS server at `url`.
pub(super) async fn raw_connection(
    url: &str,
    options: &ValkeyOptions,
) -> redis::aio::MultiplexedConnection {
    let certificates = redis::TlsCertificates {
        client_tls: options
            .client_cert
            .clone()
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: options.ca.clone(),
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url).unwrap();
    let settings = info
        .redis_settings()
        .clone()
        .set_username(options.user.as_deref().unwrap())
        .set_password(options.password.as_deref().unwrap());
    let client =
        redis::Client::build_with_tls(info.set_redis_settings(settings), certificates).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

pub(super) async fn set(connection: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query_async(connection)
        .await
        .unwrap();
}

/// Sets a key with a client of its own and deletes it through the
/// backend: the connection does real work.
async fn round_trip(url: &str, options: &ValkeyOptions) {
    let cache = ValkeyCache::connect_with(url, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let key = services::unique("tls-key-");
    let mut raw = raw_connection(url, options).await;
    set(&mut raw, &key).await;
    assert_eq!(cache.delete(std::slice::from_ref(&key)).await.unwrap(), 1);
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

async fn refusal(url: &str, options: &ValkeyOptions) -> String {
    match ValkeyCache::connect_with(url, options).await {
        Ok(_) => panic!("{url} accepted a connection it should refuse"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn rediss_with_an_acl_user_and_the_ca_does_real_work() {
    round_trip(&secure("REDIS_URL"), &options()).await;
}

#[tokio::test]
async fn rediss_with_a_client_certificate_does_real_work_where_one_is_required() {
    round_trip(&secure("REDIS_MTLS_URL"), &with_client_cert(options())).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_saying_so() {
    let error = refusal(&secure("REDIS_UNTRUSTED_URL"), &options()).await;
    assert!(
        error.to_lowercase().contains("certificate"),
        "the refusal should name the certificate: {error}"
    );
}

/// `insecure` (for testing) accepts the certificate the CA does not vouch
/// for, and the connection does real work.
#[tokio::test]
async fn insecure_accepts_a_certificate_from_another_ca() {
    let url = secure("REDIS_UNTRUSTED_URL");
    let insecure = ValkeyOptions {
        ca: None,
        insecure: true,
        ..options()
    };
    let cache = ValkeyCache::connect_with(&url, &insecure)
        .await
        .unwrap_or_else(|e| panic!("insecure connect to {url}: {e}"));
    let raw_options = ValkeyOptions {
        ca: Some(read("UNTRUSTED_CA")),
        ..options()
    };
    let mut raw = raw_connection(&url, &raw_options).await;
    let key = services::unique("insecure-key-");
    set(&mut raw, &key).await;
    assert_eq!(cache.delete(std::slice::from_ref(&key)).await.unwrap(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused_saying_so() {
    let mut options = options();
    options.password = Some("not-the-password".into());
    let error = refusal(&secure("REDIS_URL"), &options).await;
    assert!(
        error.contains("WRONGPASS") || error.to_lowercase().contains("auth"),
        "the refusal should name authentication: {error}"
    );
    assert!(
        !error.contains("not-the-password"),
        "the password leaked: {error}"
    );
}

#[tokio::test]
async fn a_missing_client_certificate_is_refused_where_one_is_required() {
    let error = refusal(&secure("REDIS_MTLS_URL"), &options()).await;
    assert!(!error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_invalidates_over_rediss_with_the_password_from_a_file() {
    let _servers = services::shared().await;
    let url = secure("REDIS_URL");
    let names = Names::new("s");
    let mut config = service_config(&names, &Options::default(), None).parse();
    config.cache.url = url.clone();
    config.cache.user = Some(secure("REDIS_USER"));
    config.cache.password_file = Some(secure("REDIS_PASSWORD_FILE").into());
    config.cache.ca_file = Some(secure("CA").into());
    let service = TestService::run(names, HANDLER, config, None).await;

    let mut raw = raw_connection(&url, &options()).await;
    let story = services::unique("TLS-");
    let keys = [format!("context:{story}"), format!("context:{story}:dev")];
    for key in &keys {
        set(&mut raw, key).await;
    }
    service.publish(transition(&story, "t")).await;
    services::eventually(Duration::from_secs(30), "keys deleted over TLS", || async {
        match existing(&mut raw.clone(), &keys).await? {
            0 => Ok(()),
            n => Err(format!("{n} keys still there")),
        }
    })
    .await;
    service.stop().await;
}
