//! `keys::StoryKeys`: a story's keys are its own, whatever its id holds.

use story_transitions::keys::StoryKeys;

/// Reads a pattern made of literal characters, `\x` escapes and one final
/// `*`, returning the literal part. Any other glob syntax (an unescaped
/// `?`, `[`, `]` or inner `*`, a dangling `\`) is an error: then the
/// pattern would not be a literal prefix match.
fn literal_prefix_of(pattern: &str) -> Result<String, String> {
    let body = pattern
        .strip_suffix('*')
        .ok_or("pattern does not end with `*`")?;
    let mut literal = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.push(chars.next().ok_or("dangling `\\`")?),
            '*' | '?' | '[' | ']' => return Err(format!("unescaped `{c}` in {pattern:?}")),
            c => literal.push(c),
        }
    }
    Ok(literal)
}

/// Story ids that stress the escaping.
const AWKWARD_IDS: &[&str] = &[
    "STRESS-NEO-0001",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "a*b?c[d]e\\f",
    "[^a]",
    "[a-z]",
    "\\*",
    "ends-with-backslash\\",
    "with:colon",
    ":",
    "::",
    "ñandú-🦀-故事",
    "tab\there",
    "nul\0byte",
    " ",
];

#[test]
fn builds_bare_key_and_child_prefix_from_prefix_and_id() {
    let keys = StoryKeys::new("context:", "STRESS-NEO-0001");
    assert_eq!(keys.bare_key(), "context:STRESS-NEO-0001");
    assert_eq!(keys.child_prefix(), "context:STRESS-NEO-0001:");
    assert_eq!(keys.scan_pattern(), "context:STRESS-NEO-0001:*");
}

#[test]
fn escapes_glob_specials_in_story_id_and_key_prefix() {
    assert_eq!(
        StoryKeys::new("context:", "S*[1]").scan_pattern(),
        "context:S\\*\\[1\\]:*"
    );
    assert_eq!(
        StoryKeys::new("context:", "a*b?c[d]e\\f").scan_pattern(),
        "context:a\\*b\\?c\\[d\\]e\\\\f:*"
    );
    let keys = StoryKeys::new("ctx[v2]*:", "S-1");
    assert_eq!(keys.scan_pattern(), "ctx\\[v2\\]\\*:S-1:*");
    assert_eq!(keys.bare_key(), "ctx[v2]*:S-1");
}

#[test]
fn leaves_bracket_only_specials_and_ordinary_text_alone() {
    // `^` and `-` are special only inside a class, which is never opened.
    assert_eq!(StoryKeys::new("", "^-").scan_pattern(), "^-:*");
    assert_eq!(
        StoryKeys::new("", "ñandú-🦀-故事").scan_pattern(),
        "ñandú-🦀-故事:*"
    );
}

#[test]
fn scan_pattern_is_a_literal_child_prefix_for_awkward_ids() {
    for prefix in ["context:", "", "a*[?]\\:"] {
        for id in AWKWARD_IDS {
            let keys = StoryKeys::new(prefix, id);
            assert_eq!(
                literal_prefix_of(keys.scan_pattern()).as_deref(),
                Ok(keys.child_prefix()),
                "prefix {prefix:?}, id {id:?}"
            );
        }
    }
}

#[test]
fn covers_bare_key_and_colon_children_only() {
    let keys = StoryKeys::new("context:", "STRESS-NEO-0001");
    for key in [
        "context:STRESS-NEO-0001",
        "context:STRESS-NEO-0001:",
        "context:STRESS-NEO-0001:dev",
        "context:STRESS-NEO-0001:role:qa",
    ] {
        assert!(keys.covers(key), "{key} should be covered");
    }
    for key in [
        "context:STRESS-NEO-00010",
        "context:STRESS-NEO-0001x:dev",
        "context:STRESS-NEO-000",
        "context:STRESS-NEO-0002",
        "context:STRESS-NEO-0002:dev",
        "other:STRESS-NEO-0001",
        "xcontext:STRESS-NEO-0001",
        "STRESS-NEO-0001",
    ] {
        assert!(!keys.covers(key), "{key} must not be covered");
    }
}

#[test]
fn treats_story_id_with_glob_specials_as_data() {
    // A story literally named `*` owns `context:*` and `context:*:…`,
    // not every key.
    let keys = StoryKeys::new("context:", "*");
    assert!(keys.covers("context:*"));
    assert!(keys.covers("context:*:dev"));
    assert!(!keys.covers("context:S-1"));
    assert!(!keys.covers("context:S-1:dev"));
    assert_eq!(keys.scan_pattern(), "context:\\*:*");
}

#[test]
fn handles_empty_prefix_and_colon_ids() {
    let keys = StoryKeys::new("", ":");
    assert_eq!(keys.bare_key(), ":");
    assert_eq!(keys.child_prefix(), "::");
    assert_eq!(keys.scan_pattern(), "::*");
    assert!(keys.covers("::x"));
    assert!(!keys.covers(":x"));
}

#[test]
fn stays_exact_for_an_empty_story_id() {
    // Parsing rejects an empty id; the keys would still not spill over.
    let keys = StoryKeys::new("context:", "");
    assert_eq!(keys.bare_key(), "context:");
    assert_eq!(keys.scan_pattern(), "context::*");
    assert!(keys.covers("context::x"));
    assert!(!keys.covers("context:S-1"));
    assert!(!keys.covers("context:S-1:dev"));
}

#[test]
fn refuses_an_id_whose_escaped_pattern_exceeds_the_limit() {
    // 2,100 bytes of id, 4,200 once escaped: under the limit as a key,
    // over it as a pattern.
    let keys = StoryKeys::new("context:", &"*".repeat(2_100));
    let reason = keys.check_lengths().unwrap_err();
    assert_eq!(
        reason,
        "story id too long: its cache pattern would be 4210 bytes (key 2108 bytes), over the 4096-byte limit of a key or pattern"
    );
    assert_eq!(
        StoryKeys::new("context:", &"a".repeat(4000)).check_lengths(),
        Ok(())
    );
}
