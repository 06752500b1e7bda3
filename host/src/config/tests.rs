//! Configuration parsing, overrides and validation.

use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"
stream = "PLANNING_EVENTS"
stream_subjects = ["planning.>"]

[cache]
url = "redis://127.0.0.1:6379/0"

[graph]
url = "bolt://127.0.0.1:7687"
user = "neo4j"
password = "secret"

[[handlers]]
name = "story-transitions"
plugin = "story_transitions.wasm"
subjects = ["planning.story.transitioned"]
durable = "context-planning-story-transitions"
max_deliver = 20

[handlers.config]
key_prefix = "context:"
"#;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        "test.toml",
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn accepts_the_documented_shape_with_defaults() {
    let config = parse(MINIMAL, &[]).unwrap();
    let handler = &config.handlers[0];
    assert_eq!(handler.max_deliver, 20);
    assert_eq!(handler.concurrency, 16);
    assert_eq!(handler.ack_wait, Duration::from_secs(30));
    assert_eq!(handler.config["key_prefix"], "context:");
    assert_eq!(config.nats.dead_letter_stream, "SWITCHYARD_DEAD_LETTERS");
}

#[test]
fn refuses_unknown_key_naming_it() {
    let text = MINIMAL.replace("[cache]", "[cache]\nurll = \"x\"");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.starts_with("config key `cache"), "{error}");
    assert!(error.contains("unknown field `urll`"), "{error}");
}

#[test]
fn refuses_wrong_type_naming_the_key() {
    let text = MINIMAL.replace("max_deliver = 20", "max_deliver = \"lots\"");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `handlers[0].max_deliver`: invalid type"),
        "{error}"
    );
}

#[test]
fn refuses_out_of_range_value_naming_the_key() {
    let text = MINIMAL.replace("max_deliver = 20", "concurrency = 0");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert_eq!(
        error,
        "config key `handlers[0].concurrency`: must be between 1 and 4096"
    );
}

#[test]
fn environment_overrides_values_at_any_depth() {
    let config = parse(
        MINIMAL,
        &[
            ("SWITCHYARD_NATS__URL", "nats://10.0.0.1:4222"),
            ("SWITCHYARD_GRAPH__PASSWORD", "from-env"),
            ("SWITCHYARD_HANDLERS__0__CONCURRENCY", "4"),
            ("SWITCHYARD_HANDLERS__0__CONFIG__KEY_PREFIX", "ctx:"),
            ("SWITCHYARD_TEST_NATS_URL", "ignored: no double underscore"),
        ],
    )
    .unwrap();
    assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
    assert_eq!(config.graph.password, "from-env");
    assert_eq!(config.handlers[0].concurrency, 4);
    assert_eq!(config.handlers[0].config["key_prefix"], "ctx:");
}

#[test]
fn refuses_bad_override_naming_the_variable() {
    let error = parse(MINIMAL, &[("SWITCHYARD_CACHE__PORT", "1")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `port`"), "{error}");
    let error = parse(MINIMAL, &[("SWITCHYARD_HANDLERS__7__NAME", "x")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("SWITCHYARD_HANDLERS__7__NAME"), "{error}");
}

#[test]
fn refuses_handler_subject_outside_the_stream() {
    let text = MINIMAL.replace(
        "subjects = [\"planning.story.transitioned\"]",
        "subjects = [\"billing.x\"]",
    );
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `handlers[0].subjects`"),
        "{error}"
    );
}

#[test]
fn refuses_two_handlers_on_one_durable_naming_both() {
    let second = r#"
[[handlers]]
name = "story-audit"
plugin = "audit.wasm"
subjects = ["planning.story.created"]
durable = "context-planning-story-transitions"
"#;
    let error = parse(&format!("{MINIMAL}{second}"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("config key `handlers[1].durable`"),
        "{error}"
    );
    assert!(error.contains("`story-transitions`"), "{error}");
    assert!(error.contains("`story-audit`"), "{error}");
}

#[test]
fn refuses_cache_credentials_and_certificates_that_cannot_work_naming_the_key() {
    let cases = [
        (
            "url = \"redis://127.0.0.1:6379/0\"\npassword = \"a\"\npassword_file = \"p\"",
            "cache.password_file",
        ),
        (
            "url = \"redis://127.0.0.1:6379/0\"\nca_file = \"ca.crt\"",
            "cache.ca_file",
        ),
        (
            "url = \"rediss://127.0.0.1:6380/0\"\ncert_file = \"client.crt\"",
            "cache.key_file",
        ),
        (
            "url = \"redis://127.0.0.1:6379/0\"\ninsecure = true",
            "cache.insecure",
        ),
        (
            "url = \"rediss://127.0.0.1:6380/0\"\ninsecure = true\nca_file = \"ca.crt\"",
            "cache.insecure",
        ),
    ];
    for (cache, key) in cases {
        let text = MINIMAL.replace("url = \"redis://127.0.0.1:6379/0\"", cache);
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.starts_with(&format!("config key `{key}`")), "{error}");
    }
    let text = MINIMAL.replace(
        "url = \"redis://127.0.0.1:6379/0\"",
        "url = \"rediss://127.0.0.1:6380/0\"\nuser = \"switchyard\"\npassword_file = \"p\"\nca_file = \"ca.crt\"\ncert_file = \"c.crt\"\nkey_file = \"c.key\"",
    );
    let config = parse(&text, &[]).unwrap();
    let shown = format!("{:?} {:?}", config.cache, config.graph);
    assert!(
        !shown.contains("secret"),
        "a password in Debug output: {shown}"
    );
}

#[test]
fn a_cluster_is_a_list_of_seed_nodes_of_one_scheme_and_inconsistent_lists_are_refused() {
    let cache = |lines: &str| MINIMAL.replace("url = \"redis://127.0.0.1:6379/0\"", lines);
    let config = parse(
        &cache("url = \"redis://127.0.0.1:7101, redis://127.0.0.1:7102,redis://127.0.0.1:7103\"\ncluster = true"),
        &[],
    )
    .unwrap();
    assert!(config.cache.cluster);
    let tls = cache(
        "url = \"rediss://u:pw@a:7101/0,rediss://u:pw@b:7102\"\ncluster = true\nca_file = \"ca.crt\"",
    );
    let config = parse(&tls, &[]).unwrap();
    let shown = format!("{:?}", config.cache);
    assert!(!shown.contains("pw"), "a password in Debug output: {shown}");
    let refused = [
        (
            "url = \"redis://a:7101,redis://b:7102\"",
            "lists several servers; set `cluster = true`",
        ),
        (
            "url = \"redis://a:7101,rediss://b:7102\"\ncluster = true",
            "mixes redis:// and rediss://",
        ),
        (
            "url = \"redis://a:7101,,redis://b:7102\"\ncluster = true",
            "an empty entry",
        ),
        (
            "url = \"memory://\"\ncluster = true",
            "redis:// or rediss:// URLs",
        ),
        (
            "url = \"redis://a:7101/0,redis://b:7102/3\"\ncluster = true",
            "same credentials and database",
        ),
        (
            "url = \"redis://u:x@a:7101,redis://b:7102\"\ncluster = true",
            "same credentials and database",
        ),
        ("url = \"redis://:7101\"\ncluster = true", "names no host"),
        (
            "url = \"redis://a:7101,redis://b:7102\"\ncluster = true\nca_file = \"ca.crt\"",
            "rediss://",
        ),
    ];
    for (lines, why) in refused {
        let error = parse(&cache(lines), &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `cache."), "{lines}: {error}");
        assert!(error.contains(why), "{lines}: {error}");
    }
    let error = parse(
        &cache("url = \"redis://u:secret@a:1,memcached://u:secret@b:2\"\ncluster = true"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(!error.contains("secret"), "a password in an error: {error}");
}

#[test]
fn refuses_dead_letters_inside_the_source_stream() {
    let text = MINIMAL.replace(
        "stream_subjects = [\"planning.>\"]",
        "stream_subjects = [\">\"]",
    );
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.contains("nats.dead_letter_subject"), "{error}");
}

#[test]
fn refuses_a_control_subject_inside_the_source_stream() {
    let text = MINIMAL.replace(
        "stream_subjects = [\"planning.>\"]",
        "stream_subjects = [\"planning.>\"]\ncontrol_subject = \"planning.control\"",
    );
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `nats.control_subject`")
            && error.contains("`planning.>` covers `planning.control.status`"),
        "{error}"
    );
}

#[test]
fn refuses_unknown_url_scheme() {
    let text = MINIMAL.replace("redis://127.0.0.1:6379/0", "memcached://x");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.starts_with("config key `cache.url`"), "{error}");
}

#[test]
fn plugin_retry_delay_is_clamped_to_retry_max() {
    let retry = RetryConfig {
        base: Duration::from_millis(100),
        max: Duration::from_secs(60),
        jitter: 0.0,
    };
    let max = Duration::from_secs(60);
    assert_eq!(retry.requested(Duration::ZERO), Duration::ZERO);
    assert_eq!(retry.requested(max), max);
    assert_eq!(retry.requested(max + Duration::from_millis(1)), max);
    assert_eq!(retry.requested(Duration::from_millis(u64::MAX)), max);
    assert_eq!(
        retry.requested(Duration::from_millis(9_300_000_000_000)),
        max
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let retry = RetryConfig {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.0,
    };
    assert_eq!(retry.delay(1), Duration::from_millis(100));
    assert_eq!(retry.delay(3), Duration::from_millis(400));
    assert_eq!(retry.delay(40), Duration::from_secs(1));
}

#[test]
fn grants_default_to_nothing_and_are_read_from_the_table() {
    let config = parse(MINIMAL, &[]).unwrap();
    assert_eq!(
        config.handlers[0].grants,
        crate::grant::GrantsConfig::default()
    );
    assert!(config.handlers[0].grants.cache_keys.is_empty());
    let text = format!(
        "{MINIMAL}\n[handlers.grants]\ncache_keys = [\"context:*\"]\nmax_delete_keys = 500\ngraph_labels = [\"PhaseTransition\"]\n"
    );
    let grants = &parse(&text, &[]).unwrap().handlers[0].grants;
    assert_eq!(grants.cache_keys, ["context:*"]);
    assert_eq!(grants.max_delete_keys, 500);
    assert_eq!(grants.graph_labels, ["PhaseTransition"]);
    assert!(grants.graph_relations.is_empty());
    let overridden = parse(
        MINIMAL,
        &[(
            "SWITCHYARD_HANDLERS__0__GRANTS__CACHE_KEYS",
            "[\"ctx:*\", \"x\"]",
        )],
    )
    .unwrap();
    assert_eq!(overridden.handlers[0].grants.cache_keys, ["ctx:*", "x"]);
}

#[test]
fn refuses_bad_grants_naming_the_key() {
    let text =
        format!("{MINIMAL}\n[handlers.grants]\ngraph_labels = [\"A`) DETACH DELETE n //\"]\n");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `handlers[0].grants.graph_labels`: label"),
        "{error}"
    );
    let text = format!("{MINIMAL}\n[handlers.grants]\nmax_delete_keys = 0\n");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `handlers[0].grants.max_delete_keys`"),
        "{error}"
    );
    let text = format!("{MINIMAL}\n[handlers.grants]\ncache_key = [\"x\"]\n");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.contains("unknown field `cache_key`"), "{error}");
}

#[test]
fn order_key_is_one_pointer_or_a_list_and_drain_grace_has_a_default() {
    let config = parse(MINIMAL, &[]).unwrap();
    assert!(config.handlers[0].order_key.is_empty());
    assert_eq!(config.handlers[0].order_key_subject_token, None);
    assert_eq!(config.handlers[0].drain_grace, Duration::from_secs(20));
    let text = MINIMAL.replace(
        "max_deliver = 20",
        "order_key = \"/story_id\"\ndrain_grace = \"3s\"",
    );
    let handler = &parse(&text, &[]).unwrap().handlers[0];
    assert_eq!(handler.order_key, ["/story_id"]);
    assert_eq!(handler.drain_grace, Duration::from_secs(3));
    let text = MINIMAL.replace(
        "max_deliver = 20",
        "order_key = [\"/payload/story_id\", \"/story_id\"]",
    );
    assert_eq!(
        parse(&text, &[]).unwrap().handlers[0].order_key,
        ["/payload/story_id", "/story_id"]
    );
    let text = MINIMAL.replace("max_deliver = 20", "order_key_subject_token = 2");
    assert_eq!(
        parse(&text, &[]).unwrap().handlers[0].order_key_subject_token,
        Some(2)
    );
    let overridden = parse(
        MINIMAL,
        &[("SWITCHYARD_HANDLERS__0__ORDER_KEY", "/story_id")],
    )
    .unwrap();
    assert_eq!(overridden.handlers[0].order_key, ["/story_id"]);
}

#[test]
fn refuses_bad_order_keys_and_drain_grace_naming_the_key() {
    let cases = [
        (
            "order_key = \"story_id\"",
            "config key `handlers[0].order_key`: JSON pointer `story_id` must start with `/`",
        ),
        ("order_key = \"/a~2\"", "config key `handlers[0].order_key`"),
        (
            "order_key = \"\"",
            "config key `handlers[0].order_key`: the empty pointer",
        ),
        (
            "order_key = \"/a\"\norder_key_subject_token = 1",
            "config key `handlers[0].order_key`: set either",
        ),
        (
            "order_key_subject_token = 256",
            "config key `handlers[0].order_key_subject_token`",
        ),
        (
            "order_key_subject_token = -1",
            "config key `handlers[0].order_key_subject_token`",
        ),
        (
            "drain_grace = \"2h\"",
            "config key `handlers[0].drain_grace`: must be at most 1h",
        ),
        (
            "drain_grace = \"soon\"",
            "config key `handlers[0].drain_grace`",
        ),
    ];
    for (line, expected) in cases {
        let text = MINIMAL.replace("max_deliver = 20", line);
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{line}: {error}");
    }
}

#[test]
fn a_partitioned_handler_takes_its_key_from_one_subject_token() {
    let text = MINIMAL
        .replace(
            "subjects = [\"planning.story.transitioned\"]",
            "subjects = [\"planning.story.*.transitioned\"]",
        )
        .replace(
            "max_deliver = 20",
            "max_deliver = 20\norder_key_subject_token = 2\npartitions = 12",
        )
        .replace("[nats]", "[nats]\nreplicas = 3");
    let config = parse(&text, &[]).unwrap();
    assert_eq!(config.handlers[0].partitions, Some(12));
    assert_eq!(config.nats.replicas, 3);
    assert_eq!(parse(MINIMAL, &[]).unwrap().nats.replicas, 1);
}

#[test]
fn refuses_partitions_without_a_subject_key_naming_the_key() {
    let keyed = "subjects = [\"planning.story.*.transitioned\"]";
    let cases = [
        (
            keyed,
            "partitions = 4",
            "config key `handlers[0].partitions`: partitioned handlers need the key in the \
             subject; set order_key_subject_token",
        ),
        (
            keyed,
            "partitions = 4\norder_key = \"/story_id\"",
            "config key `handlers[0].partitions`: partitioned handlers need the key in the \
             subject; order_key reads the payload",
        ),
        (
            keyed,
            "partitions = 4\norder_key_subject_token = 1",
            "config key `handlers[0].subjects`: `planning.story.*.transitioned`: token 1 \
             (`story`) carries the key, so it must be `*`",
        ),
        (
            "subjects = [\"planning.>\"]",
            "partitions = 4\norder_key_subject_token = 1",
            "config key `handlers[0].subjects`: `planning.>`: a partitioned subject cannot end in `>`",
        ),
        (
            keyed,
            "partitions = 0\norder_key_subject_token = 2",
            "config key `handlers[0].partitions`: 0: must be between 1 and 1024",
        ),
        (
            keyed,
            "partitions = 4\norder_key_subject_token = 2\nexclusive = true",
            "config key `handlers[0].exclusive`: a partitioned handler",
        ),
    ];
    for (subjects, line, expected) in cases {
        let text = MINIMAL
            .replace("subjects = [\"planning.story.transitioned\"]", subjects)
            .replace("max_deliver = 20", line);
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{line}: {error}");
    }
    let text = MINIMAL.replace("[nats]", "[nats]\nreplicas = 7");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        error.starts_with("config key `nats.replicas`: 7 copies: must be between 1 and 5"),
        "{error}"
    );
}

#[test]
fn subject_filters_cover_and_match() {
    assert!(covers("planning.>", "planning.story.transitioned"));
    assert!(covers("planning.*.x", "planning.a.x"));
    assert!(!covers("planning.*", "planning.>"));
    assert!(subject_matches(">", "switchyard.dead.x"));
    assert!(!subject_matches("planning.>", "switchyard.dead.x"));
}

#[test]
fn unreadable_config_file_prints_the_os_error_once() {
    let error = Config::load(Path::new("/nonexistent/switchyard.toml")).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert_eq!(
        chain.matches("No such file or directory").count(),
        1,
        "{chain}"
    );
}

#[test]
fn list_in_handler_config_is_refused_naming_the_key_and_the_accepted_types() {
    let text = MINIMAL.replace("key_prefix = \"context:\"", "key_prefix = [\"a\", \"b\"]");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.contains("handlers"), "{error}");
    assert!(error.contains("`key_prefix` is array"), "{error}");
    assert!(
        error.contains("string, integer, float or boolean"),
        "{error}"
    );
    assert!(!error.contains("untagged"), "{error}");
}

fn with_nats(lines: &str) -> String {
    MINIMAL.replace(
        "stream_subjects = [\"planning.>\"]",
        &format!("stream_subjects = [\"planning.>\"]\n{lines}"),
    )
}

#[test]
fn nats_tls_and_each_authentication_are_accepted() {
    for lines in [
        "ca_file = \"ca.crt\"\ncert_file = \"c.crt\"\nkey_file = \"c.key\"\ntls_first = true",
        "user = \"switchyard\"\npassword_file = \"/run/secrets/nats-password\"",
        "token_file = \"/run/secrets/nats-token\"",
        "nkey_seed_file = \"/run/secrets/user.nk\"",
        "creds_file = \"/run/secrets/user.creds\"",
    ] {
        parse(&with_nats(lines), &[]).unwrap_or_else(|e| panic!("{lines}: {e}"));
    }
}

#[test]
fn two_nats_authentications_are_refused_naming_the_second() {
    let text = with_nats("token = \"t\"\ncreds_file = \"user.creds\"");
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.starts_with("config key `nats.creds_file`"), "{error}");
    assert!(error.contains("`token` is set already"), "{error}");
}

#[test]
fn nats_secrets_from_two_places_or_half_a_pair_are_refused_naming_the_key() {
    for (lines, key) in [
        ("token = \"t\"\ntoken_file = \"f\"", "nats.token_file"),
        (
            "nkey_seed = \"SU\"\nnkey_seed_file = \"f\"",
            "nats.nkey_seed_file",
        ),
        ("user = \"u\"", "nats.password"),
        ("password = \"p\"", "nats.user"),
        ("cert_file = \"c.crt\"", "nats.key_file"),
    ] {
        let error = parse(&with_nats(lines), &[]).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("config key `{key}`")),
            "{lines}: {error}"
        );
    }
}

#[test]
fn every_url_of_a_nats_server_list_is_checked() {
    let text = MINIMAL.replace(
        "url = \"nats://127.0.0.1:4222\"",
        "url = \"nats://n1:4222, tls://n2:4222\"",
    );
    parse(&text, &[]).unwrap();
    let text = MINIMAL.replace(
        "url = \"nats://127.0.0.1:4222\"",
        "url = \"nats://n1:4222,http://n2:4222\"",
    );
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.starts_with("config key `nats.url`"), "{error}");
}

#[test]
fn graph_tls_urls_are_accepted_and_a_ca_needs_one() {
    for scheme in ["bolt+s", "bolt+ssc", "neo4j+s", "neo4j+ssc"] {
        let text = MINIMAL.replace(
            "url = \"bolt://127.0.0.1:7687\"",
            &format!("url = \"{scheme}://db:7687\"\nca_file = \"ca.crt\""),
        );
        parse(&text, &[]).unwrap_or_else(|e| panic!("{scheme}: {e}"));
    }
    let text = MINIMAL.replace(
        "url = \"bolt://127.0.0.1:7687\"",
        "url = \"bolt://db:7687\"\nca_file = \"ca.crt\"",
    );
    let error = parse(&text, &[]).unwrap_err().to_string();
    assert!(error.starts_with("config key `graph.ca_file`"), "{error}");
}

#[test]
fn graph_write_transactions_default_to_four_and_out_of_range_is_refused_naming_the_key() {
    assert_eq!(parse(MINIMAL, &[]).unwrap().graph.write_transactions, 4);
    let at = |n: &str| {
        MINIMAL.replace(
            "url = \"bolt://127.0.0.1:7687\"",
            &format!("url = \"bolt://127.0.0.1:7687\"\nwrite_transactions = {n}"),
        )
    };
    assert_eq!(parse(&at("8"), &[]).unwrap().graph.write_transactions, 8);
    for n in ["0", "65"] {
        let error = parse(&at(n), &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `graph.write_transactions`: ")
                && error.contains("between 1 and 64"),
            "{n}: {error}"
        );
    }
}

#[test]
fn nats_debug_output_hides_every_secret() {
    let text = with_nats("user = \"u\"\npassword = \"pw-9d2e\"")
        .replace("nats://127.0.0.1:4222", "nats://u:url-pw-41@127.0.0.1:4222");
    let config = parse(&text, &[]).unwrap();
    let printed = format!("{:?}", config.nats);
    assert!(
        !printed.contains("pw-9d2e") && !printed.contains("url-pw-41"),
        "{printed}"
    );
    let mut token = config.nats.clone();
    token.password = None;
    token.user = None;
    token.token = Some("tok-77".into());
    token.nkey_seed = Some("SUseed-55".into());
    let printed = format!("{token:?}");
    assert!(
        !printed.contains("tok-77") && !printed.contains("SUseed-55"),
        "{printed}"
    );
}

#[test]
fn switchyard_unset_removes_keys_so_defaults_apply_and_names_a_key_that_is_not_there() {
    let text = MINIMAL.replace("max_deliver = 20", "max_deliver = 20\nconcurrency = 3");
    let config = parse(&text, &[("SWITCHYARD_UNSET", "handlers.0.concurrency")]).unwrap();
    assert_eq!(config.handlers[0].concurrency, 16, "back to the default");
    // After the overrides: an override and an unset of one key leave it unset.
    let config = parse(
        &text,
        &[
            ("SWITCHYARD_HANDLERS__0__CONCURRENCY", "5"),
            ("SWITCHYARD_UNSET", " handlers.0.concurrency ,"),
        ],
    )
    .unwrap();
    assert_eq!(config.handlers[0].concurrency, 16);
    for key in [
        "handlers.0.concurency",
        "handlers.7.concurrency",
        "nats.url.x",
    ] {
        let error = parse(&text, &[("SWITCHYARD_UNSET", key)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SWITCHYARD_UNSET") && error.contains(&format!("`{key}`")),
            "{error}"
        );
    }
}
