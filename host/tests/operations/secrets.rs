//! Secrets stay secret: the real binary on the TLS servers
//! `scripts/secure-services` starts, with a password of each kind (NATS
//! from the environment, Valkey in the URL, Neo4j from a file), serving
//! events (spans exported over OTLP), answering `status` and `dlq list`, then started again with a
//! wrong password for each server. No secret appears in any log line,
//! command output, error or metric; each refusal names the server and the
//! key to fix, and ends the process instead of retrying.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::*;

use switchyard_tests::services::secure;

/// The secret in the file `SWITCHYARD_SECURE_<name>` names.
fn secret(name: &str) -> String {
    let path = secure(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The service on the TLS servers: NATS user and CA (its password comes
/// from the environment), Valkey with the ACL user and password in the
/// URL, Neo4j over `bolt+s://` with its password in a file.
fn secure_config(
    names: &Names,
    port: u16,
    cache_password: &str,
    graph_password_file: &Path,
) -> String {
    let prefix = key_prefix(names);
    let handler = Handler::new(HANDLER, plugin_file(), names)
        .set("concurrency", 4)
        .set("ack_wait", "10s")
        .set("deadline", "5s")
        .config("key_prefix", prefix.as_str())
        .grant("cache_keys", [format!("{prefix}*")])
        .grant("graph_labels", ["PhaseTransition"]);
    let cache_url = secure("REDIS_URL").replacen(
        "rediss://",
        &format!("rediss://{}:{cache_password}@", secure("REDIS_USER")),
        1,
    );
    Service::new(names)
        .set("http", "listen", format!("127.0.0.1:{port}"))
        .set("nats", "url", secure("NATS_USERS_URL"))
        .set("nats", "ca_file", secure("CA"))
        .set("nats", "user", secure("NATS_USER"))
        .set("cache", "url", cache_url)
        .set("cache", "ca_file", secure("CA"))
        .set("graph", "url", secure("NEO4J_URL"))
        .set("graph", "ca_file", secure("CA"))
        .set("graph", "user", secure("NEO4J_USER"))
        .set("graph", "password", "")
        .set(
            "graph",
            "password_file",
            graph_password_file.display().to_string(),
        )
        .handler(handler)
        .to_toml()
}

/// Runs `switchyard <args>` with `env`: (success, stdout + stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = switchyard()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Waits for a `serve` that must refuse to start: its exit status and log.
fn refused(serve: Serve) -> (Option<i32>, String) {
    let log = serve.stderr.clone();
    let status = serve.exit_within(
        Duration::from_secs(60),
        "with a wrong password (retrying a refusal?)",
    );
    (
        status.code(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a secret appears in {what}:\n{text}"
        );
    }
}

#[test]
fn no_secret_appears_in_logs_outputs_errors_or_metrics() {
    let names = Names::new("secrets");
    let dir = temp_dir(&names.id);
    let nats_password = secret("NATS_PASSWORD_FILE");
    let cache_password = secret("REDIS_PASSWORD_FILE");
    let graph_password_file = PathBuf::from(secure("NEO4J_PASSWORD_FILE"));
    let graph_password = secret("NEO4J_PASSWORD_FILE");
    let wrong_nats = "wrong-nats-pw-5c1e";
    let wrong_cache = "wrong-cache-pw-77ad";
    let secrets = [
        nats_password.as_str(),
        cache_password.as_str(),
        graph_password.as_str(),
        wrong_nats,
        wrong_cache,
    ];
    let env = [
        ("SWITCHYARD_NATS__PASSWORD", nats_password.as_str()),
        ("SWITCHYARD_LOG", "debug"),
    ];

    // Serving on all three, secrets in the environment, a URL and a file.
    let port = free_port();
    let toml = secure_config(&names, port, &cache_password, &graph_password_file);
    let config = dir.join("secure.toml");
    std::fs::write(&config, &toml).unwrap();
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let mut serve = Serve::start_with(&names, port, &toml, &["--otlp-endpoint", &endpoint], &env);
    serve.wait_ready(Duration::from_secs(60));

    let events = dir.join("events.jsonl");
    let lines: Vec<String> = (1..=5)
        .map(|i| {
            serde_json::json!({
                "subject": names.subject,
                "payload": {
                    "story_id": format!("SECRET-{i}"),
                    "from_phase": "DESIGN",
                    "to_phase": "BUILD",
                    "timestamp": services::unique("2026-12-04T00:00:00Z#"),
                },
            })
            .to_string()
        })
        .chain([serde_json::json!({"subject": names.subject, "payload": "{not json"}).to_string()])
        .collect();
    std::fs::write(&events, lines.join("\n")).unwrap();
    let config_arg = config.to_str().unwrap();
    let (ok, published) = run(
        &[
            "publish",
            "--events",
            events.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        &env,
    );
    assert!(ok, "publish over TLS with a password: {published}");

    let ack = format!("switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}");
    let metrics = poll(Duration::from_secs(60), "5 acks in /metrics", || {
        serve.assert_running();
        let metrics = serve.metrics();
        match sample(&metrics, &ack) {
            Some(n) if n >= 5.0 => Ok(metrics),
            n => Err(format!("{ack} = {n:?}")),
        }
    });
    let (ok, status) = run(&["status", "--wait", "1s", "--config", config_arg], &env);
    assert!(ok, "status: {status}");
    let (ok, dead) = poll(
        Duration::from_secs(30),
        "the bad event dead-lettered",
        || {
            let (ok, text) = run(&["dlq", "list", HANDLER, "--config", config_arg], &env);
            if ok && text.contains("JSON") {
                Ok((ok, text))
            } else {
                Err(text)
            }
        },
    );
    assert!(ok);
    let (_, health) = serve.get("/readyz").unwrap();
    assert_eq!(serve.terminate().code(), Some(0), "graceful drain exits 0");
    let logs = std::fs::read_to_string(dir.join(format!("stderr-{port}.log"))).unwrap();
    let spans = collector.bodies_with("/v1/traces").concat();
    assert!(
        count(&spans, b"dispatch") >= 5,
        "spans were exported, so the check below means something"
    );
    let spans = String::from_utf8_lossy(&spans).into_owned();
    for (what, text) in [
        ("the serve log", &logs),
        ("/metrics", &metrics),
        ("/readyz", &health),
        ("publish", &published),
        ("status", &status),
        ("dlq list", &dead),
        ("the exported spans", &spans),
    ] {
        assert_no_secret(what, text, &secrets);
    }
    assert!(
        logs.contains("tls://127.0.0.1"),
        "the log names the NATS server it reached:\n{logs}"
    );

    // A wrong NATS password: refused once, naming the server, not retried.
    let port = free_port();
    let toml = secure_config(&names, port, &cache_password, &graph_password_file);
    let wrong = [
        ("SWITCHYARD_NATS__PASSWORD", wrong_nats),
        ("SWITCHYARD_LOG", "debug"),
    ];
    let (code, log) = refused(Serve::start_with(&names, port, &toml, &[], &wrong));
    assert_ne!(
        code,
        Some(0),
        "a refused NATS password fails start-up:\n{log}"
    );
    assert!(
        log.contains(&secure("NATS_USERS_URL")) && log.contains("authorization"),
        "the refusal names the server and the cause:\n{log}"
    );
    assert_no_secret("the refused NATS start-up", &log, &secrets);
    let (ok, text) = run(&["dlq", "list", HANDLER, "--config", config_arg], &wrong);
    assert!(!ok, "dlq list with a wrong password fails:\n{text}");
    assert_no_secret("the refused dlq list", &text, &secrets);

    // A wrong Valkey password in the URL: refused naming the cache.
    let port = free_port();
    let toml = secure_config(&names, port, wrong_cache, &graph_password_file);
    let (code, log) = refused(Serve::start_with(&names, port, &toml, &[], &env));
    assert_ne!(
        code,
        Some(0),
        "a refused cache password fails start-up:\n{log}"
    );
    assert!(log.contains("cache"), "the refusal names the cache:\n{log}");
    assert_no_secret("the refused cache start-up", &log, &secrets);

    let settings = switchyard::config::Config::parse(
        &std::fs::read_to_string(&config).unwrap(),
        "the secure configuration",
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = switchyard::nats::connect_once(
            &settings.nats,
            "switchyard-operations",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        remove_streams(&async_nats::jetstream::new(client), &names).await;
    });
}
