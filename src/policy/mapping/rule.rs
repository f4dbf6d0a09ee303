//! Werkzeug rule syntax: `/console/customers/<int:id>/audit` parsed into the parts Werkzeug's
//! state-machine matcher walks, and the matching of one part against one piece of a path.
//!
//! Console is a Flask app, so "which view runs" is decided by Werkzeug. This module mirrors
//! Werkzeug 2.2+ (`werkzeug/routing/rules.py::_parse_rule`, `converters.py`): a rule is split on
//! `/` into parts; a part is static text, or a mix of static text and converters; a `path`
//! converter makes the rest of the rule one final part that consumes the remaining segments.
//! Converter weights order the dynamic transitions exactly as Werkzeug's `Weighting` does.

use std::cmp::Ordering;

/// A Werkzeug converter the mapping may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Converter {
    /// `<name>` / `<string:name>` / `<default:name>`: `[^/]+`
    Default,
    /// `<int:name>`: `\d+` (unsigned; non-ASCII digits are refused before matching)
    Int,
    /// `<uuid:name>`: `[A-Fa-f0-9]{8}-...-[A-Fa-f0-9]{12}`
    Uuid,
    /// `<path:name>`: `[^/].*?`, may span segments
    Path,
}

impl Converter {
    fn weight(self) -> i64 {
        match self {
            Converter::Int => 50,
            Converter::Default | Converter::Uuid => 100,
            Converter::Path => 200,
        }
    }

    fn parse(name: &str) -> Option<Converter> {
        match name {
            "" | "default" | "string" => Some(Converter::Default),
            "int" => Some(Converter::Int),
            "uuid" => Some(Converter::Uuid),
            "path" => Some(Converter::Path),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Piece {
    Literal(String),
    /// A converter; the variable name is kept for captures but ignored by equality of parts.
    Var(Converter),
}

/// One transition of the state machine: a whole segment (or, when `final`, the rest of the path).
#[derive(Debug, Clone)]
pub struct Part {
    pub pieces: Vec<Piece>,
    /// Variable names in order of the `Var` pieces.
    pub names: Vec<String>,
    /// Consumes all remaining segments joined by `/` (a `path` converter is in it).
    pub is_final: bool,
    weight: Weight,
}

/// Werkzeug's `Weighting(-len(static), static_weights, -len(args), arg_weights)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Weight(i64, Vec<(i64, i64)>, i64, Vec<i64>);

impl Part {
    pub fn static_text(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Literal(s)] if !self.is_final => Some(s),
            _ => None,
        }
    }

    /// Werkzeug compares parts by their regex (variable names are numbered, not named).
    pub fn same_transition(&self, other: &Part) -> bool {
        self.pieces == other.pieces
            && self.is_final == other.is_final
            && self.weight == other.weight
    }

    /// No value can match both: their leading (or trailing) literal texts differ, their first
    /// (or last) characters cannot be the same (`x<int:a>` and `<int:b>`: an integer starts with
    /// a digit), or they differ only in an `int` against a `uuid` converter (a uuid has a '-',
    /// an integer none). Anything else is taken as overlapping (an over-cautious answer only
    /// refuses a mapping).
    pub fn disjoint(&self, other: &Part) -> bool {
        fn apart(a: Option<&Piece>, b: Option<&Piece>, f: fn(&str, &str) -> bool) -> bool {
            match (a, b) {
                (Some(Piece::Literal(x)), Some(Piece::Literal(y))) => !f(x, y) && !f(y, x),
                _ => false,
            }
        }
        let int_against_uuid = self.pieces.len() == other.pieces.len()
            && self
                .pieces
                .iter()
                .zip(&other.pieces)
                .all(|pair| match pair {
                    (Piece::Var(a), Piece::Var(b)) => {
                        a == b
                            || matches!(
                                (a, b),
                                (Converter::Int, Converter::Uuid)
                                    | (Converter::Uuid, Converter::Int)
                            )
                    }
                    (a, b) => a == b,
                })
            && self.pieces != other.pieces
            && self
                .pieces
                .iter()
                .filter(|p| matches!(p, Piece::Var(_)))
                .count()
                == 1;
        apart(self.pieces.first(), other.pieces.first(), |x, y| {
            x.starts_with(y)
        }) || apart(self.pieces.last(), other.pieces.last(), |x, y| {
            x.ends_with(y)
        }) || !Edge::of(self.pieces.first(), true).may_meet(Edge::of(other.pieces.first(), true))
            || !Edge::of(self.pieces.last(), false).may_meet(Edge::of(other.pieces.last(), false))
            || int_against_uuid
    }

    pub fn cmp_weight(&self, other: &Part) -> Ordering {
        self.weight.cmp(&other.weight)
    }

    /// Matches the whole `target` (regex `\Z` semantics), returning captured values in order.
    pub fn matches<'a>(&self, target: &'a str) -> Option<Vec<&'a str>> {
        let mut caps = Vec::new();
        if self.matches_into(target, &mut caps) {
            Some(caps)
        } else {
            None
        }
    }

    /// As [`Part::matches`], appending captures to `caps` (left untouched on failure).
    pub fn matches_into<'a>(&self, target: &'a str, caps: &mut Vec<&'a str>) -> bool {
        let mark = caps.len();
        let ok = match_pieces(&self.pieces, target, caps);
        if !ok {
            caps.truncate(mark);
        }
        ok
    }
}

/// What the first (or last) character of a value that a piece matches can be.
#[derive(Debug, Clone, Copy)]
enum Edge {
    Char(char),
    /// `int`: `\d` (Python's, so any Unicode digit; the gateway refuses the non-ASCII ones).
    Digit,
    /// `uuid`: an ASCII hexadecimal digit.
    Hex,
    Any,
}

impl Edge {
    fn of(piece: Option<&Piece>, first: bool) -> Edge {
        match piece {
            Some(Piece::Literal(s)) => {
                let c = if first {
                    s.chars().next()
                } else {
                    s.chars().next_back()
                };
                c.map_or(Edge::Any, Edge::Char)
            }
            Some(Piece::Var(Converter::Int)) => Edge::Digit,
            Some(Piece::Var(Converter::Uuid)) => Edge::Hex,
            _ => Edge::Any,
        }
    }

    fn may_meet(self, other: Edge) -> bool {
        let digit = |c: char| c.is_ascii_digit() || !c.is_ascii();
        match (self, other) {
            (Edge::Char(a), Edge::Char(b)) => a == b,
            (Edge::Char(c), Edge::Digit) | (Edge::Digit, Edge::Char(c)) => digit(c),
            (Edge::Char(c), Edge::Hex) | (Edge::Hex, Edge::Char(c)) => c.is_ascii_hexdigit(),
            _ => true,
        }
    }
}

fn match_pieces<'a>(pieces: &[Piece], s: &'a str, caps: &mut Vec<&'a str>) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return s.is_empty();
    };
    let attempt = |end: usize, caps: &mut Vec<&'a str>| {
        caps.push(&s[..end]);
        if match_pieces(rest, &s[end..], caps) {
            return true;
        }
        caps.pop();
        false
    };
    // Candidate ends in the order Python's regex engine tries them: greedy converters longest
    // first, the lazy `path` converter shortest first. No allocation: this is the hot path.
    match first {
        Piece::Literal(lit) => s
            .strip_prefix(lit.as_str())
            .is_some_and(|r| match_pieces(rest, r, caps)),
        Piece::Var(Converter::Default) => {
            let max = s.find('/').unwrap_or(s.len());
            s[..max]
                .char_indices()
                .rev()
                .any(|(i, c)| attempt(i + c.len_utf8(), caps))
        }
        Piece::Var(Converter::Int) => {
            let max = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            (1..=max).rev().any(|end| attempt(end, caps))
        }
        Piece::Var(Converter::Uuid) => is_uuid(s.get(..36).unwrap_or("")) && attempt(36, caps),
        Piece::Var(Converter::Path) => {
            !s.starts_with('/')
                && s.char_indices()
                    .any(|(i, c)| attempt(i + c.len_utf8(), caps))
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("a rule must start with '/'")]
    NoLeadingSlash,
    #[error("malformed rule near byte {0}: expected <name> or <converter:name>")]
    Malformed(usize),
    #[error("unknown converter '{0}' (expected one of: string, int, uuid, path)")]
    UnknownConverter(String),
    #[error("converter arguments are not supported: '{0}'")]
    ConverterArguments(String),
    #[error("variable '{0}' appears twice")]
    DuplicateVariable(String),
    #[error("an empty segment ('//') never matches: the gateway refuses such requests")]
    EmptySegment,
    #[error("a '.' or '..' segment never matches: the gateway refuses such requests")]
    DotSegment,
    #[error("character {0:?} never matches: the gateway refuses requests whose path contains it")]
    RefusedChar(char),
    #[error("a <path:...> converter followed by a trailing '/' is not supported")]
    PathWithTrailingSlash,
}

/// A path the rule matches: its variables filled with plain values.
pub fn example(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| {
            p.pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Literal(s) => s.as_str(),
                    Piece::Var(Converter::Int) => "1",
                    Piece::Var(Converter::Uuid) => "123e4567-e89b-12d3-a456-426614174000",
                    Piece::Var(Converter::Default | Converter::Path) => "x",
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses a Flask rule into parts, mirroring `Rule._parse_rule`.
pub fn parse_rule(rule: &str) -> Result<Vec<Part>, RuleError> {
    if !rule.starts_with('/') {
        return Err(RuleError::NoLeadingSlash);
    }
    let mut parts = Vec::new();
    let mut names_seen: Vec<String> = Vec::new();
    // The rule's first part is the empty text before the leading '/'.
    let mut cur = Builder::default();
    let bytes = rule.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        match bytes[pos] {
            b'/' => {
                if cur.is_final {
                    cur.push_literal("/");
                } else {
                    parts.push(cur.finish(false));
                    cur = Builder::default();
                }
                pos += 1;
            }
            b'<' => {
                let end = rule[pos..]
                    .find('>')
                    .map(|e| pos + e)
                    .ok_or(RuleError::Malformed(pos))?;
                let inner = &rule[pos + 1..end];
                let (conv, name) = match inner.split_once(':') {
                    Some((c, n)) => (c, n),
                    None => ("", inner),
                };
                if conv.contains('(') {
                    return Err(RuleError::ConverterArguments(conv.to_string()));
                }
                if !is_identifier(name) || (!conv.is_empty() && !is_identifier(conv)) {
                    return Err(RuleError::Malformed(pos));
                }
                let conv = Converter::parse(conv)
                    .ok_or_else(|| RuleError::UnknownConverter(conv.to_string()))?;
                if names_seen.iter().any(|n| n == name) {
                    return Err(RuleError::DuplicateVariable(name.to_string()));
                }
                names_seen.push(name.to_string());
                cur.push_var(conv, name);
                pos = end + 1;
            }
            _ => {
                let end = rule[pos..]
                    .find(['/', '<'])
                    .map(|e| pos + e)
                    .unwrap_or(rule.len());
                let text = &rule[pos..end];
                if let Some(c) = text
                    .chars()
                    .find(|c| crate::policy::target::refused_decoded_char(*c))
                {
                    return Err(RuleError::RefusedChar(c));
                }
                cur.push_literal(text);
                pos = end;
            }
        }
    }
    if cur.is_final && rule.ends_with('/') {
        return Err(RuleError::PathWithTrailingSlash);
    }
    parts.push(cur.finish(true));
    // parts[0] is the empty text before the first '/'; the last part may be "" (trailing slash).
    let last = parts.len() - 1;
    for (i, p) in parts.iter().enumerate().skip(1) {
        if let Some(text) = p.static_text() {
            if text.is_empty() && i != last {
                return Err(RuleError::EmptySegment);
            }
            if text == "." || text == ".." {
                return Err(RuleError::DotSegment);
            }
        }
    }
    Ok(parts)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Default)]
struct Builder {
    pieces: Vec<Piece>,
    names: Vec<String>,
    is_final: bool,
    static_weights: Vec<(i64, i64)>,
    arg_weights: Vec<i64>,
}

impl Builder {
    fn push_literal(&mut self, text: &str) {
        if text != "/" || !self.is_final {
            let n = self.static_weights.len() as i64;
            self.static_weights
                .push((n, -(text.chars().count() as i64)));
        }
        match self.pieces.last_mut() {
            Some(Piece::Literal(prev)) => prev.push_str(text),
            _ => self.pieces.push(Piece::Literal(text.to_string())),
        }
    }

    fn push_var(&mut self, conv: Converter, name: &str) {
        if conv == Converter::Path {
            self.is_final = true;
        }
        self.arg_weights.push(conv.weight());
        self.pieces.push(Piece::Var(conv));
        self.names.push(name.to_string());
    }

    fn finish(self, _last: bool) -> Part {
        let weight = Weight(
            -(self.static_weights.len() as i64),
            self.static_weights,
            -(self.arg_weights.len() as i64),
            self.arg_weights,
        );
        let pieces = match self.pieces.as_slice() {
            [Piece::Literal(s)] if s.is_empty() => vec![],
            _ => self.pieces,
        };
        Part {
            pieces,
            names: self.names,
            is_final: self.is_final,
            weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_and_dynamic_parts() {
        let parts = parse_rule("/console/customers/<int:id>/audit").unwrap();
        let kinds: Vec<Option<&str>> = parts.iter().map(|p| p.static_text()).collect();
        assert_eq!(
            kinds,
            vec![
                Some(""),
                Some("console"),
                Some("customers"),
                None,
                Some("audit")
            ]
        );
        assert_eq!(parts[3].names, vec!["id".to_string()]);
    }

    #[test]
    fn trailing_slash_is_a_final_empty_part() {
        let parts = parse_rule("/console/customers/").unwrap();
        assert_eq!(parts.last().unwrap().static_text(), Some(""));
        assert_eq!(parts.len(), 4);
    }

    #[test]
    fn path_converter_makes_the_rest_final() {
        let parts = parse_rule("/static/<path:filename>").unwrap();
        assert!(parts.last().unwrap().is_final);
        assert_eq!(
            parts.last().unwrap().matches("css/app.css"),
            Some(vec!["css/app.css"])
        );
        let parts = parse_rule("/wiki/<path:page>/edit").unwrap();
        assert_eq!(parts.last().unwrap().matches("a/b/edit"), Some(vec!["a/b"]));
        assert_eq!(parts.last().unwrap().matches("/a/edit"), None);
    }

    #[test]
    fn converters_follow_werkzeug_regexes() {
        let int = parse_rule("/<int:x>").unwrap().pop().unwrap();
        assert!(int.matches("42").is_some());
        assert!(int.matches("-1").is_none());
        assert!(int.matches("4a").is_none());
        let uuid = parse_rule("/<uuid:x>").unwrap().pop().unwrap();
        assert!(uuid
            .matches("123e4567-e89b-12d3-a456-426614174000")
            .is_some());
        assert!(uuid.matches("123e4567e89b12d3a456426614174000").is_none());
        let mixed = parse_rule("/v<int:n>.json").unwrap().pop().unwrap();
        assert_eq!(mixed.matches("v12.json"), Some(vec!["12"]));
        let two = parse_rule("/<a>-<b>").unwrap().pop().unwrap();
        // greedy first converter, as Python's regex engine does
        assert_eq!(two.matches("x-y-z"), Some(vec!["x-y", "z"]));
    }

    #[test]
    fn disjoint_parts_share_no_value() {
        let part = |rule: &str| parse_rule(rule).unwrap().pop().unwrap();
        let disjoint = |a: &str, b: &str| {
            let (a, b) = (part(a), part(b));
            assert_eq!(a.disjoint(&b), b.disjoint(&a));
            a.disjoint(&b)
        };
        // Literals at either end.
        assert!(disjoint("/<a>.json", "/<a>.yaml"));
        assert!(disjoint("/v<a>", "/w<a>"));
        // What a converter's value can start or end with.
        assert!(disjoint("/x<int:a>", "/<int:b>y"));
        assert!(disjoint("/<int:a>", "/x<b>"));
        assert!(disjoint("/<uuid:a>", "/g<b>"));
        assert!(!disjoint("/<uuid:a>", "/f<b>"));
        assert!(!disjoint("/<int:a>", "/5<b>"));
        // An integer has no '-', a uuid has four.
        assert!(disjoint("/<int:a>", "/<uuid:b>"));
        assert!(disjoint("/v<int:a>.txt", "/v<uuid:b>.txt"));
        assert!(!disjoint("/<int:a>", "/<b>"));
        assert!(!disjoint("/<int:a>-<b>", "/<uuid:c>-<d>"));
        assert!(!disjoint("/<a>-<b>", "/<a>.<b>"));
        assert!(!disjoint("/<uuid:a>", "/<b>"));
    }

    #[test]
    fn rejects_bad_rules() {
        assert_eq!(
            parse_rule("console").unwrap_err(),
            RuleError::NoLeadingSlash
        );
        assert_eq!(
            parse_rule("/a/<float:x>").unwrap_err(),
            RuleError::UnknownConverter("float".into())
        );
        assert_eq!(
            parse_rule("/a/<x>/<x>").unwrap_err(),
            RuleError::DuplicateVariable("x".into())
        );
        assert_eq!(parse_rule("/a//b").unwrap_err(), RuleError::EmptySegment);
        assert_eq!(parse_rule("/a/../b").unwrap_err(), RuleError::DotSegment);
        assert_eq!(parse_rule("/a/<x").unwrap_err(), RuleError::Malformed(3));
        assert!(matches!(
            parse_rule("/a b").unwrap_err(),
            RuleError::RefusedChar(' ')
        ));
    }

    #[test]
    fn int_sorts_before_string_before_path() {
        let i = parse_rule("/<int:x>").unwrap().pop().unwrap();
        let s = parse_rule("/<x>").unwrap().pop().unwrap();
        let p = parse_rule("/<path:x>").unwrap().pop().unwrap();
        let st = parse_rule("/v<x>").unwrap().pop().unwrap();
        assert_eq!(i.cmp_weight(&s), Ordering::Less);
        assert_eq!(s.cmp_weight(&p), Ordering::Less);
        assert_eq!(st.cmp_weight(&i), Ordering::Less);
    }
}
