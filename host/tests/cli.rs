//! The `switchyard` command line, run as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use switchyard_tests::artifacts::{STORY_TRANSITIONS, WRONG_WORLD};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path)
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}", std::process::id()));
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    path
}

/// `switchyard test` of story-transitions on the stress scenario.
fn test_stress_scenario() -> Command {
    let mut command = switchyard();
    command
        .arg("test")
        .arg(STORY_TRANSITIONS)
        .arg("--events")
        .arg(example("stress/events.jsonl"))
        .arg("--cache")
        .arg(example("stress/cache.json"));
    command
}

#[test]
fn test_command_runs_the_stress_scenario_to_fifty_acks_and_no_keys_left() {
    let output = test_stress_scenario().arg("--json").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_slice(&output.stdout).expect("exactly one JSON object on stdout");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r["outcome"] == "ack"), "{results:?}");
    assert_eq!(
        report["cache_keys"],
        serde_json::json!(["context:STRESS-NEO-OTHER"])
    );
    let nodes = report["graph_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 50);
    assert!(nodes.iter().all(|n| n["label"] == "PhaseTransition"));
    assert_eq!(nodes[0]["id"], "STRESS-NEO-0001:2026-01-01T00:00:01Z");
    assert_eq!(nodes[0]["properties"]["from_phase"], "DESIGN");
    assert_eq!(report["graph_relations"], serde_json::json!([]));
}

#[test]
fn test_command_prints_a_readable_table_by_default() {
    let output = switchyard()
        .args(["test", STORY_TRANSITIONS, "--events"])
        .arg(example("stress/events.jsonl"))
        .arg("--cache")
        .arg(example("stress/cache.json"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("50 events: 50 ack, 0 retry, 0 reject"),
        "{table}"
    );
    assert!(
        table.contains("cache: 50 keys deleted, 1 keys left"),
        "{table}"
    );
    assert!(table.contains("graph: 50 nodes"), "{table}");
}

#[test]
fn test_command_reports_rejects_with_their_reason_and_config_is_applied() {
    let events = temp_file(
        "mixed.jsonl",
        "{\"subject\":\"s\",\"payload\":\"{oops\"}\n{\"subject\":\"s\",\"payload\":{\"story_id\":\"S1\",\"timestamp\":\"t\"}}\n",
    );
    let cache = temp_file("cache.json", "{\"ctx/S1\": \"v\", \"context:S1\": \"v\"}");
    let output = switchyard()
        .args([
            "test",
            STORY_TRANSITIONS,
            "--json",
            "--allow-rejects",
            "--set",
            "key_prefix=ctx/",
            "--events",
        ])
        .arg(&events)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["results"][0]["outcome"], "reject");
    assert!(
        report["results"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    assert_eq!(report["results"][1]["outcome"], "ack");
    assert_eq!(report["cache_keys"], serde_json::json!(["context:S1"]));
}

/// The offline gate can feed what the stream can carry: a payload that is
/// not UTF-8, given as base64, reaches the plugin byte for byte and is
/// rejected for what it is, and the valid event beside it is handled.
#[test]
fn test_command_feeds_a_payload_that_is_not_utf8_given_as_base64() {
    // 0xff is never valid UTF-8.
    let events = temp_file(
        "binary.jsonl",
        "{\"subject\":\"s\",\"payload_base64\":\"/3sicyI6MX0=\"}\n{\"subject\":\"s\",\"payload_base64\":\"eyJzdG9yeV9pZCI6IlMxIiwidGltZXN0YW1wIjoidCJ9\"}\n",
    );
    let cache = temp_file("binary-cache.json", "{\"context:S1\": \"v\"}");
    let output = switchyard()
        .args([
            "test",
            STORY_TRANSITIONS,
            "--json",
            "--allow-rejects",
            "--events",
        ])
        .arg(&events)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["results"][0]["outcome"], "reject", "{report}");
    let detail = report["results"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("UTF-8"), "{detail}");
    assert_eq!(report["results"][1]["outcome"], "ack", "{report}");
    assert_eq!(report["cache_keys"], serde_json::json!([]));
}

#[test]
fn test_command_refuses_a_plugin_of_the_wrong_world_in_one_line() {
    let output = switchyard()
        .args(["test", WRONG_WORLD, "--events"])
        .arg(example("stress/events.jsonl"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("does not fit the switchyard:handler/event-handler world"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn test_command_names_the_bad_line_of_an_events_file() {
    let events = temp_file("bad.jsonl", "{\"subject\":\"s\",\"payload\":1}\nnot json\n");
    let output = switchyard()
        .args(["test", STORY_TRANSITIONS, "--events"])
        .arg(&events)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2: not JSON"), "{stderr}");
}

/// `--config FILE --handler NAME` runs the plugin with that handler's
/// configuration, limits and grants: the example's grants let the stress
/// scenario through, narrower ones deny it, and an unknown handler is named.
#[test]
fn test_command_runs_with_a_handlers_grants_from_the_service_configuration() {
    let run = |service: &PathBuf, handler: &str| {
        test_stress_scenario()
            .arg("--config")
            .arg(service)
            .arg("--handler")
            .arg(handler)
            .arg("--json")
            .arg("--allow-rejects")
            .output()
            .unwrap()
    };
    let outcomes = |output: &std::process::Output| -> Vec<(String, String)> {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap().to_string(),
                    r["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };

    let example_config = example("switchyard.toml");
    let granted = outcomes(&run(&example_config, "story-transitions"));
    assert_eq!(granted.len(), 50);
    assert!(
        granted.iter().all(|(outcome, _)| outcome == "ack"),
        "{granted:?}"
    );

    let text = std::fs::read_to_string(&example_config).unwrap();
    assert!(
        text.contains(r#"cache_keys = ["context:*"]"#),
        "the example's grant changed"
    );
    let narrow = temp_file(
        "narrow-grants.toml",
        &text.replace(
            r#"cache_keys = ["context:*"]"#,
            r#"cache_keys = ["other:*"]"#,
        ),
    );
    let denied = outcomes(&run(&narrow, "story-transitions"));
    assert_eq!(denied.len(), 50);
    assert!(
        denied
            .iter()
            .all(|(outcome, detail)| outcome == "reject" && detail.contains("denied")),
        "{denied:?}"
    );

    let unknown = run(&example_config, "no-such-handler");
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no handler \"no-such-handler\"") && stderr.contains("story-transitions"),
        "{stderr}"
    );
}

/// A file that is not a component is refused in one line naming the
/// parser's complaint, not a multi-line dump.
#[test]
fn an_invalid_component_is_refused_in_one_line() {
    let garbage = temp_file("garbage.wasm", "garbage");
    let events = temp_file("one.jsonl", "{\"subject\":\"s\",\"payload\":{}}\n");
    let output = switchyard()
        .arg("test")
        .arg(&garbage)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not a valid WebAssembly component") && stderr.contains("magic header"),
        "{stderr}"
    );
}

/// What a plugin logs about an event `switchyard test` reports anyway
/// stays out of the default output: the table says it.
#[test]
fn test_reports_rejections_in_its_table_without_warnings() {
    let events = temp_file(
        "reject.jsonl",
        "{\"subject\":\"s\",\"payload\":\"{oops\"}\n",
    );
    let output = switchyard()
        .args(["test", STORY_TRANSITIONS, "--allow-rejects", "--events"])
        .arg(&events)
        .env_remove("SWITCHYARD_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("reject"), "{stdout}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(!stderr.contains("isolated"), "{stderr}");
}

/// The README's command reference names every command and subcommand
/// `--help` lists, and every flag of each.
#[test]
fn the_readme_command_reference_matches_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("## Commands").expect("a Commands section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let help = |args: &[&str]| -> String {
        let output = switchyard().args(args).arg("--help").output().unwrap();
        assert!(output.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // `Commands:` lines of a help page: the names before the description.
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    };
    let flags = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .to_string()
            })
            .filter(|w| {
                !["--help", "--version", "--log-format", "--otlp-endpoint"].contains(&w.as_str())
            })
            .collect()
    };
    let top = commands(&help(&[]));
    assert!(top.len() >= 7, "{top:?}");
    let mut missing = Vec::new();
    for command in &top {
        let page = help(&[command]);
        let subcommands = commands(&page);
        let pages: Vec<(String, String)> = if subcommands.is_empty() {
            vec![(command.clone(), page)]
        } else {
            subcommands
                .iter()
                .map(|sub| (format!("{command} {sub}"), help(&[command, sub])))
                .collect()
        };
        for (name, page) in pages {
            let last = name.split(' ').next_back().unwrap();
            if !(section.contains(&format!("`{name}")) || section.contains(&format!(" {last} "))) {
                missing.push(format!("the command `{name}`"));
            }
            for flag in flags(&page) {
                let flag = flag.split('=').next().unwrap().to_string();
                if !section.contains(&flag) {
                    missing.push(format!("`{name} {flag}`"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "in --help but not in the README's command reference: {}",
        missing.join(", ")
    );
}

/// Fixture lines say what must come of each event; `switchyard test`
/// compares and exits 1 on any difference, naming it.
#[test]
fn test_compares_expectations_and_fails_naming_each_difference() {
    let fixtures = example("story-transitions.fixtures.jsonl");
    let run = |extra: &[&str]| {
        switchyard()
            .args(["test", STORY_TRANSITIONS, "--events"])
            .arg(&fixtures)
            .args(extra)
            .output()
            .unwrap()
    };
    let passing = run(&[]);
    let stdout = String::from_utf8_lossy(&passing.stdout);
    assert!(passing.status.success(), "{stdout}");
    assert!(
        stdout.contains("4 checked, 4 as expected, 0 differ"),
        "{stdout}"
    );

    // Another key prefix: the keys the first fixture expects gone stay.
    let failing = run(&["--set", "key_prefix=ctx:"]);
    let stdout = String::from_utf8_lossy(&failing.stdout);
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert!(!failing.status.success(), "a difference must fail the run");
    assert!(
        stdout.contains("#1 planning.story.transitioned:")
            && stdout.contains("expected \"context:S1\" gone, got it still there"),
        "{stdout}"
    );
    assert!(stderr.contains("1 of the events differ"), "{stderr}");
}

/// An event nobody expected to be rejected fails the run: a consumer that
/// reports success while its work fails is the incident.
#[test]
fn test_fails_on_a_rejection_no_expectation_allows() {
    let events = temp_file(
        "unexpected.jsonl",
        "{\"subject\":\"s\",\"payload\":\"{oops\"}\n",
    );
    let run = |extra: &[&str]| {
        switchyard()
            .args(["test", STORY_TRANSITIONS, "--events"])
            .arg(&events)
            .args(extra)
            .output()
            .unwrap()
    };
    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("1 event was rejected with no expectation"),
        "{stderr}"
    );
    assert!(run(&["--allow-rejects"]).status.success());
}

/// `plugin push` is gated offline: a version that would be refused is
/// refused before anything connects (here, to a NATS that is not there).
#[test]
fn push_checks_the_version_before_it_connects() {
    let garbage = temp_file("not-a-component.wasm", "garbage");
    let output = switchyard()
        .args(["plugin", "push", "story-transitions"])
        .arg(&garbage)
        .args(["--nats", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("127.0.0.1:1"),
        "it tried to connect first: {stderr}"
    );

    // A version whose fixtures fail is refused the same way.
    let fixtures = temp_file(
        "wrong.fixtures.jsonl",
        "{\"subject\":\"s\",\"payload\":\"{oops\",\"expect\":\"ack\"}\n",
    );
    let output = switchyard()
        .args([
            "plugin",
            "push",
            "story-transitions",
            STORY_TRANSITIONS,
            "--fixtures",
        ])
        .arg(&fixtures)
        .args(["--nats", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("expected ack, got reject"), "{stderr}");
}

/// `switchyard wit --out DIR` writes the whole contract the binary serves:
/// every file of `wit/`, byte for byte.
#[test]
fn wit_writes_out_every_file_of_the_contract() {
    let out = std::env::temp_dir().join(format!("switchyard-wit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = switchyard()
        .args(["wit", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success());
    let wit = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit"));
    let mut names: Vec<String> = std::fs::read_dir(&wit)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, names, "every WIT file, and only those");
    for name in &names {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(wit.join(name)).unwrap(),
            "{name} differs"
        );
    }
    let printed = switchyard().arg("wit").output().unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).contains("world event-handler"));
}

#[test]
fn dev_refuses_a_directory_that_holds_no_plugin() {
    let dir = temp_file("not-a-plugin/notes.txt", "")
        .parent()
        .unwrap()
        .to_path_buf();
    let output = switchyard()
        .args(["dev", "--once"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds no plugin") && stderr.contains("Cargo.toml"),
        "{stderr}"
    );
}

#[test]
fn dev_asks_which_handler_when_the_configuration_has_several() {
    let plugin = temp_file("dev-plugin/Cargo.toml", "[package]\nname = \"p\"\n")
        .parent()
        .unwrap()
        .to_path_buf();
    let example = std::fs::read_to_string(example("switchyard.toml")).unwrap();
    let start = example.find("[[handlers]]").unwrap();
    let second = example[start..]
        .replace("name = \"story-transitions\"", "name = \"second\"")
        .replace("context-planning-story-transitions", "second")
        .replace("planning.story.transitioned", "planning.story.second");
    let config = temp_file("dev-two-handlers.toml", &format!("{example}\n{second}"));
    let output = switchyard()
        .args(["dev", "--once"])
        .arg(&plugin)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 handlers (story-transitions, second): say which with --handler"),
        "{stderr}"
    );
}
