//! Per-handler grants: which cache keys, graph labels and relation kinds a
//! handler may touch.
//!
//! A handler's `[handlers.grants]` table ([`GrantsConfig`]) lists what it
//! may reach; everything else is denied, and a handler without the table is
//! granted nothing. [`Grants`] is the checked form the capabilities consult
//! on every call:
//!
//! - a `delete` is granted when every key is one that `SCAN MATCH` with
//!   some pattern of `cache_keys` would return ([`scanned_by`]: Valkey's
//!   matcher, and `*` alone for every key), and there are at most
//!   `max_delete_keys` of them;
//! - a `scan` is granted when every key its pattern could match is matched
//!   by some pattern of `cache_keys`: pattern containment, [`containment`];
//! - an upsert is granted when each node's label is in `graph_labels` and a
//!   relation's kind is in `graph_relations`.
//!
//! # Containment
//!
//! Both patterns are read exactly as Valkey's matcher reads them (escapes,
//! classes, ranges compared as signed bytes, an unterminated `[`), as a
//! sequence of `*` and one-byte sets. The question "can a key match the
//! scan pattern but no granted pattern?" is then answered by a search over
//! the pattern's positions paired with the set of positions the grants can
//! be in after the same bytes (a subset construction done lazily). The
//! answer is exact: [`Containment::Outside`] carries a key that proves it.
//! The search has a budget; a pattern that exhausts it gets
//! [`Containment::Unknown`], which the cache treats as a denial. Literal
//! prefixes with a trailing `*`, the shape every sensible grant and scan
//! has, take a handful of steps.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;

use serde::Deserialize;

use crate::capability::cache::{MAX_DELETE_KEYS, MAX_KEY_BYTES};
use crate::capability::graph::check_identifier;

/// The `[handlers.grants]` table. Every list defaults to empty: nothing is
/// granted that is not named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Valkey glob patterns of the keys the handler may scan and delete.
    #[serde(default)]
    pub cache_keys: Vec<String>,
    /// Most keys one `delete` call may name.
    #[serde(default = "default_max_delete_keys")]
    pub max_delete_keys: u32,
    /// Node labels the handler may upsert (and use as relation ends).
    #[serde(default)]
    pub graph_labels: Vec<String>,
    /// Relation kinds the handler may upsert.
    #[serde(default)]
    pub graph_relations: Vec<String>,
}

fn default_max_delete_keys() -> u32 {
    1000
}

impl Default for GrantsConfig {
    fn default() -> Self {
        GrantsConfig {
            cache_keys: Vec::new(),
            max_delete_keys: default_max_delete_keys(),
            graph_labels: Vec::new(),
            graph_relations: Vec::new(),
        }
    }
}

impl GrantsConfig {
    /// Checks the table; an error names the field and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for pattern in &self.cache_keys {
            if pattern.is_empty() || pattern.len() > MAX_KEY_BYTES {
                return Err((
                    "cache_keys",
                    format!("pattern {pattern:?} must be 1 to {MAX_KEY_BYTES} bytes"),
                ));
            }
            if star_runs(&parse(pattern.as_bytes())) > MAX_GRANT_STARS {
                return Err((
                    "cache_keys",
                    format!("pattern {pattern:?} has more than {MAX_GRANT_STARS} `*`"),
                ));
            }
        }
        if self.max_delete_keys == 0 || self.max_delete_keys as usize > MAX_DELETE_KEYS {
            return Err((
                "max_delete_keys",
                format!("must be between 1 and {MAX_DELETE_KEYS}"),
            ));
        }
        for label in &self.graph_labels {
            check_identifier("label", label).map_err(|e| ("graph_labels", e))?;
        }
        for kind in &self.graph_relations {
            check_identifier("relation kind", kind).map_err(|e| ("graph_relations", e))?;
        }
        Ok(())
    }
}

/// Why a call was refused: what it named outside the grant, and the message
/// the plugin gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The key, pattern, label or relation kind that is not granted (or the
    /// number of keys, for an oversized delete).
    pub offending: String,
    pub message: String,
}

/// Either everything, or only what is listed.
#[derive(Debug, Clone)]
enum Scope<T> {
    Everything,
    Only(T),
}

/// A granted cache pattern, parsed once.
#[derive(Debug, Clone)]
struct GrantedPattern {
    text: String,
    tokens: Vec<Token>,
}

/// The checked grants of one handler.
#[derive(Debug, Clone)]
pub struct Grants {
    cache: Scope<Vec<GrantedPattern>>,
    max_delete_keys: usize,
    labels: Scope<BTreeSet<String>>,
    relations: Scope<BTreeSet<String>>,
}

impl Grants {
    /// The grants of a configured handler. `config` should have passed
    /// [`GrantsConfig::check`]; a pattern it would refuse is still safe
    /// here, only harder to prove scans against.
    pub fn new(config: &GrantsConfig) -> Self {
        Grants {
            cache: Scope::Only(
                config
                    .cache_keys
                    .iter()
                    .map(|text| GrantedPattern {
                        text: text.clone(),
                        tokens: parse(text.as_bytes()),
                    })
                    .collect(),
            ),
            max_delete_keys: config.max_delete_keys as usize,
            labels: Scope::Only(config.graph_labels.iter().cloned().collect()),
            relations: Scope::Only(config.graph_relations.iter().cloned().collect()),
        }
    }

    /// Everything granted: for plugins run in isolation on in-memory
    /// backends (`switchyard test`, the testing harness), never for a
    /// configured handler.
    pub fn unrestricted() -> Self {
        Grants {
            cache: Scope::Everything,
            max_delete_keys: MAX_DELETE_KEYS,
            labels: Scope::Everything,
            relations: Scope::Everything,
        }
    }

    /// Whether nothing at all is granted on the cache and the graph.
    pub fn is_empty(&self) -> bool {
        let empty =
            |scope: &Scope<BTreeSet<String>>| matches!(scope, Scope::Only(set) if set.is_empty());
        matches!(&self.cache, Scope::Only(p) if p.is_empty())
            && empty(&self.labels)
            && empty(&self.relations)
    }

    /// Checks a `scan` pattern: every key it could match must be granted.
    pub fn check_scan(&self, pattern: &str) -> Result<(), Denial> {
        let patterns = match &self.cache {
            Scope::Everything => return Ok(()),
            Scope::Only(patterns) => patterns,
        };
        let grants: Vec<(&[u8], &[Token])> = patterns
            .iter()
            .map(|p| (p.text.as_bytes(), p.tokens.as_slice()))
            .collect();
        let why = match containment_of(&grants, pattern.as_bytes()) {
            Containment::Inside => return Ok(()),
            Containment::Outside { example } => {
                format!("it can match {:?}", String::from_utf8_lossy(&example))
            }
            Containment::Unknown => {
                "it is too complex to prove inside the grant (use a literal prefix and a trailing `*`)"
                    .to_string()
            }
        };
        Err(Denial {
            offending: pattern.to_string(),
            message: format!(
                "scan pattern {pattern:?} is outside this handler's cache grant ({}): {why}",
                self.describe_cache()
            ),
        })
    }

    /// Checks a `delete`: at most `max_delete_keys` keys, each granted.
    pub fn check_delete(&self, keys: &[String]) -> Result<(), Denial> {
        if keys.len() > self.max_delete_keys {
            return Err(Denial {
                offending: format!("{} keys", keys.len()),
                message: format!(
                    "delete names {} keys, more than the {} this handler's grant allows in one call (max_delete_keys)",
                    keys.len(),
                    self.max_delete_keys
                ),
            });
        }
        let patterns = match &self.cache {
            Scope::Everything => return Ok(()),
            Scope::Only(patterns) => patterns,
        };
        let granted = |key: &String| {
            patterns
                .iter()
                .any(|p| scanned_by(p.text.as_bytes(), key.as_bytes()))
        };
        match keys.iter().find(|key| !granted(key)) {
            None => Ok(()),
            Some(key) => Err(Denial {
                offending: key.clone(),
                message: format!(
                    "key {key:?} is outside this handler's cache grant ({})",
                    self.describe_cache()
                ),
            }),
        }
    }

    /// Checks a node label.
    pub fn check_label(&self, label: &str) -> Result<(), Denial> {
        check_name(&self.labels, "label", "graph_labels", label)
    }

    /// Checks a relation kind.
    pub fn check_relation(&self, kind: &str) -> Result<(), Denial> {
        check_name(&self.relations, "relation kind", "graph_relations", kind)
    }

    fn describe_cache(&self) -> String {
        match &self.cache {
            Scope::Everything => "every key".to_string(),
            Scope::Only(patterns) => format!(
                "cache_keys = {:?}",
                patterns.iter().map(|p| p.text.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names(scope: &Scope<BTreeSet<String>>) -> String {
            match scope {
                Scope::Everything => "everything".into(),
                Scope::Only(set) => format!("{:?}", set.iter().collect::<Vec<_>>()),
            }
        }
        write!(
            f,
            "{}, max_delete_keys = {}, graph_labels = {}, graph_relations = {}",
            self.describe_cache(),
            self.max_delete_keys,
            names(&self.labels),
            names(&self.relations)
        )
    }
}

fn check_name(
    scope: &Scope<BTreeSet<String>>,
    what: &str,
    field: &str,
    name: &str,
) -> Result<(), Denial> {
    match scope {
        Scope::Everything => Ok(()),
        Scope::Only(set) if set.contains(name) => Ok(()),
        Scope::Only(set) => Err(Denial {
            offending: name.to_string(),
            message: format!(
                "{what} {name:?} is outside this handler's graph grant ({field} = {:?})",
                set.iter().collect::<Vec<_>>()
            ),
        }),
    }
}

/// Whether every key `SCAN MATCH pattern` could return is one a pattern of
/// `grants` covers ([`scanned_by`]): [`Containment::Inside`] only; unknown
/// counts as no.
pub fn contains(grants: &[&str], pattern: &str) -> bool {
    containment(grants, pattern.as_bytes()) == Containment::Inside
}

/// The answer to "is every key `pattern` scans also covered by one of
/// `grants`?" (both in the sense of [`scanned_by`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containment {
    /// Yes: every key the pattern scans is granted.
    Inside,
    /// No: the pattern scans `example` and no grant covers it.
    Outside { example: Vec<u8> },
    /// The search ran out of budget; treat as no.
    Unknown,
}

/// Decides containment of `pattern` in the union of `grants`, all Valkey
/// glob patterns. See the module docs.
pub fn containment(grants: &[impl AsRef<[u8]>], pattern: &[u8]) -> Containment {
    let parsed: Vec<Vec<Token>> = grants.iter().map(|g| parse(g.as_ref())).collect();
    let grants: Vec<(&[u8], &[Token])> = grants
        .iter()
        .zip(&parsed)
        .map(|(text, tokens)| (text.as_ref(), tokens.as_slice()))
        .collect();
    containment_of(&grants, pattern)
}

/// Whether `SCAN MATCH pattern` returns `key`: what the matcher matches,
/// except that Valkey answers the pattern `*` alone with every key, the
/// empty one too. A grant covers exactly the keys its pattern would scan.
pub fn scanned_by(pattern: &[u8], key: &[u8]) -> bool {
    pattern == b"*" || crate::glob::matches(pattern, key)
}

/// Most search states one containment question may visit.
const MAX_STATES: usize = 20_000;
/// Most elementary steps one containment question may take (a few
/// milliseconds): a scan is a host call, and its check must stay short.
const MAX_WORK: usize = 2_000_000;
/// Grant patterns with more `*` than this are refused: past 1000 nested
/// `*`, Valkey's matcher gives up and matches nothing, which the search
/// does not model.
const MAX_GRANT_STARS: usize = 64;

/// Containment in the sense of [`scanned_by`], for grants given as (text,
/// parsed tokens).
fn containment_of(grants: &[(&[u8], &[Token])], pattern: &[u8]) -> Containment {
    if grants.iter().any(|(text, _)| *text == b"*") {
        return Containment::Inside;
    }
    if grants
        .iter()
        .any(|(_, tokens)| star_runs(tokens) > MAX_GRANT_STARS)
    {
        return Containment::Unknown;
    }
    let tokens: Vec<&[Token]> = grants.iter().map(|(_, tokens)| *tokens).collect();
    let verdict = search(&tokens, &parse(pattern));
    // The search is over non-empty keys. The empty key is scanned by the
    // empty pattern and by `*`; of the grants left, only the empty pattern
    // covers it.
    let empty_key_scanned = pattern.is_empty() || pattern == b"*";
    let empty_key_granted = grants.iter().any(|(text, _)| text.is_empty());
    if verdict == Containment::Inside && empty_key_scanned && !empty_key_granted {
        return Containment::Outside {
            example: Vec::new(),
        };
    }
    verdict
}

/// One element of a parsed pattern: `*`, or one byte out of a set (a
/// literal, `?`, a class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    Star,
    Byte(ByteSet),
}

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const FULL: ByteSet = ByteSet([u64::MAX; 4]);

    fn single(byte: u8) -> Self {
        let mut set = Self::EMPTY;
        set.insert(byte);
        set
    }

    fn insert(&mut self, byte: u8) {
        self.0[usize::from(byte >> 6)] |= 1 << (byte & 63);
    }

    fn contains(&self, byte: u8) -> bool {
        (self.0[usize::from(byte >> 6)] >> (byte & 63)) & 1 == 1
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    fn complement(self) -> Self {
        ByteSet(self.0.map(|w| !w))
    }

    fn intersect(self, other: Self) -> Self {
        ByteSet([0, 1, 2, 3].map(|i| self.0[i] & other.0[i]))
    }

    fn first(&self) -> Option<u8> {
        (0..=255u8).find(|b| self.contains(*b))
    }
}

/// Reads a pattern the way Valkey's `stringmatchlen` does (see
/// [`crate::glob`]); consecutive `*` are one.
fn parse(pattern: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut p = pattern;
    while let Some(&first) = p.first() {
        match first {
            b'*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                p = &p[1..];
            }
            b'?' => {
                tokens.push(Token::Byte(ByteSet::FULL));
                p = &p[1..];
            }
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut set = ByteSet::EMPTY;
                loop {
                    if p.len() >= 2 && p[0] == b'\\' {
                        set.insert(p[1]);
                        p = &p[2..];
                    } else if p.first() == Some(&b']') {
                        p = &p[1..];
                        break;
                    } else if p.is_empty() {
                        // Unterminated: the class ends the pattern.
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        // Bounds compare as signed bytes; a reversed range is swapped.
                        let (a, b) = (p[0] as i8, p[2] as i8);
                        let (low, high) = if a <= b { (a, b) } else { (b, a) };
                        for byte in low..=high {
                            set.insert(byte as u8);
                        }
                        p = &p[3..];
                    } else {
                        set.insert(p[0]);
                        p = &p[1..];
                    }
                }
                tokens.push(Token::Byte(if negate { set.complement() } else { set }));
            }
            b'\\' if p.len() >= 2 => {
                tokens.push(Token::Byte(ByteSet::single(p[1])));
                p = &p[2..];
            }
            byte => {
                tokens.push(Token::Byte(ByteSet::single(byte)));
                p = &p[1..];
            }
        }
    }
    tokens
}

fn star_runs(tokens: &[Token]) -> usize {
    tokens.iter().filter(|t| **t == Token::Star).count()
}

/// Patterns as one automaton over positions: position `i` of a pattern is
/// "the tokens before `i` are matched"; each pattern ends in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Star,
    Byte(ByteSet),
    Accept,
}

struct Automaton {
    steps: Vec<Step>,
    starts: Vec<u32>,
}

impl Automaton {
    fn new(patterns: &[&[Token]]) -> Self {
        let mut steps = Vec::new();
        let mut starts = Vec::new();
        for tokens in patterns {
            starts.push(steps.len() as u32);
            steps.extend(tokens.iter().map(|t| match t {
                Token::Star => Step::Star,
                Token::Byte(set) => Step::Byte(*set),
            }));
            steps.push(Step::Accept);
        }
        Automaton { steps, starts }
    }

    /// Adds what a `*` matching nothing reaches, then sorts.
    fn close(&self, positions: &mut Vec<u32>) {
        let mut i = 0;
        while i < positions.len() {
            let at = positions[i];
            if self.steps[at as usize] == Step::Star {
                positions.push(at + 1);
            }
            i += 1;
        }
        positions.sort_unstable();
        positions.dedup();
    }

    fn start(&self) -> Vec<u32> {
        let mut set = self.starts.clone();
        self.close(&mut set);
        set
    }

    fn advance(&self, from: &[u32], byte: u8) -> Vec<u32> {
        let mut next = Vec::with_capacity(from.len());
        for &at in from {
            match self.steps[at as usize] {
                Step::Star => next.push(at),
                Step::Byte(set) if set.contains(byte) => next.push(at + 1),
                _ => {}
            }
        }
        self.close(&mut next);
        next
    }

    fn accepts(&self, set: &[u32]) -> bool {
        set.iter()
            .any(|&at| self.steps[at as usize] == Step::Accept)
    }

    /// Whether the set accepts every continuation: it holds a final `*`.
    fn accepts_everything(&self, set: &[u32]) -> bool {
        set.iter().any(|&at| {
            self.steps[at as usize] == Step::Star
                && self.steps.get(at as usize + 1) == Some(&Step::Accept)
        })
    }
}

/// The bytes that stand for all others: two bytes in the same atom are in
/// exactly the same sets, so no pattern tells them apart.
fn atoms<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<u8> {
    let mut blocks = vec![ByteSet::FULL];
    let mut seen = HashSet::new();
    for step in steps {
        let Step::Byte(set) = step else { continue };
        if blocks.len() == 256 || !seen.insert(*set) {
            continue;
        }
        blocks = blocks
            .into_iter()
            .flat_map(|block| [block.intersect(*set), block.intersect(set.complement())])
            .filter(|block| !block.is_empty())
            .collect();
    }
    blocks.iter().filter_map(ByteSet::first).collect()
}

/// Looks for a non-empty key the pattern matches and no grant does.
fn search(grants: &[&[Token]], pattern: &[Token]) -> Containment {
    let granted = Automaton::new(grants);
    let scanned = Automaton::new(&[pattern]);
    // A position is live when some key can still take it to `Accept`.
    let mut live = vec![false; scanned.steps.len()];
    for i in (0..scanned.steps.len()).rev() {
        live[i] = match scanned.steps[i] {
            Step::Accept => true,
            Step::Star => live[i + 1],
            Step::Byte(set) => !set.is_empty() && live[i + 1],
        };
    }
    let alphabet = atoms(granted.steps.iter().chain(&scanned.steps));

    // A state: one position of the pattern, the set of grant positions
    // reached by the same key, and how it was reached (for the example).
    struct State {
        at: u32,
        granted: Vec<u32>,
        parent: Option<usize>,
        byte: u8,
    }
    let example = |states: &[State], mut index: usize, last: u8| {
        let mut key = vec![last];
        while let Some(parent) = states[index].parent {
            key.push(states[index].byte);
            index = parent;
        }
        key.reverse();
        key
    };

    let start = granted.start();
    if granted.accepts_everything(&start) {
        return Containment::Inside;
    }
    let mut states = Vec::new();
    let mut queue = VecDeque::new();
    let mut initial = vec![0];
    scanned.close(&mut initial);
    // The start states stand for the empty key, which matches nothing;
    // they are not marked seen, so reaching them again by a key counts.
    for at in initial {
        if live[at as usize] {
            queue.push_back(states.len());
            states.push(State {
                at,
                granted: start.clone(),
                parent: None,
                byte: 0,
            });
        }
    }
    let mut seen: HashSet<(u32, Vec<u32>)> = HashSet::new();
    let mut work = 0usize;
    while let Some(index) = queue.pop_front() {
        for &byte in &alphabet {
            let state = &states[index];
            work += state.granted.len() + 2;
            if work > MAX_WORK {
                return Containment::Unknown;
            }
            let next = scanned.advance(&[state.at], byte);
            if next.is_empty() {
                continue;
            }
            let next_granted = granted.advance(&state.granted, byte);
            if granted.accepts_everything(&next_granted) {
                continue;
            }
            let granted_here = granted.accepts(&next_granted);
            for at in next {
                if !live[at as usize] {
                    continue;
                }
                if scanned.steps[at as usize] == Step::Accept {
                    if !granted_here {
                        return Containment::Outside {
                            example: example(&states, index, byte),
                        };
                    }
                    continue;
                }
                if seen.insert((at, next_granted.clone())) {
                    if states.len() >= MAX_STATES {
                        return Containment::Unknown;
                    }
                    queue.push_back(states.len());
                    states.push(State {
                        at,
                        granted: next_granted.clone(),
                        parent: Some(index),
                        byte,
                    });
                }
            }
        }
    }
    Containment::Inside
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

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
    fn config_check_names_the_bad_field() {
        assert_eq!(
            config("cache_keys = [\"\"]").check().unwrap_err().0,
            "cache_keys"
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
        assert_eq!(config(&many_stars).check().unwrap_err().0, "cache_keys");
        assert!(
            config("cache_keys = [\"context:*\"]\ngraph_labels = [\"PhaseTransition\"]")
                .check()
                .is_ok()
        );
    }
}
