//! Valkey's glob matching (`SCAN ... MATCH`, `KEYS`), byte for byte.
//!
//! This is a port of `stringmatchlen` from Valkey's `util.c`, kept faithful
//! down to its quirks, because the in-memory cache must select exactly the
//! keys a real server would: an unterminated `[` matches up to the end of the
//! pattern, a reversed range `[z-a]` is the range `[a-z]`, range bounds
//! compare as *signed* bytes (C `char` on x86), and more than 1000 nested
//! `*` give up with no match. A differential test against a real Valkey holds
//! the two together.

/// Whether `key` matches the Valkey glob `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, key, &mut skip_longer, 0)
}

/// Whether `pattern` contains no glob specials, so it matches only itself.
/// Why `pattern` is not a well-formed glob: a `[` without its `]`, or a
/// `\\` with nothing after it to escape. Both match, but not what was meant.
pub fn malformed(pattern: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 == pattern.len() => return Some("ends in a lone `\\`"),
            b'\\' => i += 2,
            b'[' => {
                i += 1;
                if pattern.get(i) == Some(&b'^') {
                    i += 1;
                }
                loop {
                    match pattern.get(i) {
                        None => return Some("has a `[` without its `]`"),
                        Some(b']') => break,
                        Some(b'\\') if i + 1 == pattern.len() => {
                            return Some("has a `[` without its `]`");
                        }
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

pub fn is_literal(pattern: &[u8]) -> bool {
    !pattern
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

/// Escapes `literal` so that, as a pattern, it matches exactly itself.
pub fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A pattern read once for matching many keys: most invalidation patterns
/// are an exact key or a literal prefix and `*`, which need no matcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compiled {
    /// No unescaped `*`, `?` or `[`: matches exactly these bytes.
    Exact(Vec<u8>),
    /// A literal run then only `*`s: matches every key starting with these
    /// bytes (the empty prefix, the pattern `*`, matches every key, as
    /// `SCAN MATCH *` returns every key).
    Prefix(Vec<u8>),
    /// Anything else, matched with [`matches`].
    Glob(Vec<u8>),
}

impl Compiled {
    /// Reads `pattern` as Valkey's matcher does: `\x` is `x`, a `\` at the
    /// very end is itself.
    pub fn new(pattern: &[u8]) -> Self {
        let mut literal = Vec::with_capacity(pattern.len());
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'\\' if i + 1 < pattern.len() => {
                    literal.push(pattern[i + 1]);
                    i += 2;
                }
                // `*` alone is special to `SCAN` (every key, the empty one
                // too); `**` is not, and misses the empty key.
                b'*' if pattern[i..].iter().all(|&b| b == b'*')
                    && (!literal.is_empty() || pattern == b"*") =>
                {
                    return Compiled::Prefix(literal);
                }
                b'*' | b'?' | b'[' => return Compiled::Glob(pattern.to_vec()),
                c => {
                    literal.push(c);
                    i += 1;
                }
            }
        }
        Compiled::Exact(literal)
    }

    /// Whether `SCAN MATCH` with this pattern returns `key`.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Compiled::Exact(literal) => key == literal.as_slice(),
            Compiled::Prefix(prefix) => key.starts_with(prefix),
            Compiled::Glob(pattern) => matches(pattern, key),
        }
    }

    /// The bytes every matching key starts with.
    pub fn literal_prefix(&self) -> &[u8] {
        match self {
            Compiled::Exact(literal) | Compiled::Prefix(literal) => literal,
            Compiled::Glob(pattern) => {
                let end = pattern
                    .iter()
                    .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
                    .unwrap_or(pattern.len());
                &pattern[..end]
            }
        }
    }
}

/// Escapes arbitrary bytes so that, as a pattern, they match exactly
/// themselves.
pub fn escape_bytes(literal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(literal.len() + 2);
    for &b in literal {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

// Bytes compare as C `char`, which is signed on the platforms Valkey ships for.
fn signed(b: u8) -> i32 {
    i32::from(b as i8)
}

fn match_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    // Valkey's protection against abusive patterns.
    if nesting > 1000 {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() >= 2 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // No suffix of the key matches the rest of the pattern, so no
                // earlier `*` can do better by consuming more.
                *skip_longer = true;
                return false;
            }
            b'?' => {
                s = &s[1..];
            }
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut hit = false;
                loop {
                    if p.len() >= 2 && p[0] == b'\\' {
                        p = &p[1..];
                        if p[0] == s[0] {
                            hit = true;
                        }
                    } else if p.first() == Some(&b']') {
                        break;
                    } else if p.is_empty() {
                        // Unterminated class: stop here. The shared advance
                        // below would step past the end, so step back first
                        // by leaving the pattern empty and exiting the loop.
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (mut start, mut end) = (signed(p[0]), signed(p[2]));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        let c = signed(s[0]);
                        p = &p[2..];
                        if c >= start && c <= end {
                            hit = true;
                        }
                    } else if p[0] == s[0] {
                        hit = true;
                    }
                    p = &p[1..];
                }
                if negate {
                    hit = !hit;
                }
                if !hit {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // The unterminated class consumed the rest of the pattern;
                    // there is no closing `]` to step over.
                    return s.is_empty();
                }
            }
            b'\\' => {
                if p.len() >= 2 {
                    p = &p[1..];
                }
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        matches(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn star_matches_zero_or_more_bytes() {
        assert!(m("context:*", "context:"));
        assert!(m("context:*", "context:a:b"));
        assert!(!m("context:S1:*", "context:S1"));
        // The matcher never matches the empty key; SCAN and KEYS special-case
        // the pattern `*` before calling it, and so does the memory cache.
        assert!(!m("*", ""));
        assert!(m("a**b", "ab"));
    }

    #[test]
    fn question_mark_matches_exactly_one_byte() {
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("?", ""));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(m("[abc]", "b"));
        assert!(!m("[abc]", "d"));
        assert!(m("[^a]", "b"));
        assert!(!m("[^a]", "a"));
        assert!(m("[a-z]", "q"));
        assert!(m("[z-a]", "q"), "a reversed range is swapped");
        assert!(m("[\\]]", "]"));
        assert!(
            m("[a-]", "^"),
            "`a-]` is a range, leaving the class unterminated"
        );
    }

    #[test]
    fn backslash_escapes_specials() {
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("\\", "\\"), "a trailing backslash is literal");
    }

    #[test]
    fn unterminated_classes_and_lone_backslashes_are_malformed() {
        assert!(malformed(b"context:[").is_some());
        assert!(malformed(b"context:\\").is_some());
        assert!(malformed(b"a[^").is_some());
        assert!(malformed(b"a[b\\").is_some());
        assert_eq!(malformed(b"context:[ab]*"), None);
        assert_eq!(malformed(b"a\\[b"), None);
        assert_eq!(malformed(b"a[\\]]b"), None);
        assert_eq!(malformed(b"plain:*:?"), None);
    }

    #[test]
    fn unterminated_class_runs_to_end_of_pattern() {
        assert!(m("[abc", "a"));
        assert!(!m("[abc", "ab"));
        assert!(
            !m("x[", "x["),
            "an empty unterminated class matches nothing"
        );
    }

    #[test]
    fn escape_makes_any_string_literal() {
        for id in ["S1", "a*b", "q?[x]", "back\\slash", "ü:ñ", ""] {
            let pattern = escape(id);
            assert!(m(&pattern, id), "{pattern} should match {id}");
            assert!(!m(&pattern, &format!("{id}x")));
        }
    }

    #[test]
    fn compiled_patterns_select_exactly_what_the_matcher_selects() {
        let keys: &[&[u8]] = &[
            b"",
            b"a",
            b"ab",
            b"abc",
            b"abd",
            b"a*",
            b"a\\",
            b"ctx:S1",
            b"ctx:S1:dev",
            b"ctx:S10",
            b"ctx:S1:",
            b"ctx:S1\xff",
            b"x[y",
            b"x?y",
            b"xzy",
        ];
        let patterns: &[&[u8]] = &[
            b"*",
            b"**",
            b"a",
            b"a*",
            b"a**",
            b"a\\*",
            b"a\\\\",
            b"a\\",
            b"ctx:S1",
            b"ctx:S1:*",
            b"ctx:S1*",
            b"x\\[y",
            b"x?y",
            b"x[z]y",
            b"a*c",
            b"\\a*",
            b"ab\\",
        ];
        for &pattern in patterns {
            let compiled = Compiled::new(pattern);
            for &key in keys {
                let expected = pattern == b"*" || matches(pattern, key);
                assert_eq!(
                    compiled.matches(key),
                    expected,
                    "pattern {:?} ({compiled:?}) on key {:?}",
                    String::from_utf8_lossy(pattern),
                    String::from_utf8_lossy(key)
                );
                assert!(!compiled.matches(key) || key.starts_with(compiled.literal_prefix()));
            }
        }
        assert_eq!(
            Compiled::new(b"ctx:S1:*"),
            Compiled::Prefix(b"ctx:S1:".to_vec())
        );
        assert_eq!(
            Compiled::new(b"ctx:S\\*1"),
            Compiled::Exact(b"ctx:S*1".to_vec())
        );
        assert!(matches!(Compiled::new(b"a*c"), Compiled::Glob(_)));
    }

    #[test]
    fn escaped_bytes_match_only_themselves() {
        for literal in [&b"ctx:S[1]*?\\"[..], b"\xff\x00plain", b""] {
            let pattern = escape_bytes(literal);
            assert_eq!(Compiled::new(&pattern), Compiled::Exact(literal.to_vec()));
        }
    }
}
