//! Start-up refuses what it cannot serve safely: a durable consumer that is
//! not this handler's, and a plugin version that fails its fixtures. A
//! durable whose settings drifted is brought back to the configuration, and
//! a NATS that is down at start-up is waited for, not fatal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{FromConsumer as _, pull};
use switchyard::health::Health;
use switchyard::service;
use switchyard_tests::artifacts::HOSTILE;
use switchyard_tests::services;
use tokio_util::sync::CancellationToken;

use crate::support::{HANDLER, Names, Options, TestService, service_config};

/// Runs `config` until it returns, which a refused start-up must do soon.
async fn start_up_error(config: switchyard::config::Config) -> String {
    let health = Arc::new(Health::default());
    let run = service::run(config, health.clone(), CancellationToken::new());
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Err(error)) => {
            assert!(!health.ready(), "a refused start-up never became ready");
            format!("{error:#}")
        }
        Ok(Ok(())) => panic!("start-up was expected to fail but the service ran and stopped"),
        Err(_) => panic!("start-up was expected to fail but the service kept running"),
    }
}

/// Changes the handler's durable consumer on the server with `change`.
async fn alter_durable(names: &Names, change: impl FnOnce(&mut pull::Config)) {
    let js = services::jetstream().await;
    let stream = js.get_stream(&names.stream).await.unwrap();
    let durable = names.durable(HANDLER);
    let info = stream.consumer_info(&durable).await.unwrap();
    let mut config = pull::Config::try_from_consumer_config(info.config).unwrap();
    change(&mut config);
    stream.update_consumer(config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_another_handler_created_is_refused_naming_it() {
    let _servers = services::shared().await;
    let names = Names::new("d");
    TestService::start_named(names.clone(), Options::default())
        .await
        .stop()
        .await;
    alter_durable(&names, |config| {
        config.description = Some("switchyard handler story-audit".into());
    })
    .await;

    let config = service_config(&names, &Options::default(), None).parse();
    let error = start_up_error(config).await;
    assert!(error.contains(&names.durable(HANDLER)), "{error}");
    assert!(error.contains("story-audit"), "{error}");
    assert!(error.contains("not this handler's"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_whose_settings_drifted_is_updated_to_the_configuration() {
    let _servers = services::shared().await;
    let names = Names::new("d");
    TestService::start_named(names.clone(), Options::default())
        .await
        .stop()
        .await;
    alter_durable(&names, |config| {
        config.ack_wait = Duration::from_secs(77);
        config.max_ack_pending = 5000;
    })
    .await;

    let service = TestService::start_named(names.clone(), Options::default()).await;
    let js = services::jetstream().await;
    let stream = js.get_stream(&names.stream).await.unwrap();
    let info = stream.consumer_info(names.durable(HANDLER)).await.unwrap();
    // The test configuration's ack_wait and the default max_ack_pending.
    assert_eq!(info.config.ack_wait, Duration::from_secs(10));
    assert_ne!(info.config.max_ack_pending, 5000);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_its_fixtures_does_not_start_the_host() {
    let _servers = services::shared().await;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/story-transitions.fixtures.jsonl");
    let options = Options {
        // Acks everything, so it fails the fixtures that expect rejects.
        plugin: HOSTILE.to_string(),
        fixtures: Some(fixtures.display().to_string()),
        ..Options::default()
    };
    let config = service_config(&Names::new("f"), &options, None).parse();
    let error = start_up_error(config).await;
    assert!(error.contains(&format!("handler `{HANDLER}`")), "{error}");
    assert!(error.contains("failed its fixtures"), "{error}");
}

/// A nats-server of this test's own on `port`, killed when dropped.
struct OwnNats {
    child: std::process::Child,
    _dir: PathBuf,
}

impl OwnNats {
    fn start(port: u16) -> Self {
        let services = std::env::var("SWITCHYARD_SERVICES").expect("SWITCHYARD_SERVICES is set");
        let output = std::process::Command::new(services)
            .args(["bin", "nats"])
            .output()
            .unwrap();
        assert!(output.status.success(), "scripts/services bin nats failed");
        let binary = String::from_utf8(output.stdout).unwrap().trim().to_string();
        let dir = std::env::temp_dir().join(services::unique("switchyard-own-nats-"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        OwnNats { child, _dir: dir }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_up_is_retried_until_it_comes_up_and_then_served() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let names = Names::new("n");
    let mut config = service_config(&names, &Options::default(), None).parse();
    config.nats.url = url.clone();

    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service::run(config, health.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished(), "serve ended while NATS was down");
    assert!(!health.ready(), "ready without NATS");

    let _nats = OwnNats::start(port);
    services::eventually(
        Duration::from_secs(60),
        "service ready once NATS is up",
        || {
            let health = health.clone();
            async move {
                if health.ready() {
                    Ok(())
                } else {
                    Err("not ready".to_string())
                }
            }
        },
    )
    .await;

    let story = services::unique("UP-");
    let key = format!("context:{story}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut valkey)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.publish(
        names.subject.clone(),
        crate::support::transition(&story, "t").into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    services::eventually(Duration::from_secs(30), "event handled", || async {
        match crate::support::existing(&mut valkey.clone(), std::slice::from_ref(&key)).await? {
            0 => Ok(()),
            _ => Err("key still there".to_string()),
        }
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .expect("service stops")
        .unwrap()
        .unwrap();
}
