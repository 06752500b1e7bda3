//! Valkey glob matching and grant containment on arbitrary patterns and
//! keys: neither panics, `Inside` is never wrong for the key given, and an
//! `Outside` answer comes with a key that proves it. Keys are compared the
//! way `SCAN MATCH` selects them ([`scanned_by`]).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::grant::{Containment, containment, scanned_by};

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<u8>, Vec<u8>)| {
    let (mut grants, pattern, key) = input;
    grants.truncate(4);
    for grant in &mut grants {
        grant.truncate(64);
    }
    let granted = |key: &[u8]| grants.iter().any(|g| scanned_by(g, key));
    match containment(&grants, &pattern) {
        Containment::Inside => {
            assert!(
                !scanned_by(&pattern, &key) || granted(&key),
                "key {key:?} is scanned by the pattern and granted by none"
            );
        }
        Containment::Outside { example } => {
            assert!(
                scanned_by(&pattern, &example),
                "example {example:?} is not scanned by the pattern"
            );
            assert!(!granted(&example), "example {example:?} is granted");
        }
        Containment::Unknown => {}
    }
});
