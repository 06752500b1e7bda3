//! The plugin team's walkthrough, end to end, from a directory outside
//! the repository: scaffold a plugin, build it, record events from a real
//! stream, test it against them with expectations (a passing run and a
//! failing one that names the difference), push it, see it live in
//! `switchyard status`, change it under `switchyard dev` (a passing change
//! goes live, a breaking one is refused and changes nothing), roll back.

use super::*;

/// `switchyard <args>` with a transcript line, asserting success.
fn step(transcript: &mut Vec<String>, args: &[&str]) -> String {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let (ok, stdout, stderr) = cli(&os);
    transcript.push(format!("$ switchyard {}\n{stdout}{stderr}", args.join(" ")));
    assert!(ok, "switchyard {}: {stdout}{stderr}", args.join(" "));
    stdout
}

#[test]
fn a_new_plugin_goes_from_scaffold_to_live_with_recorded_fixtures() {
    let names = Names::new("kit");
    let outside = std::env::temp_dir().join(format!("switchyard-kit-{}", names.id));
    std::fs::create_dir_all(&outside).unwrap();
    let plugin_dir = outside.join("user-cache");
    let dir = plugin_dir.to_str().unwrap();
    let mut transcript = Vec::new();

    // Scaffold and build.
    step(
        &mut transcript,
        &["plugin", "new", "user-cache", "--dir", dir],
    );
    let built = step(&mut transcript, &["plugin", "build", dir]);
    let artifact = built
        .strip_prefix("built ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no artifact in {built:?}"))
        .to_string();
    let digest = digest_of(std::path::Path::new(&artifact));

    // The harness builds the crate it is pointed at (here: nothing to do
    // after the build above) and runs it in isolation.
    let mut plugin = switchyard_testing::Harness::build(&plugin_dir).start();
    plugin.seed_keys(["user:7", "user:7:profile", "user:70"]);
    plugin
        .send_json("users.updated", serde_json::json!({"user_id": "7"}))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["user:70"]);
    step(
        &mut transcript,
        &[
            "test",
            &artifact,
            "--events",
            &format!("{dir}/fixtures.jsonl"),
        ],
    );

    // Real traffic: a host for the configuration, events on its stream.
    // The scaffold's own key prefix, so its fixtures hold for the handler.
    let prefix = "user:";
    let port = free_port();
    let config_path = temp_dir(&names.id).join("kit.toml");
    let handler = Handler::new(HANDLER, Plugin::Object("user-cache".into()), &names)
        .set("ack_wait", "10s")
        .config("key_prefix", prefix)
        .grant("cache_keys", [format!("{prefix}*")]);
    let toml = Service::new(&names)
        .set("http", "listen", format!("127.0.0.1:{port}"))
        .handler(handler)
        .to_toml();
    std::fs::write(&config_path, &toml).unwrap();
    let config = config_path.to_str().unwrap();
    step(
        &mut transcript,
        &[
            "plugin",
            "push",
            "user-cache",
            &artifact,
            "--fixtures",
            &format!("{dir}/fixtures.jsonl"),
            "--allow-no-hosts",
            "--config",
            config,
        ],
    );
    let mut serve = Serve::start_with(&names, port, &toml, &[], &[]);
    serve.wait_ready(Duration::from_secs(60));
    for id in ["42", "43"] {
        step(
            &mut transcript,
            &[
                "publish",
                "--subject",
                &names.subject,
                "--payload",
                &format!("{{\"user_id\":\"{id}\"}}"),
                "--config",
                config,
            ],
        );
    }

    // Record them, and say what must come of the first.
    let recorded = outside.join("recorded.jsonl");
    let recorded_path = recorded.to_str().unwrap();
    step(
        &mut transcript,
        &[
            "record",
            "--stream",
            &names.stream,
            "--subject",
            &names.subject,
            "--out",
            recorded_path,
            "--config",
            config,
        ],
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&recorded)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let with_expectation = |kept: &str| {
        let mut first = lines[0].clone();
        first["cache"] = serde_json::json!({
            format!("{prefix}42"): "v", format!("{prefix}42:profile"): "v", format!("{prefix}420"): "v",
        });
        first["expect"] = serde_json::json!({
            "outcome": "ack",
            "keys_gone": [format!("{prefix}42:profile")],
            "keys_kept": [format!("{prefix}{kept}")],
        });
        let text = format!("{first}\n{}\n", lines[1]);
        let path = outside.join(format!("expect-{kept}.jsonl"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let passing = with_expectation("420");
    step(&mut transcript, &["test", &artifact, "--events", &passing]);
    let failing = with_expectation("42");
    let (ok, stdout, stderr) = cli(&[
        "test".as_ref(),
        artifact.as_ref(),
        "--events".as_ref(),
        failing.as_ref(),
    ]);
    transcript.push(format!(
        "$ switchyard test {artifact} --events {failing}\n{stdout}{stderr}"
    ));
    assert!(!ok, "an expectation the plugin does not meet fails the run");
    assert!(
        stdout.contains(&format!("expected \"{prefix}42\" kept, got it deleted")),
        "{stdout}"
    );

    // Live on the host.
    fleet_on(&config_path, &[serve.pid()], &format!("#1 {digest}"));
    let status = step(&mut transcript, &["status", "--config", config]);
    assert!(status.contains(&digest), "{status}");

    // The dev loop: a change that keeps the fixtures passing goes live as
    // a new version; one that breaks them is refused and changes nothing.
    let source = plugin_dir.join("src/lib.rs");
    let original = std::fs::read_to_string(&source).unwrap();
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&source).unwrap();
        assert!(text.contains(from), "{from:?} not in the template");
        std::fs::write(&source, text.replace(from, to)).unwrap();
    };
    edit("\"invalidated\"", "\"invalidated the user's keys\"");
    let mut dev = switchyard()
        .args(["dev", dir, "--config", config])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = dev.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let cycle = |n: usize| {
        poll(Duration::from_secs(180), &format!("dev cycle {n}"), || {
            let lines = lines.lock().unwrap();
            let cycles: Vec<&String> = lines.iter().filter(|l| l.starts_with('[')).collect();
            cycles
                .get(n - 1)
                .map(|l| l.to_string())
                .ok_or_else(|| format!("{lines:?}"))
        })
    };
    let first = cycle(1);
    assert!(
        first.contains("start · built in")
            && first.contains("fixtures 3/3 passed")
            && first.contains("pushed #2 (dev) to `user-cache`; live on 1 of 1 host"),
        "{first}"
    );
    let changed = digest_of(std::path::Path::new(&artifact));
    assert_ne!(changed, digest);
    edit("payload.get(\"user_id\")", "payload.get(\"id\")");
    let second = cycle(2);
    assert!(
        second.contains("src/lib.rs changed")
            && second.contains("fixtures 1/3 passed; not swapped"),
        "{second}"
    );
    dev.kill().unwrap();
    dev.wait().unwrap();
    reader.join().unwrap();
    transcript.push(format!(
        "$ switchyard dev {dir} --config {config}\n{}",
        lines.lock().unwrap().join("\n")
    ));
    std::fs::write(&source, original).unwrap();
    let status = step(&mut transcript, &["status", "--config", config]);
    assert!(status.contains(&changed), "{status}");
    step(
        &mut transcript,
        &["plugin", "rollback", "user-cache", "--config", config],
    );
    fleet_on(&config_path, &[serve.pid()], &format!("#1 {digest}"));
    step(&mut transcript, &["status", "--config", config]);
    eprintln!("{}", transcript.join("\n"));
    assert_eq!(serve.terminate().code(), Some(0));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        remove_streams(&services::jetstream().await, &names).await;
    });
    let _ = std::fs::remove_dir_all(&outside);
}
