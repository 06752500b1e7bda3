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
        assert_eq!(escape(""), "");
    }

    /// The literal text a pattern made of literal characters, `\x`
    /// escapes and one final `*` matches the start of; any other glob
    /// syntax (an unescaped `?`, `[`, `]` or inner `*`, a dangling `\`) is
    /// an error, since then the pattern is no literal prefix match.
    fn literal_prefix_of(pattern: &str) -> Result<String, String> {
        let body = pattern.strip_suffix('*').ok_or("no final `*`")?;
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

    #[test]
    fn under_is_a_literal_prefix_for_every_ascii_character_and_beyond() {
        let ascii: String = (0u8..=127).map(char::from).collect();
        for prefix in [
            ascii.as_str(),
            "ñandú-🦀-故事:",
            "[^a]",
            "[a-z]",
            "\\*",
            "::",
        ] {
            assert_eq!(literal_prefix_of(&under(prefix)).as_deref(), Ok(prefix));
        }
    }
}
