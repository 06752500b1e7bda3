//! Data into Valkey globs. An id taken from an event is data, never a
//! pattern: `S1*` as a story id must match the key `S1*`, not every key
//! that starts with `S1`.
//!
//! Escaping follows Valkey's `stringmatchlen`: outside a bracket class the
//! only special bytes are `*`, `?`, `[` and `\`, and `\x` matches `x`
//! literally. `]` is escaped too, harmlessly, so the escaped text stays
//! literal even if it ends up inside a class; `^` and `-` are special only
//! inside a class, which an escaped string never opens. All are ASCII, and
//! UTF-8 never uses ASCII bytes inside a multi-byte character, so escaping
//! character by character is escaping byte by byte.

/// The bytes a Valkey glob treats specially outside a bracket class, plus `]`.
pub const SPECIALS: [char; 5] = ['*', '?', '[', ']', '\\'];

/// `literal`, escaped so that a Valkey glob matches exactly that text.
pub fn escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if SPECIALS.contains(&c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The glob matching every key that starts with `prefix` (taken literally).
pub fn under(prefix: &str) -> String {
    let mut pattern = escape(prefix);
    pattern.push('*');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_are_escaped_and_nothing_else() {
        assert_eq!(escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        assert_eq!(escape("plain:id-1^é"), "plain:id-1^é");
        assert_eq!(under("user:4*2:"), r"user:4\*2:*");
    }
}
