//! `transition::parse`: every accepted shape and every rule's rejection,
//! by the reason the event is dead-lettered with.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use story_transitions::transition::{EVENT_TYPES, Transition, parse};

fn ok(payload: &str) -> Transition {
    match parse(payload.as_bytes()) {
        Ok(t) => t,
        Err(r) => panic!("expected a transition from {payload}, got: {r}"),
    }
}

fn reason(payload: impl AsRef<[u8]>) -> String {
    match parse(payload.as_ref()) {
        Ok(t) => panic!("expected a rejection, got {t:?}"),
        Err(r) => r.to_string(),
    }
}

fn transition(story_id: &str, from: Option<&str>, to: Option<&str>, timestamp: &str) -> Transition {
    Transition {
        story_id: story_id.to_owned(),
        from_phase: from.map(str::to_owned),
        to_phase: to.map(str::to_owned),
        timestamp: timestamp.to_owned(),
    }
}

fn wrong_type(field: &str, expected: &str, found: &str) -> String {
    format!("field `{field}` must be {expected}, found {found}")
}

const PLANNING: &str = r#"{"event_type":"story.transitioned","story_id":"S-1","from_state":"design","to_state":"build","transitioned_by":"ana","timestamp":"2025-01-01T00:00:00Z"}"#;

// --- accepted shapes -------------------------------------------------------

#[test]
fn parses_flat_payload() {
    let t = ok(
        r#"{"story_id":"STRESS-NEO-0001","from_phase":"design","to_phase":"build","timestamp":"2025-01-01T00:00:00Z"}"#,
    );
    assert_eq!(
        t,
        transition(
            "STRESS-NEO-0001",
            Some("design"),
            Some("build"),
            "2025-01-01T00:00:00Z"
        )
    );
    assert_eq!(t.node_id(), "STRESS-NEO-0001:2025-01-01T00:00:00Z");
}

#[test]
fn parses_planning_service_payload() {
    assert_eq!(
        ok(PLANNING),
        transition("S-1", Some("design"), Some("build"), "2025-01-01T00:00:00Z")
    );
}

#[test]
fn parses_envelope_around_planning_payload() {
    let payload = format!(
        r#"{{"event_type":"planning.story.transitioned","payload":{PLANNING},"idempotency_key":"k","correlation_id":"c","timestamp":"2025-01-02T00:00:00Z","producer":"planning","metadata":{{"a":[1,2,{{"b":null}}]}}}}"#
    );
    // The inner timestamp wins over the envelope's.
    assert_eq!(
        ok(&payload),
        transition("S-1", Some("design"), Some("build"), "2025-01-01T00:00:00Z")
    );
}

#[test]
fn parses_envelope_around_flat_payload() {
    let t = ok(
        r#"{"event_type":"planning.story.transitioned","payload":{"story_id":"S-2","from_phase":"a","to_phase":"b","timestamp":"t1"},"timestamp":"t2"}"#,
    );
    assert_eq!(t, transition("S-2", Some("a"), Some("b"), "t1"));
}

#[test]
fn uses_envelope_timestamp_when_inner_payload_has_none() {
    let t =
        ok(r#"{"payload":{"story_id":"S-3","to_phase":"b"},"timestamp":"2025-03-03T00:00:00Z"}"#);
    assert_eq!(
        t,
        transition("S-3", None, Some("b"), "2025-03-03T00:00:00Z")
    );
    let t = ok(r#"{"payload":{"story_id":"S-3","timestamp":null},"timestamp":7}"#);
    assert_eq!(t.timestamp, "7");
}

#[test]
fn accepts_story_id_and_phases_on_the_envelope_when_they_agree() {
    let t = ok(
        r#"{"story_id":"S-4","to_phase":"b","payload":{"story_id":"S-4","from_state":"a","timestamp":"t"}}"#,
    );
    assert_eq!(t, transition("S-4", Some("a"), Some("b"), "t"));
    let t = ok(r#"{"story_id":"S-4","payload":{"timestamp":"t"}}"#);
    assert_eq!(t.story_id, "S-4");
}

#[test]
fn accepts_missing_and_null_phases_as_none() {
    assert_eq!(
        ok(r#"{"story_id":"S","timestamp":"t"}"#),
        transition("S", None, None, "t")
    );
    assert_eq!(
        ok(r#"{"story_id":"S","from_phase":null,"to_state":null,"timestamp":"t"}"#),
        transition("S", None, None, "t")
    );
}

#[test]
fn accepts_phase_and_state_names_that_agree() {
    let t = ok(
        r#"{"story_id":"S","from_phase":"a","from_state":"a","to_phase":null,"to_state":"b","timestamp":"t"}"#,
    );
    assert_eq!(t, transition("S", Some("a"), Some("b"), "t"));
}

#[test]
fn keeps_numeric_timestamps_as_spelled() {
    assert_eq!(ok(r#"{"story_id":"S","timestamp":1E2}"#).timestamp, "1E2");
    assert_eq!(
        ok(r#"{"story_id":"S","timestamp": 1e-7 }"#).timestamp,
        "1e-7"
    );
    let two_64 = ok(r#"{"story_id":"S","timestamp":18446744073709551616}"#);
    let two_64_plus_1 = ok(r#"{"story_id":"S","timestamp":18446744073709551617}"#);
    assert_eq!(two_64.timestamp, "18446744073709551616");
    assert_eq!(two_64_plus_1.timestamp, "18446744073709551617");
    assert_ne!(two_64.node_id(), two_64_plus_1.node_id());
}

#[test]
fn keeps_numeric_timestamps_in_their_json_spelling() {
    for spelled in ["1700000000000", "-5", "1700000000.25", "1.0"] {
        let payload = format!(r#"{{"story_id":"S","timestamp":{spelled}}}"#);
        assert_eq!(ok(&payload).timestamp, spelled);
    }
}

#[test]
fn keeps_timestamp_text_verbatim() {
    let t = ok(r#"{"story_id":"S","timestamp":" 2025-01-01T00:00:00+02:00 "}"#);
    assert_eq!(t.timestamp, " 2025-01-01T00:00:00+02:00 ");
}

#[test]
fn parses_the_same_transition_identically_on_every_delivery() {
    let payload = br#"{"payload":{"story_id":"S"},"timestamp":"t"}"#;
    assert_eq!(parse(payload), parse(payload));
    assert_eq!(parse(payload).map(|t| t.node_id()), Ok("S:t".to_owned()));
}

#[test]
fn ignores_unknown_fields_of_any_type() {
    let t = ok(
        r#"{"story_id":"S","timestamp":"t","transitioned_by":{"x":[1,true,null]},"extra":[[]],"n":1e300}"#,
    );
    assert_eq!(t, transition("S", None, None, "t"));
}

#[test]
fn keeps_story_id_verbatim_including_glob_specials_and_unicode() {
    for id in ["*", "a?b", "[x]", "back\\slash", "ñandú 🦀", " padded "] {
        let payload = serde_json::json!({"story_id": id, "timestamp": "t"}).to_string();
        assert_eq!(ok(&payload).story_id, id);
    }
    assert_eq!(
        ok(r#"{"story_id":"\u0041\n","timestamp":"t"}"#).story_id,
        "A\n"
    );
    assert_eq!(ok(r#"{"story\u005fid":"S","timestamp":"t"}"#).story_id, "S");
}

#[test]
fn accepts_json_whitespace_around_the_object() {
    assert_eq!(
        ok(" \r\n\t{\"story_id\":\"S\",\"timestamp\":\"t\"}\n ").story_id,
        "S"
    );
}

// --- rejections: bytes and syntax --------------------------------------------

#[test]
fn rejects_empty_payload() {
    assert_eq!(reason(b""), "payload is empty");
    assert_eq!(reason(b" \n\t\r"), "payload is empty");
}

#[test]
fn rejects_non_utf8_payload_with_byte_offset() {
    let mut payload = br#"{"story_id":"S"#.to_vec();
    payload.push(0xff);
    payload.extend_from_slice(br#"","timestamp":"t"}"#);
    assert_eq!(
        reason(&payload),
        "payload is not valid UTF-8: invalid byte sequence at byte offset 14"
    );
    // A truncated multi-byte sequence at the end.
    assert_eq!(
        reason([b'{', 0xe2, 0x82]),
        "payload is not valid UTF-8: invalid byte sequence at byte offset 1"
    );
}

#[test]
fn rejects_byte_order_mark() {
    assert_eq!(
        reason("\u{feff}{\"story_id\":\"S\",\"timestamp\":\"t\"}"),
        "payload starts with a UTF-8 byte-order mark, which JSON does not allow"
    );
}

#[test]
fn rejects_invalid_json_with_line_and_column() {
    assert_eq!(
        reason("{\n  \"story_id\": \"S\",\n  oops\n}"),
        "payload is not valid JSON: key must be a string at line 3 column 3"
    );
    assert_eq!(
        reason(r#"{"story_id":"S""#),
        "payload is not valid JSON: EOF while parsing an object at line 1 column 15"
    );
}

#[test]
fn rejects_trailing_data_after_the_object() {
    assert_eq!(
        reason(r#"{"story_id":"S","timestamp":"t"} {}"#),
        "payload is not valid JSON: trailing characters at line 1 column 34"
    );
}

#[test]
fn rejects_invalid_json_inside_ignored_fields() {
    let r = reason(r#"{"story_id":"S","timestamp":"t","metadata":[1,}"#);
    assert!(r.starts_with("payload is not valid JSON: "), "{r}");
}

#[test]
fn rejects_numbers_and_strings_serde_json_refuses_in_known_fields() {
    let r = reason(r#"{"story_id":1e400,"timestamp":"t"}"#);
    assert_eq!(
        r,
        "payload is not valid JSON: number out of range at line 1 column 17"
    );
    let r = reason(r#"{"story_id":"\ud800","timestamp":"t"}"#);
    assert_eq!(
        r,
        "payload is not valid JSON: unexpected end of hex escape at line 1 column 20"
    );
}

#[test]
fn rejects_payload_that_is_not_an_object_naming_its_type() {
    for (payload, found) in [
        ("null", "null"),
        ("true", "a boolean"),
        ("42", "a number"),
        ("-1.5", "a number"),
        (r#""story""#, "a string"),
        (r#"[{"story_id":"S","timestamp":"t"}]"#, "an array"),
    ] {
        assert_eq!(
            reason(payload),
            format!("payload must be a JSON object, found {found}"),
            "{payload}"
        );
    }
}

// --- rejections: story_id ----------------------------------------------------

#[test]
fn rejects_payload_without_story_id() {
    assert_eq!(
        reason(r#"{"from_phase":"a","to_phase":"b","timestamp":"t"}"#),
        "missing `story_id`"
    );
}

#[test]
fn rejects_envelope_without_story_id() {
    assert_eq!(
        reason(r#"{"payload":{"to_phase":"b"},"timestamp":"t"}"#),
        "missing `payload.story_id`"
    );
}

#[test]
fn rejects_empty_story_id() {
    assert_eq!(
        reason(r#"{"story_id":"","timestamp":"t"}"#),
        "field `story_id` is empty"
    );
    assert_eq!(
        reason(r#"{"payload":{"story_id":""},"timestamp":"t"}"#),
        "field `payload.story_id` is empty"
    );
}

#[test]
fn rejects_story_id_that_is_not_a_string() {
    for (value, found) in [
        ("42", "a number"),
        ("null", "null"),
        ("false", "a boolean"),
        (r#"["S"]"#, "an array"),
        (r#"{"id":"S"}"#, "an object"),
    ] {
        let payload = format!(r#"{{"story_id":{value},"timestamp":"t"}}"#);
        assert_eq!(
            reason(&payload),
            wrong_type("story_id", "a string", found),
            "{payload}"
        );
    }
    assert_eq!(
        reason(r#"{"story_id":42,"timestamp":"t"}"#),
        "field `story_id` must be a string, found a number"
    );
}

#[test]
fn rejects_a_story_id_holding_the_key_separator() {
    assert_eq!(
        reason(r#"{"story_id":"S-1:dev","timestamp":"t"}"#),
        "field `story_id` (\"S-1:dev\") contains `:`, the separator of a story's cache keys (`<prefix><story_id>:<part>`) and node ids (`<story_id>:<timestamp>`): its keys and node would be another story's"
    );
    let r = reason(r#"{"payload":{"story_id":":"},"timestamp":"t"}"#);
    assert!(
        r.starts_with("field `payload.story_id` (\":\") contains `:`"),
        "{r}"
    );
}

#[test]
fn rejects_envelope_and_payload_story_ids_that_disagree() {
    assert_eq!(
        reason(r#"{"story_id":"S-1","payload":{"story_id":"S-2","timestamp":"t"}}"#),
        r#"fields `payload.story_id` ("S-2") and `story_id` ("S-1") disagree"#
    );
}

// --- rejections: phases --------------------------------------------------------

#[test]
fn rejects_phases_of_the_wrong_type() {
    for field in ["from_phase", "to_phase", "from_state", "to_state"] {
        for (value, found) in [
            ("1", "a number"),
            ("true", "a boolean"),
            ("[]", "an array"),
            ("{}", "an object"),
        ] {
            let payload = format!(r#"{{"story_id":"S","timestamp":"t","{field}":{value}}}"#);
            assert_eq!(
                reason(&payload),
                wrong_type(field, "a string or null", found),
                "{payload}"
            );
        }
    }
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S","to_state":7},"timestamp":"t"}"#),
        "field `payload.to_state` must be a string or null, found a number"
    );
}

#[test]
fn rejects_phase_and_state_that_disagree() {
    assert_eq!(
        reason(r#"{"story_id":"S","from_phase":"a","from_state":"b","timestamp":"t"}"#),
        r#"fields `from_phase` ("a") and `from_state` ("b") disagree"#
    );
}

#[test]
fn rejects_envelope_and_payload_phases_that_disagree() {
    assert_eq!(
        reason(r#"{"to_phase":"x","payload":{"story_id":"S","to_state":"y","timestamp":"t"}}"#),
        r#"fields `payload.to_state` ("y") and `to_phase` ("x") disagree"#
    );
}

// --- rejections: timestamp -----------------------------------------------------

#[test]
fn rejects_payload_without_timestamp() {
    let missing =
        "missing `timestamp`: a transition needs a timestamp to name its PhaseTransition node";
    assert_eq!(reason(r#"{"story_id":"S","to_phase":"b"}"#), missing);
    assert_eq!(reason(r#"{"story_id":"S","timestamp":null}"#), missing);
}

#[test]
fn rejects_envelope_without_any_timestamp() {
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S"},"timestamp":null}"#),
        "missing `payload.timestamp`: a transition needs a timestamp to name its PhaseTransition node"
    );
}

#[test]
fn rejects_empty_timestamp() {
    assert_eq!(
        reason(r#"{"story_id":"S","timestamp":""}"#),
        "field `timestamp` is empty"
    );
    // An empty inner timestamp is an error, not a reason to fall back.
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S","timestamp":""},"timestamp":"t"}"#),
        "field `payload.timestamp` is empty"
    );
}

#[test]
fn rejects_timestamp_of_the_wrong_type() {
    for (value, found) in [
        ("true", "a boolean"),
        ("[1]", "an array"),
        (r#"{"s":1}"#, "an object"),
    ] {
        let payload = format!(r#"{{"story_id":"S","timestamp":{value}}}"#);
        assert_eq!(
            reason(&payload),
            wrong_type("timestamp", "a string or a number", found),
            "{payload}"
        );
    }
    // The envelope's timestamp is checked even when the inner one wins.
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S","timestamp":"t"},"timestamp":false}"#),
        wrong_type("timestamp", "a string or a number", "a boolean")
    );
}

// --- rejections: envelope and event_type ---------------------------------------

#[test]
fn rejects_envelope_payload_that_is_not_an_object() {
    for (value, found) in [
        ("null", "null"),
        ("1", "a number"),
        (r#""{\"story_id\":\"S\"}""#, "a string"),
        ("[]", "an array"),
        ("true", "a boolean"),
    ] {
        let payload = format!(r#"{{"payload":{value},"story_id":"S","timestamp":"t"}}"#);
        assert_eq!(
            reason(&payload),
            format!("envelope field `payload` must be a JSON object, found {found}"),
            "{payload}"
        );
    }
}

#[test]
fn rejects_nested_envelope() {
    assert_eq!(
        reason(r#"{"payload":{"payload":{"story_id":"S","timestamp":"t"}}}"#),
        "envelope `payload` is itself an envelope (it has a `payload` field)"
    );
}

#[test]
fn rejects_unexpected_event_type() {
    assert_eq!(
        reason(r#"{"event_type":"story.created","story_id":"S","timestamp":"t"}"#),
        r#"field `event_type` is "story.created", expected one of "story.transitioned", "planning.story.transitioned""#
    );
    let r = reason(r#"{"payload":{"event_type":"x","story_id":"S"},"timestamp":"t"}"#);
    assert!(r.starts_with(r#"field `payload.event_type` is "x""#), "{r}");
}

#[test]
fn rejects_null_event_type_naming_the_field() {
    assert_eq!(
        reason(r#"{"event_type":null,"story_id":"S","timestamp":"t"}"#),
        wrong_type("event_type", "a string", "null")
    );
}

#[test]
fn rejects_event_type_that_is_not_a_string() {
    assert_eq!(
        reason(r#"{"event_type":1,"story_id":"S","timestamp":"t"}"#),
        wrong_type("event_type", "a string", "a number")
    );
}

#[test]
fn accepts_either_known_event_type_at_either_level() {
    for outer in EVENT_TYPES {
        for inner in EVENT_TYPES {
            let payload = format!(
                r#"{{"event_type":"{outer}","payload":{{"event_type":"{inner}","story_id":"S"}},"timestamp":"t"}}"#
            );
            assert_eq!(ok(&payload).story_id, "S");
        }
    }
}

#[test]
fn rejects_duplicate_fields() {
    assert_eq!(
        reason(r#"{"story_id":"S-1","story_id":"S-2","timestamp":"t"}"#),
        "field `story_id` appears more than once"
    );
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S","timestamp":"a","timestamp":"b"}}"#),
        "field `payload.timestamp` appears more than once"
    );
    assert_eq!(
        reason(r#"{"payload":{"story_id":"S"},"payload":{"story_id":"S"},"timestamp":"t"}"#),
        "field `payload` appears more than once"
    );
}

#[test]
fn tolerates_duplicate_unknown_fields() {
    assert_eq!(
        ok(r#"{"x":1,"x":2,"story_id":"S","timestamp":"t"}"#).story_id,
        "S"
    );
}

#[test]
fn escapes_and_truncates_producer_values_in_reasons() {
    let long = "é".repeat(500);
    let payload =
        format!(r#"{{"event_type":"{long}\r\nInjected: yes","story_id":"S","timestamp":"t"}}"#);
    let r = reason(&payload);
    assert!(!r.contains('\n') && !r.contains('\r'), "{r}");
    assert!(r.contains('…'));
    assert!(r.chars().count() < 250, "{r}");
    let r = reason(r#"{"event_type":"a\u0000\nb","story_id":"S","timestamp":"t"}"#);
    assert!(r.contains(r#""a\0\nb""#), "{r}");
}

#[test]
fn never_panics_on_mutated_payloads() {
    // Deterministic byte mutations of valid payloads: every result is
    // either a transition or a rejection.
    let seeds = [
        PLANNING.to_owned(),
        format!(r#"{{"payload":{PLANNING},"timestamp":"t","metadata":{{"a":[1,2.5,null]}}}}"#),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        for _ in 0..5_000 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = (next() & 0xff) as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, b"{}[]\":,0\\\xff"[(next() % 10) as usize]),
                }
            }
            if let Ok(t) = parse(&bytes) {
                assert!(!t.story_id.is_empty() && !t.timestamp.is_empty());
            }
        }
    }
}

// --- nesting and size ------------------------------------------------------------

fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

#[test]
fn rejects_deeply_nested_array_without_overflowing_the_stack() {
    for depth in [129, 10_000, 1_000_000] {
        assert_eq!(
            reason(nested(depth, "[", "]")),
            "payload must be a JSON object, found an array"
        );
    }
}

#[test]
fn rejects_deeply_nested_object_without_overflowing_the_stack() {
    // `{"a":{"a":…1…}}`: an object, but no story_id.
    let payload = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    assert_eq!(reason(&payload), "missing `story_id`");
}

#[test]
fn rejects_deep_nesting_in_recognised_fields_by_type() {
    let deep = nested(10_000, "[", "]");
    assert_eq!(
        reason(format!(r#"{{"story_id":{deep},"timestamp":"t"}}"#)),
        wrong_type("story_id", "a string", "an array")
    );
    assert_eq!(
        reason(format!(r#"{{"payload":{deep},"timestamp":"t"}}"#)),
        "envelope field `payload` must be a JSON object, found an array"
    );
    assert_eq!(
        reason(format!(r#"{{"payload":{{"payload":{deep}}}}}"#)),
        "envelope `payload` is itself an envelope (it has a `payload` field)"
    );
}

#[test]
fn skips_deep_nesting_in_unknown_fields() {
    let deep = nested(10_000, "[", "]");
    let payload =
        format!(r#"{{"metadata":{deep},"payload":{{"x":{deep},"story_id":"S"}},"timestamp":"t"}}"#);
    assert_eq!(ok(&payload).story_id, "S");
}

#[test]
fn rejects_unbalanced_deep_nesting_as_invalid_json() {
    let payload = format!(
        r#"{{"story_id":"S","timestamp":"t","m":{}}}"#,
        "[".repeat(10_000)
    );
    assert!(reason(&payload).starts_with("payload is not valid JSON: "));
}

#[test]
fn parses_multi_mebibyte_payload() {
    // 8 MiB of metadata: a long string and a long array, skipped unbuilt.
    let big_string = "x".repeat(4 << 20);
    let big_array = vec!["0"; 2 << 20].join(",");
    let payload = format!(
        r#"{{"metadata":{{"blob":"{big_string}","list":[{big_array}]}},"payload":{{"story_id":"S-BIG","to_phase":"b"}},"timestamp":"t"}}"#
    );
    assert!(payload.len() > 8 << 20);
    assert_eq!(ok(&payload), transition("S-BIG", None, Some("b"), "t"));
}

#[test]
fn parses_multi_mebibyte_story_id() {
    let id = "i".repeat(3 << 20);
    let payload = format!(r#"{{"story_id":"{id}","timestamp":"t"}}"#);
    assert_eq!(ok(&payload).story_id.len(), 3 << 20);
}

#[test]
fn rejects_truncated_multi_mebibyte_payload() {
    let payload = format!(
        r#"{{"story_id":"S","timestamp":"t","blob":"{}"#,
        "x".repeat(4 << 20)
    );
    let r = reason(&payload);
    assert!(
        r.starts_with("payload is not valid JSON: EOF while parsing a string"),
        "{r}"
    );
}
