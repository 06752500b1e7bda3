//! `story_transitions::transition::parse` on arbitrary bytes: it never
//! panics, and a payload it accepts always yields keys inside the grant the
//! example configurations give the plugin (`context:*`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use story_transitions::keys::StoryKeys;
use story_transitions::transition::parse;
use switchyard::glob::matches;
use switchyard::grant::containment::contains;

const GRANT: &str = "context:*";

fuzz_target!(|payload: &[u8]| {
    let Ok(transition) = parse(payload) else {
        return;
    };
    assert!(!transition.story_id.is_empty());
    assert!(!transition.timestamp.is_empty());
    assert!(transition.node_id().starts_with(&transition.story_id));

    let keys = StoryKeys::new("context:", &transition.story_id);
    assert!(
        contains(&[GRANT], keys.scan_pattern()),
        "scan pattern {:?} is not inside {GRANT}",
        keys.scan_pattern()
    );
    assert!(matches(GRANT.as_bytes(), keys.bare_key().as_bytes()));
    // The escaped pattern matches the story's children and not the bare key.
    let child = format!("{}x", keys.child_prefix());
    assert!(matches(keys.scan_pattern().as_bytes(), child.as_bytes()));
    assert!(!matches(
        keys.scan_pattern().as_bytes(),
        keys.bare_key().as_bytes()
    ));
});
