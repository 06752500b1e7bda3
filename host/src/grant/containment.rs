//! Scan-pattern containment: can `SCAN MATCH pattern` return a key that
//! no granted pattern covers?
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

use std::collections::{HashSet, VecDeque};

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
pub const MAX_GRANT_STARS: usize = 64;

/// Containment in the sense of [`scanned_by`], for grants given as (text,
/// parsed tokens).
pub fn containment_of(grants: &[(&[u8], &[Token])], pattern: &[u8]) -> Containment {
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
pub enum Token {
    Star,
    Byte(ByteSet),
}

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const FULL: ByteSet = ByteSet([u64::MAX; 4]);

    pub(super) fn single(byte: u8) -> Self {
        let mut set = Self::EMPTY;
        set.insert(byte);
        set
    }

    pub(super) fn insert(&mut self, byte: u8) {
        self.0[usize::from(byte >> 6)] |= 1 << (byte & 63);
    }

    pub(super) fn contains(&self, byte: u8) -> bool {
        (self.0[usize::from(byte >> 6)] >> (byte & 63)) & 1 == 1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    pub(super) fn complement(self) -> Self {
        ByteSet(self.0.map(|w| !w))
    }

    pub(super) fn intersect(self, other: Self) -> Self {
        ByteSet([0, 1, 2, 3].map(|i| self.0[i] & other.0[i]))
    }

    pub(super) fn first(&self) -> Option<u8> {
        (0..=255u8).find(|b| self.contains(*b))
    }
}

/// Reads a pattern the way Valkey's `stringmatchlen` does (see
/// [`crate::glob`]); consecutive `*` are one.
pub fn parse(pattern: &[u8]) -> Vec<Token> {
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

pub fn star_runs(tokens: &[Token]) -> usize {
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

pub(super) struct Automaton {
    steps: Vec<Step>,
    starts: Vec<u32>,
}

impl Automaton {
    pub(super) fn new(patterns: &[&[Token]]) -> Self {
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
    pub(super) fn close(&self, positions: &mut Vec<u32>) {
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

    pub(super) fn start(&self) -> Vec<u32> {
        let mut set = self.starts.clone();
        self.close(&mut set);
        set
    }

    pub(super) fn advance(&self, from: &[u32], byte: u8) -> Vec<u32> {
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

    pub(super) fn accepts(&self, set: &[u32]) -> bool {
        set.iter()
            .any(|&at| self.steps[at as usize] == Step::Accept)
    }

    /// Whether the set accepts every continuation: it holds a final `*`.
    pub(super) fn accepts_everything(&self, set: &[u32]) -> bool {
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
