//! The commands around the service, as an operator runs them: each one
//! that finds nothing to act on exits non-zero and says so; `config check`
//! and `config show` work offline; `publish` takes standard input and one
//! message with headers; human logs carry no colour off a terminal.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::Path;

use super::*;

/// A configuration of `names` with story-transitions from a file, written
/// to this test's directory.
fn operator_config(names: &Names, plugin: Plugin) -> PathBuf {
    let path = temp_dir(&names.id).join("operator.toml");
    std::fs::write(&path, config_toml(names, plugin, free_port())).unwrap();
    path
}

/// `switchyard <args> --config <config>`: (success, stdout, stderr).
fn with_config(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--config"), config.as_os_str()]);
    cli(&all)
}

#[test]
fn status_with_no_host_answering_fails_saying_so() {
    let names = Names::new("cli");
    let config = operator_config(&names, plugin_file());
    let (ok, stdout, stderr) = with_config(&config, &["status", "--wait", "300ms"]);
    assert!(!ok, "status with no hosts must fail: {stdout}");
    assert!(stderr.contains("no hosts answered"), "{stderr}");
    assert!(!stderr.contains("unreadable"), "{stderr}");
    let (ok, stdout, _) = with_config(&config, &["status", "--json", "--wait", "300ms"]);
    assert!(!ok, "status --json with no hosts must fail too");
    assert_eq!(stdout.trim(), "[]", "the JSON still says what was found");
}

#[test]
fn pushes_no_host_would_run_are_refused_and_store_nothing() {
    let names = Names::new("cli");
    let config = operator_config(&names, Plugin::Object(HANDLER.into()));
    let object = format!("{}-object", names.id);

    let (ok, _, stderr) = with_config(&config, &["plugin", "history", &object]);
    assert!(!ok, "history of a name never pushed must fail");
    assert!(stderr.contains("no version of"), "{stderr}");
    let (ok, _, stderr) = with_config(&config, &["plugin", "list", "--wait", "300ms"]);
    assert!(!ok, "an empty fleet has nothing to list");
    assert!(stderr.contains("nothing to list"), "{stderr}");

    let (ok, stdout, stderr) = with_config(
        &config,
        &[
            "plugin",
            "push",
            &object,
            STORY_TRANSITIONS,
            "--wait",
            "300ms",
        ],
    );
    assert!(!ok, "a push no host follows must fail: {stdout}");
    assert!(
        stderr.contains(&format!("no running host follows plugin object `{object}`"))
            && stderr.contains("nothing was stored"),
        "{stderr}"
    );
    let (ok, _, _) = with_config(&config, &["plugin", "history", &object]);
    assert!(!ok, "the refused push stored nothing");

    let (ok, stdout, stderr) = with_config(
        &config,
        &[
            "plugin",
            "push",
            &object,
            STORY_TRANSITIONS,
            "--wait",
            "300ms",
            "--allow-no-hosts",
        ],
    );
    assert!(ok, "an explicit first push: {stderr}");
    assert!(
        stdout.contains("no running host follows it yet"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = with_config(&config, &["plugin", "list", "--wait", "300ms"]);
    assert!(ok, "plugin list: {stderr}");
    let digest = digest_of(Path::new(STORY_TRANSITIONS));
    assert!(
        stdout.contains(&format!("{object}: live #1 {digest}; no host runs it")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_of_a_handler_nobody_knows_fails_and_an_empty_known_one_succeeds() {
    let js = services::jetstream().await;
    let names = Names::new("cli");
    let config = operator_config(&names, plugin_file());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: names.dead_letter_stream.clone(),
        subjects: vec![format!("{}.>", names.dead_letter_subject)],
        ..Default::default()
    })
    .await
    .unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            with_config(&config, &args)
        })
    };
    let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();

    let (ok, stdout, stderr) = run(args(&["dlq", "list", HANDLER])).await.unwrap();
    assert!(ok, "a configured handler with no dead letters: {stderr}");
    assert!(stdout.contains("0 dead letters"), "{stdout}");

    let (ok, _, stderr) = run(args(&["dlq", "list", "story-transitons"]))
        .await
        .unwrap();
    assert!(!ok, "a misspelt handler must fail");
    assert!(stderr.contains("no handler `story-transitons`"), "{stderr}");

    let (ok, _, stderr) = run(args(&["dlq", "replay", HANDLER])).await.unwrap();
    assert!(!ok, "a replay that replays nothing must fail");
    assert!(stderr.contains("nothing replayed"), "{stderr}");

    // Without a configuration, only the running hosts can vouch for a name.
    let (ok, _, stderr) = tokio::task::spawn_blocking({
        let names = names.clone();
        move || {
            cli(&[
                "dlq".as_ref(),
                "list".as_ref(),
                HANDLER.as_ref(),
                "--nats".as_ref(),
                services::nats_url().as_ref(),
                "--stream".as_ref(),
                names.dead_letter_stream.as_ref(),
                "--subject".as_ref(),
                names.dead_letter_subject.as_ref(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(!ok, "no config and no host knows the handler");
    assert!(stderr.contains("runs a handler by that name"), "{stderr}");
    remove_streams(&js, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reads_standard_input_and_sends_one_message_with_headers() {
    let js = services::jetstream().await;
    let names = Names::new("cli");
    let config = operator_config(&names, plugin_file());
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.id)],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let lines = format!(
        "{{\"subject\": \"{0}\", \"payload\": {{\"n\": 1}}}}\n{{\"subject\": \"{0}\", \"payload\": {{\"n\": 2}}}}\n",
        names.subject
    );
    let config_path = config.clone();
    let piped = tokio::task::spawn_blocking(move || {
        let mut child = switchyard()
            .args(["publish", "--events", "-", "--config"])
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(String::from_utf8_lossy(&piped.stdout).contains("published 2 events"));

    let subject = names.subject.clone();
    let config_path = config.clone();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        with_config(
            &config_path,
            &[
                "publish",
                "--subject",
                &subject,
                "--payload",
                "{not json",
                "--header",
                "Trace-Id=abc=1",
                "--header",
                "Nats-Msg-Id=one-message",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "one message: {stderr}");
    assert!(stdout.contains("published 1 events"), "{stdout}");

    assert_eq!(stream.info().await.unwrap().state.messages, 3);
    let third = stream.direct_get(3).await.unwrap();
    assert_eq!(
        &third.payload[..],
        b"{not json",
        "the payload byte for byte"
    );
    let headers = third.headers;
    assert_eq!(
        headers.get("Trace-Id").map(|v| v.as_str()),
        Some("abc=1"),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("one-message")
    );
    let first = stream.direct_get(1).await.unwrap();
    assert_eq!(&first.payload[..], br#"{"n":1}"#);

    // Nothing to publish is a failure, not "published 0 events".
    let config_path = config.clone();
    let empty = tokio::task::spawn_blocking(move || {
        switchyard()
            .args(["publish", "--events", "-", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("holds no events"));
    remove_streams(&js, &names).await;
}

#[test]
fn config_check_lists_every_problem_and_show_masks_secrets() {
    let names = Names::new("cli");
    let dir = temp_dir(&names.id);
    let good = operator_config(&names, plugin_file());
    let (ok, stdout, stderr) = cli(&["config".as_ref(), "check".as_ref(), good.as_os_str()]);
    assert!(ok, "a good configuration: {stderr}");
    assert!(
        stdout.contains("ok (1 handlers; 1 plugin files loaded"),
        "{stdout}"
    );

    // Two problems past the keys themselves: both listed, exit 1.
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace(STORY_TRANSITIONS, "/nonexistent/plugin.wasm")
        .replace(
            "password = \"switchyard\"",
            "password_file = \"/nonexistent/pw\"",
        );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let (ok, _, stderr) = cli(&["config".as_ref(), "check".as_ref(), bad.as_os_str()]);
    assert!(!ok, "a configuration with problems must fail");
    assert!(
        stderr.contains("config key `graph.password_file`: cannot read /nonexistent/pw"),
        "{stderr}"
    );
    assert!(stderr.contains("/nonexistent/plugin.wasm"), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");

    let output = switchyard()
        .args(["config", "show"])
        .arg(&good)
        .env("SWITCHYARD_GRAPH__PASSWORD", "hunter2-77")
        .env("SWITCHYARD_UNSET", "handlers.0.ack_wait")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(!shown.contains("hunter2-77"), "a secret shown:\n{shown}");
    assert!(shown.contains("password = \"***\""), "{shown}");
    assert!(
        !shown.contains("ack_wait"),
        "the unset key is gone:\n{shown}"
    );
    assert!(
        shown.contains("concurrency = 8"),
        "the rest is shown:\n{shown}"
    );

    let output = switchyard()
        .args(["config", "show"])
        .arg(&good)
        .env("SWITCHYARD_UNSET", "handlers.0.ack_wiat")
        .output()
        .unwrap();
    assert!(!output.status.success(), "a misspelt unset must fail");
    assert!(String::from_utf8_lossy(&output.stderr).contains("`handlers.0.ack_wiat`"));
}

#[test]
fn human_logs_carry_no_colour_off_a_terminal() {
    let names = Names::new("cli");
    let port = free_port();
    // NATS on a port nothing listens on: serve logs a warning per attempt.
    let toml = config_toml(&names, plugin_file(), port).replace(
        &services::nats_url(),
        &format!("nats://127.0.0.1:{}", free_port()),
    );
    let config = temp_dir(&names.id).join("dead-nats.toml");
    std::fs::write(&config, toml).unwrap();
    let stderr = temp_dir(&names.id).join("colour.log");
    let mut child = switchyard()
        .env_remove("NO_COLOR")
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let log = poll(Duration::from_secs(30), "a retry warning", || {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("WARN") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a log file:\n{log:?}"
    );
}

#[test]
fn every_command_reads_the_same_variables_as_the_configuration() {
    let names = Names::new("cli");
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let output = switchyard()
        .args(["status", "--wait", "200ms"])
        .env("SWITCHYARD_NATS__URL", &dead)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&dead),
        "--nats follows SWITCHYARD_NATS__URL: {stderr}"
    );

    // SWITCHYARD_CONFIG names the file for dlq as for serve: its own
    // dead-letter stream (not created here) is the one looked for.
    let config = operator_config(&names, plugin_file());
    let output = switchyard()
        .args(["dlq", "list", HANDLER])
        .env("SWITCHYARD_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&names.dead_letter_stream),
        "dlq used SWITCHYARD_CONFIG: {stderr}"
    );
}

#[test]
fn a_pool_that_could_outgrow_the_memory_budget_is_refused_by_check_and_serve() {
    let names = Names::new("cli");
    let config = operator_config(&names, plugin_file());
    for args in [vec!["config", "check"], vec!["serve", "--config"]] {
        let output = switchyard()
            .args(&args)
            .arg(&config)
            .env("SWITCHYARD_RUNTIME__MEMORY_BUDGET_MIB", "1024")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail: {stderr}");
        assert!(
            stderr.contains("config key `runtime.memory_budget_mib`")
                && stderr.contains("32 x memory_mib 64 MiB"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_copies_events_faithfully_and_consumes_nothing() {
    use async_nats::jetstream::consumer::pull;

    let js = services::jetstream().await;
    let names = Names::new("cli");
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.id)],
            ..Default::default()
        })
        .await
        .unwrap();
    // A durable that a handler would consume: record must leave it alone.
    let durable = stream
        .create_consumer(pull::Config {
            durable_name: Some(names.durable(HANDLER)),
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, &names.subject, transition("REC-1", "t1")).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Trace-Id", "rec-2");
    js.publish_with_headers(
        names.subject.clone(),
        headers,
        vec![0xff, 0x00, b'x'].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish(&js, &format!("{}.other", names.id), b"plain text".to_vec()).await;

    let dir = temp_dir(&names.id);
    let out = dir.join("recorded.jsonl");
    let record = |extra: Vec<String>| {
        let out = out.clone();
        let stream_name = names.stream.clone();
        tokio::task::spawn_blocking(move || {
            let mut args: Vec<String> = vec![
                "record".into(),
                "--stream".into(),
                stream_name,
                "--out".into(),
                out.display().to_string(),
                "--nats".into(),
                services::nats_url(),
            ];
            args.extend(extra);
            let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            cli(&args)
        })
    };
    let (ok, stdout, stderr) = record(vec!["--subject".into(), names.subject.clone()])
        .await
        .unwrap();
    assert!(ok, "record: {stderr}");
    assert!(stdout.contains("recorded 2 events"), "{stdout}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0]["payload"]["story_id"], "REC-1",
        "JSON kept as JSON"
    );
    assert_eq!(lines[1]["payload_base64"], "/wB4", "bytes kept as base64");
    assert_eq!(lines[1]["headers"]["Trace-Id"], "rec-2", "headers kept");

    // The recorded file is a `switchyard test` input as it is.
    let (ok, stdout, stderr) = cli(&[
        "test".as_ref(),
        STORY_TRANSITIONS.as_ref(),
        "--allow-rejects".as_ref(),
        "--events".as_ref(),
        out.as_os_str(),
    ]);
    assert!(ok, "test on recorded events: {stderr}");
    assert!(
        stdout.contains("2 events: 1 ack, 0 retry, 1 reject"),
        "{stdout}"
    );

    // --last: the newest only; a plain-text payload stays a string.
    let (ok, _, stderr) = record(vec!["--last".into(), "1".into()]).await.unwrap();
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"payload\":\"plain text\""), "{text}");

    // Nothing consumed: the durable still has all three to deliver.
    let mut durable = durable;
    let info = durable.info().await.unwrap();
    assert_eq!(info.num_pending, 3, "the durable is untouched");
    assert_eq!(info.num_ack_pending, 0);

    // Nothing there: a failure that says so.
    let (ok, _, stderr) = record(vec!["--subject".into(), format!("{}.none", names.id)])
        .await
        .unwrap();
    assert!(!ok);
    assert!(stderr.contains("nothing recorded"), "{stderr}");
    remove_streams(&js, &names).await;
}
