//! Valkey glob matching and grant containment on arbitrary patterns and
//! keys: neither panics, `Inside` is never wrong for the key given, and an
//! `Outside` answer comes with a key that proves it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::glob::matches;
use switchyard::grant::{Containment, containment};

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<u8>, Vec<u8>)| {
    let (mut grants, pattern, key) = input;
    grants.truncate(4);
    for grant in &mut grants {
        grant.truncate(64);
    }
    let granted = |key: &[u8]| grants.iter().any(|g| matches(g, key));
    let in_pattern = matches(&pattern, &key);
    match containment(&grants, &pattern) {
        Containment::Inside => {
            assert!(!in_pattern || granted(&key), "key {key:?} matches the pattern and no grant");
        }
        Containment::Outside { example } => {
            // The empty example stands for the empty key, which only
            // `SCAN MATCH *` (and the empty pattern) return.
            if example.is_empty() {
                assert!(pattern.is_empty() || pattern == b"*");
            } else {
                assert!(matches(&pattern, &example), "example {example:?} does not match the pattern");
                assert!(!granted(&example), "example {example:?} is granted");
            }
        }
        Containment::Unknown => {}
    }
});
