//! Cache invalidation the way every such handler needs it: these exact
//! keys, and every key under these prefixes, in one host call.
//!
//! Ids are escaped ([`crate::glob`]), so data never widens what is
//! deleted. The host serves it with `delete-matching`: one sweep shared
//! with concurrent events, every matching key that exists for the whole
//! call deleted, none other touched.

use crate::cache;
use crate::glob;
use crate::types::Error;

/// Deletes every key in `exact` and every key that starts with one of
/// `prefixes` (both taken literally). Returns how many keys were deleted.
pub fn keys_and_prefixes<K: AsRef<str>, P: AsRef<str>>(
    exact: &[K],
    prefixes: &[P],
) -> Result<u64, Error> {
    let patterns: Vec<String> = exact
        .iter()
        .map(|key| glob::escape(key.as_ref()))
        .chain(prefixes.iter().map(|prefix| glob::under(prefix.as_ref())))
        .collect();
    if patterns.is_empty() {
        return Ok(0);
    }
    cache::delete_matching(&patterns)
}
