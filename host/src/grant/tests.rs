//! Grants and scan-pattern containment.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::containment::*;
use super::*;
use crate::glob::matches;

fn inside(grants: &[&str], pattern: &str) -> bool {
    contains(grants, pattern)
}

/// Whether `key` matches the parsed tokens (plain glob semantics over
/// non-empty keys), to check the parser against the matcher.
fn tokens_match(tokens: &[Token], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let automaton = Automaton::new(&[tokens]);
    let mut set = automaton.start();
    for &byte in key {
        set = automaton.advance(&set, byte);
    }
    automaton.accepts(&set)
}

#[test]
fn everything_is_not_inside_a_prefix() {
    assert!(!inside(&["context:*"], "*"));
    assert!(!inside(&["context:*"], "?*"));
    assert!(!inside(&["context:*"], "c*"));
    assert!(!inside(&["context:*"], "context*"));
}

#[test]
fn a_wider_prefix_is_not_inside_a_narrower_one() {
    assert!(!inside(&["context:a*"], "context:*"));
    assert!(!inside(&["context:S1:*"], "context:S1*"));
}

#[test]
fn narrower_prefixes_and_literals_are_inside() {
    assert!(inside(&["context:*"], "context:*"));
    assert!(inside(&["context:*"], "context:S1:*"));
    assert!(inside(&["context:*"], "context:S1"));
    assert!(inside(&["context:*"], "context:"));
    assert!(inside(&["context:*"], "context:**"));
    assert!(inside(&["context:*"], "context:*:*"));
    assert!(inside(&["context:*"], "context:?"));
    assert!(inside(&["context:*"], "context:[ab]*"));
}

#[test]
fn escaped_specials_are_literals() {
    assert!(inside(&["context:*"], r"context:a\*b"));
    assert!(inside(&["context:*"], r"context:S\*\[1\]\?\\:*"));
    // An escaped `*` in the grant is a literal too: it grants one key.
    assert!(inside(&[r"context:a\*"], r"context:a\*"));
    assert!(!inside(&[r"context:a\*"], "context:a*"));
    assert!(inside(&["context:*"], r"\context:*"), "`\\c` is `c`");
}

#[test]
fn question_marks_and_classes_are_handled_exactly() {
    assert!(inside(&["context:?"], "context:[ab]"));
    assert!(!inside(&["context:[ab]"], "context:?"));
    assert!(inside(&["context:[a-z]*"], "context:[b-d]x*"));
    assert!(!inside(&["context:[a-z]*"], "context:[^b]*"));
    assert!(inside(&["context:[^x]*"], "context:[ab]*"));
    assert!(
        inside(&["context:[z-a]*"], "context:q*"),
        "a reversed range is swapped"
    );
    assert!(
        !inside(&["context:?*"], "context:*"),
        "`?*` needs one byte more"
    );
    assert!(
        inside(&["context:*"], "context:[]"),
        "an empty class matches nothing"
    );
    assert!(
        inside(&["other:*"], "context:[]*"),
        "a pattern matching nothing is inside anything"
    );
}

#[test]
fn a_union_of_grants_covers_what_none_covers_alone() {
    assert!(inside(&["a:b*", "a:c*"], "a:[bc]*"));
    assert!(!inside(&["a:b*", "a:c*"], "a:[bcd]*"));
    assert!(inside(&["*a", "*[^a]"], "x*"));
}

#[test]
fn stars_inside_the_pattern_are_followed() {
    assert!(inside(&["*:x"], "a*:x"));
    assert!(!inside(&["*:x"], "a:x*"));
    assert!(inside(&["a*b*c"], "a*b*b*c"));
    assert!(!inside(&["a*b*c"], "a*c"));
    assert!(inside(&["a*"], "a*b*c"));
}

#[test]
fn scan_of_star_needs_the_grant_star() {
    assert!(inside(&["*"], "*"));
    // `**` and `?*` match every non-empty key, but SCAN MATCH * also
    // returns the empty key, which only `*` alone grants.
    for grant in ["**", "?*"] {
        assert_eq!(
            containment(&[grant], b"*"),
            Containment::Outside {
                example: Vec::new()
            },
            "{grant}"
        );
        assert!(inside(&[grant], "x*"), "{grant}");
    }
    assert!(!inside(&[], "context:*"));
    assert!(!inside(&[], "x"));
}

/// Found by fuzzing (`glob_containment`, input `%+*\242`): a grant of
/// only `*`s other than `*` itself was taken for "every key", the empty
/// key too, while Valkey scans the empty key only for `*` alone (and
/// the empty pattern). A grant now covers exactly what it would scan.
#[test]
fn fuzz_regression_empty_key_is_granted_only_by_star_alone() {
    assert_eq!(
        containment(&["**"], b""),
        Containment::Outside {
            example: Vec::new()
        }
    );
    assert_eq!(containment(&["*"], b""), Containment::Inside);
    assert_eq!(containment(&[""], b""), Containment::Inside);
    assert!(scanned_by(b"*", b"") && !scanned_by(b"**", b"") && scanned_by(b"", b""));
    let config = |pattern: &str| GrantsConfig {
        cache_keys: vec![pattern.to_string()],
        ..GrantsConfig::default()
    };
    assert!(
        Grants::new(&config("*"))
            .check_delete(&[String::new()])
            .is_ok()
    );
    assert!(
        Grants::new(&config("**"))
            .check_delete(&[String::new()])
            .is_err()
    );
    assert!(
        Grants::new(&config("**"))
            .check_delete(&["x".into()])
            .is_ok()
    );
}

#[test]
fn valkey_quirks_are_read_as_valkey_reads_them() {
    // `[a-]` is the range `]`..`a` (swapped), and the class never closes.
    assert!(inside(&[r"x[\]^_`a]"], "x[a-]"));
    assert!(!inside(&[r"x[\]^_`]"], "x[a-]"));
    // `[]` is an empty class: `x[]-a]` matches nothing.
    assert!(inside(&["other"], "x[]-a]"));
    // The unterminated class takes the `*` as a member, not as a star.
    assert!(inside(&["x?"], "x[a-]*"));
    assert!(!inside(&[r"x[\]^_`a]"], "x[a-]*"));
    // An unterminated class ends the pattern.
    assert!(inside(&["x?"], "x[abc"));
    // A trailing backslash is a literal backslash.
    assert!(inside(&["x\\\\"], "x\\"));
}

#[test]
fn ranges_compare_as_signed_bytes() {
    // `[a-\xff]` is -1..=97 as signed bytes: 0x00..=0x61 and 0xff.
    let grant: &[u8] = b"[\x00-a]";
    let tokens = parse(b"[a-\xff]");
    assert!(tokens_match(&tokens, b"\xff"));
    assert!(tokens_match(&tokens, b"A"));
    assert!(!tokens_match(&tokens, b"\x80"));
    assert_eq!(
        containment(&[grant], b"[a-\xff]"),
        Containment::Outside {
            example: vec![0xff]
        }
    );
}

#[test]
fn outside_comes_with_a_key_that_proves_it() {
    let Containment::Outside { example } = containment(&["context:*"], b"*") else {
        panic!("expected outside")
    };
    assert!(
        matches(b"*", &example) && !matches(b"context:*", &example),
        "{example:?}"
    );
    let Containment::Outside { example } = containment(&["context:a*"], b"context:*") else {
        panic!("expected outside")
    };
    assert!(
        matches(b"context:*", &example) && !matches(b"context:a*", &example),
        "{example:?}"
    );
}

#[test]
fn a_pattern_too_costly_to_decide_is_unknown_and_quick() {
    // Proving this pattern inside itself needs the grant's subset
    // construction, which grows as 2^n in the number of `?` after the `a`.
    let grant = format!("*a{}", "?".repeat(40));
    let started = std::time::Instant::now();
    assert_eq!(
        containment(&[grant.as_str()], grant.as_bytes()),
        Containment::Unknown
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let long = format!("context:{}*", "x".repeat(MAX_KEY_BYTES - 10));
    let started = std::time::Instant::now();
    assert!(inside(&["context:*"], &long));
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

// Property tests over random patterns. The alphabet is small so that
// patterns and keys overlap often; it holds every special byte, and a
// byte above 0x7f for the signed ranges.
const ALPHABET: &[u8] = b"ab:\x80";
const SPECIALS: &[u8] = b"ab:\x80*?[]^-\\";

fn random_pattern(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(1..=8);
    (0..len)
        .map(|_| SPECIALS[rng.random_range(0..SPECIALS.len())])
        .collect()
}

/// A pattern of the shape grants usually have: a literal prefix
/// (maybe with a class or `?`) and a final `*` or not.
fn random_grant(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.5) {
        return random_pattern(rng);
    }
    let mut grant: Vec<u8> = (0..rng.random_range(0..4))
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect();
    if rng.random_bool(0.3) {
        grant.extend_from_slice(b"[a:]");
    }
    if rng.random_bool(0.8) {
        grant.push(b'*');
    }
    grant
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.random_range(0..7))
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect()
}

/// A key the tokens match, or none when they match nothing.
fn key_from(tokens: &[Token], rng: &mut StdRng) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for token in tokens {
        match token {
            Token::Star => {
                for _ in 0..rng.random_range(0..4) {
                    key.push(if rng.random_bool(0.8) {
                        ALPHABET[rng.random_range(0..ALPHABET.len())]
                    } else {
                        rng.random()
                    });
                }
            }
            Token::Byte(set) => {
                let members: Vec<u8> = (0..=255u8).filter(|b| set.contains(*b)).collect();
                if members.is_empty() {
                    return None;
                }
                let preferred: Vec<u8> = members
                    .iter()
                    .copied()
                    .filter(|b| ALPHABET.contains(b))
                    .collect();
                let pool = if !preferred.is_empty() && rng.random_bool(0.8) {
                    &preferred
                } else {
                    &members
                };
                key.push(pool[rng.random_range(0..pool.len())]);
            }
        }
    }
    (!key.is_empty()).then_some(key)
}

#[test]
fn parsed_patterns_match_exactly_what_the_matcher_matches() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..20_000 {
        let pattern = random_pattern(&mut rng);
        let tokens = parse(&pattern);
        for _ in 0..20 {
            let key = if rng.random_bool(0.5) {
                key_from(&tokens, &mut rng).unwrap_or_else(|| random_key(&mut rng))
            } else {
                random_key(&mut rng)
            };
            assert_eq!(
                tokens_match(&tokens, &key),
                matches(&pattern, &key),
                "pattern {:?} key {:?}",
                pattern.escape_ascii().to_string(),
                key.escape_ascii().to_string()
            );
        }
    }
}

#[test]
fn property_contained_patterns_only_match_granted_keys() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    let (mut proved_inside, mut proved_outside) = (0, 0);
    for _ in 0..20_000 {
        let grants: Vec<Vec<u8>> = (0..rng.random_range(1..=2))
            .map(|_| random_grant(&mut rng))
            .collect();
        let pattern = random_pattern(&mut rng);
        let granted = |key: &[u8]| grants.iter().any(|g| scanned_by(g, key));
        match containment(&grants, &pattern) {
            Containment::Inside => {
                proved_inside += 1;
                let tokens = parse(&pattern);
                for _ in 0..50 {
                    let Some(key) = key_from(&tokens, &mut rng) else {
                        break;
                    };
                    assert!(
                        matches(&pattern, &key),
                        "generated key must match its pattern"
                    );
                    assert!(
                        granted(&key),
                        "{:?} was proved inside {:?} but {:?} matches only the pattern",
                        pattern.escape_ascii().to_string(),
                        grants
                            .iter()
                            .map(|g| g.escape_ascii().to_string())
                            .collect::<Vec<_>>(),
                        key.escape_ascii().to_string()
                    );
                }
            }
            Containment::Outside { example } => {
                proved_outside += 1;
                if !example.is_empty() {
                    assert!(
                        matches(&pattern, &example),
                        "example must match the pattern"
                    );
                }
                assert!(!granted(&example), "example must match no grant");
            }
            Containment::Unknown => panic!("small patterns are always decided"),
        }
    }
    assert!(
        proved_inside > 1_000 && proved_outside > 1_000,
        "{proved_inside} / {proved_outside}"
    );
}

#[test]
fn property_literal_prefixes_with_a_trailing_star_are_decided_exactly() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    let literal = |rng: &mut StdRng| -> String {
        (0..rng.random_range(0..6))
            .map(|_| ["a", "b", ":", "*", "?", "[", "\\"][rng.random_range(0..7)])
            .collect()
    };
    for _ in 0..5_000 {
        let (grant, scan) = (literal(&mut rng), literal(&mut rng));
        let grant_pattern = format!("{}*", crate::glob::escape(&grant));
        for scan_pattern in [
            format!("{}*", crate::glob::escape(&scan)),
            crate::glob::escape(&scan),
        ] {
            // An empty scan is `*` (every key, the empty one too) or
            // the empty pattern (only the empty key): only `*` grants it.
            let expected = grant.is_empty() || (!scan.is_empty() && scan.starts_with(&grant));
            assert_eq!(
                inside(&[grant_pattern.as_str()], &scan_pattern),
                expected,
                "{scan_pattern:?} inside {grant_pattern:?}"
            );
        }
    }
}

fn config(text: &str) -> GrantsConfig {
    toml::from_str(text).unwrap()
}

#[test]
fn deletes_are_granted_key_by_key_and_bounded() {
    let grants = Grants::new(&config("cache_keys = [\"context:*\"]\nmax_delete_keys = 2"));
    assert!(
        grants
            .check_delete(&["context:S1".into(), "context:S1:dev".into()])
            .is_ok()
    );
    let denial = grants
        .check_delete(&["context:S1".into(), "other:S1".into()])
        .unwrap_err();
    assert_eq!(denial.offending, "other:S1");
    assert!(
        denial
            .message
            .contains("outside this handler's cache grant"),
        "{}",
        denial.message
    );
    let denial = grants
        .check_delete(&["context:a".into(), "context:b".into(), "context:c".into()])
        .unwrap_err();
    assert!(
        denial.message.contains("more than the 2"),
        "{}",
        denial.message
    );
}

#[test]
fn scans_are_denied_with_a_key_that_shows_why() {
    let grants = Grants::new(&config("cache_keys = [\"context:*\"]"));
    assert!(grants.check_scan("context:S1:*").is_ok());
    let denial = grants.check_scan("*").unwrap_err();
    assert_eq!(denial.offending, "*");
    assert!(
        denial.message.contains("it can match"),
        "{}",
        denial.message
    );
}

#[test]
fn no_grants_deny_everything_and_unrestricted_allows_everything() {
    let none = Grants::new(&GrantsConfig::default());
    assert!(none.is_empty());
    assert!(none.check_scan("context:S1:*").is_err());
    assert!(none.check_delete(&["context:S1".into()]).is_err());
    assert!(none.check_label("PhaseTransition").is_err());
    assert!(none.check_relation("FOLLOWS").is_err());
    let all = Grants::unrestricted();
    assert!(!all.is_empty());
    assert!(all.check_scan("*").is_ok());
    assert!(all.check_delete(&["anything".into()]).is_ok());
    assert!(all.check_label("Anything").is_ok());
}

#[test]
fn labels_and_relation_kinds_are_granted_by_name() {
    let grants = Grants::new(&config(
        "graph_labels = [\"PhaseTransition\"]\ngraph_relations = [\"FOLLOWS\"]",
    ));
    assert!(grants.check_label("PhaseTransition").is_ok());
    assert!(grants.check_relation("FOLLOWS").is_ok());
    let denial = grants.check_label("Story").unwrap_err();
    assert_eq!(denial.offending, "Story");
    assert!(
        denial
            .message
            .contains("graph_labels = [\"PhaseTransition\"]"),
        "{}",
        denial.message
    );
    assert!(grants.check_relation("PhaseTransition").is_err());
}

#[test]
fn malformed_grant_globs_are_refused_naming_the_pattern() {
    for bad in ["context:[", "context:\\"] {
        let table = format!("cache_keys = [\"ok:*\", {bad:?}]");
        let (field, message) = config(&table).check().unwrap_err();
        assert_eq!(field, "cache_keys[1]", "{bad}");
        assert!(message.contains(&format!("{bad:?}")), "{message}");
    }
}

#[test]
fn config_check_names_the_bad_field() {
    assert_eq!(
        config("cache_keys = [\"\"]").check().unwrap_err().0,
        "cache_keys[0]"
    );
    assert_eq!(
        config("max_delete_keys = 0").check().unwrap_err().0,
        "max_delete_keys"
    );
    assert_eq!(
        config("max_delete_keys = 10001").check().unwrap_err().0,
        "max_delete_keys"
    );
    assert_eq!(
        config("graph_labels = [\"A`) DETACH DELETE n //\"]")
            .check()
            .unwrap_err()
            .0,
        "graph_labels"
    );
    assert_eq!(
        config("graph_relations = [\"1x\"]").check().unwrap_err().0,
        "graph_relations"
    );
    let many_stars = format!("cache_keys = [\"{}\"]", "a*".repeat(65));
    assert_eq!(config(&many_stars).check().unwrap_err().0, "cache_keys[0]");
    assert!(
        config("cache_keys = [\"context:*\"]\ngraph_labels = [\"PhaseTransition\"]")
            .check()
            .is_ok()
    );
}
