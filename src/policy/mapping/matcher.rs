//! The state machine that picks a rule for (method, decoded path), as Werkzeug's
//! `StateMachineMatcher` does: static transitions first, then dynamic ones in weight order,
//! with backtracking; a rule whose methods do not include the request's is skipped and the
//! search goes on; a missing trailing slash matches the slash rule (Werkzeug answers it with a
//! redirect, which the gateway treats as that rule).
//!
//! Werkzeug's answer must not depend on the order Console registers its rules, which routes.toml
//! cannot know: [`Matcher::add`] refuses a rule that could make it so (see there).

use std::collections::HashMap;

use super::rule::Part;
use rustc_hash::FxBuildHasher as FxBuild;

#[derive(Debug, Default)]
struct State {
    /// (rule index, methods) in the order the rules were added.
    rules: Vec<(usize, Vec<String>)>,
    /// Keys come from `routes.toml` only, never from a request: an unkeyed hasher (rustc-hash's
    /// FxHasher) is safe here and cheaper than std's SipHash on every request.
    statics: HashMap<String, State, FxBuild>,
    dynamic: Vec<(Part, State)>,
}

impl State {
    /// A rule at or below this state for one of `methods` that ends Werkzeug's search for a
    /// path matching `rest`: it matches the path, or (`slash`) it is the path with a trailing
    /// slash, which Werkzeug answers with its redirect without trying further rules.
    /// Over-cautious: parts that are not told apart by [`Part::disjoint`] and rest-of-path
    /// (`path`) parts are taken as overlapping.
    fn overlapping(&self, rest: &[Part], methods: &[String], slash: bool) -> Option<usize> {
        let shares = |m: &[String]| m.iter().any(|x| methods.contains(x));
        let Some((first, tail)) = rest.split_first() else {
            let here = self.rules.iter().find(|(_, m)| shares(m));
            let behind_slash = || {
                let slash_state = self.statics.get("").filter(|_| slash)?;
                slash_state.rules.iter().find(|(_, m)| shares(m))
            };
            return here.or_else(behind_slash).map(|(rule, _)| *rule);
        };
        if first.is_final {
            return self.any_rule(&shares);
        }
        let statics = self
            .statics
            .iter()
            .filter(|(text, _)| match first.static_text() {
                Some(t) => t == text.as_str(),
                None => first.matches(text).is_some(),
            });
        for (_, next) in statics {
            if let Some(rule) = next.overlapping(tail, methods, slash) {
                return Some(rule);
            }
        }
        for (part, next) in &self.dynamic {
            let may_match = match first.static_text() {
                Some(t) => part.is_final || part.matches(t).is_some(),
                None => part.is_final || !part.disjoint(first),
            };
            if !may_match {
                continue;
            }
            let found = if part.is_final {
                next.any_rule(&shares)
            } else {
                next.overlapping(tail, methods, slash)
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Any rule at or below this state whose methods pass `shares`.
    fn any_rule(&self, shares: &dyn Fn(&[String]) -> bool) -> Option<usize> {
        self.rules
            .iter()
            .find(|(_, m)| shares(m))
            .map(|(rule, _)| *rule)
            .or_else(|| self.statics.values().find_map(|s| s.any_rule(shares)))
            .or_else(|| self.dynamic.iter().find_map(|(_, s)| s.any_rule(shares)))
    }
}

/// Why [`Matcher::add`] refused a rule: a rule behind a rival segment Werkzeug weighs equally,
/// and the kind of path for which Console's registration order of the two decides Werkzeug's
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rival {
    /// The rival rule's index.
    pub rule: usize,
    /// `None`: a path both rules match. `Some(i)`: a path that one of them matches and that
    /// lacks only the trailing slash of rule `i` (the refused rule or the rival): Werkzeug
    /// answers it with the redirect to `i`'s path if it tries `i`'s segment first, and runs the
    /// other rule otherwise.
    pub slash_of: Option<usize>,
}

/// A successful match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule: usize,
    /// Byte ranges of the variable values in the matched path, in rule order (see
    /// [`Matcher::values`]); kept as ranges so that matching allocates no string.
    pub spans: Vec<(usize, usize)>,
    /// The path lacked the rule's trailing slash (Console answers with a 308 to the slash form).
    pub slash_redirect: bool,
}

#[derive(Debug, Default)]
pub struct Matcher {
    root: State,
    names: Vec<Vec<String>>,
}

impl Matcher {
    /// Adds a rule (already parsed) under an index. Methods are upper-case, HEAD included.
    ///
    /// Refused (`Err` naming a rule behind the rival transition, nothing added): a segment that
    /// Werkzeug weighs equally with a different one already at the same place, both able to
    /// match one value (`<uuid:a>` and `<b>`; `<a>-<b>` and `<a>.<b>`), when a path of a method
    /// both rules take could end Werkzeug's search behind either: a rule matches it, or its
    /// trailing slash is all it lacks (Werkzeug then raises the strict-slash redirect instead
    /// of trying the next segment). Werkzeug tries such segments in the order Console
    /// registered its rules, which the mapping does not know: the file's order could pick a
    /// different rule (or a redirect instead of a view) than Console does. Two redirects to the
    /// same path are the same answer: a path only both rules' slash redirects take is no reason.
    pub fn add(&mut self, index: usize, parts: &[Part], methods: Vec<String>) -> Result<(), Rival> {
        if let Some(rival) = self.rival(index, parts, &methods) {
            return Err(rival);
        }
        let mut state = &mut self.root;
        let mut names = Vec::new();
        for part in parts {
            names.extend(part.names.iter().cloned());
            state = if let Some(text) = part.static_text() {
                state.statics.entry(text.to_string()).or_default()
            } else {
                let pos = state
                    .dynamic
                    .iter()
                    .position(|(p, _)| p.same_transition(part));
                let pos = pos.unwrap_or_else(|| {
                    state.dynamic.push((part.clone(), State::default()));
                    // Stable sort by weight, as Werkzeug's `update()` does.
                    state.dynamic.sort_by(|a, b| a.0.cmp_weight(&b.0));
                    state
                        .dynamic
                        .iter()
                        .position(|(p, _)| p.same_transition(part))
                        .unwrap()
                });
                &mut state.dynamic[pos].1
            };
        }
        if self.names.len() <= index {
            self.names.resize(index + 1, Vec::new());
        }
        self.names[index] = names;
        state.rules.push((index, methods));
        Ok(())
    }

    /// A rule behind a transition that competes with one of `parts` (rule `index`) in an order
    /// Werkzeug takes from Console's registration order (see [`Matcher::add`]).
    fn rival(&self, index: usize, parts: &[Part], methods: &[String]) -> Option<Rival> {
        // Without its trailing slash, a rule's path is answered with the redirect to it.
        let without_slash = match parts.split_last() {
            Some((last, before)) if last.static_text() == Some("") => Some(before),
            _ => None,
        };
        let mut state = Some(&self.root);
        for (i, part) in parts.iter().enumerate() {
            let here = state?;
            if let Some(text) = part.static_text() {
                state = here.statics.get(text);
                continue;
            }
            for (other, next) in &here.dynamic {
                if other.same_transition(part)
                    || other.cmp_weight(part) != std::cmp::Ordering::Equal
                    || other.disjoint(part)
                {
                    continue;
                }
                // Only if a path can go on to a rule behind both (Werkzeug backtracks): a path
                // this rule matches that a rival rule matches too, or is the rival's path
                // without its trailing slash ...
                let rest = &parts[i + 1..];
                if let Some(rule) = next.overlapping(rest, methods, false) {
                    return Some(Rival {
                        rule,
                        slash_of: None,
                    });
                }
                if let Some(rule) = next.overlapping(rest, methods, true) {
                    return Some(Rival {
                        rule,
                        slash_of: Some(rule),
                    });
                }
                // ... or this rule's path without its trailing slash that a rival rule matches.
                let rule =
                    without_slash.and_then(|w| next.overlapping(&w[i + 1..], methods, false));
                if let Some(rule) = rule {
                    return Some(Rival {
                        rule,
                        slash_of: Some(index),
                    });
                }
            }
            state = here
                .dynamic
                .iter()
                .find(|(p, _)| p.same_transition(part))
                .map(|(_, next)| next);
        }
        None
    }

    /// Finds the rule for `method` and an already decoded, validated `path` (starts with '/').
    pub fn find(&self, method: &str, path: &str) -> Option<Match> {
        // Byte offset where each segment starts: a final (path-converter) part matches the
        // suffix of `path` from its segment on, which is exactly Werkzeug's "/".join(parts).
        // On the stack for paths of up to STACK segments (a heap list past that): matching a
        // route allocates nothing unless it captures variables.
        const STACK: usize = 32;
        let mut on_stack = [0usize; STACK];
        let mut on_heap: Vec<usize> = Vec::new();
        let mut count = 1; // on_stack[0] = 0: the text before the leading '/'
        for (i, _) in path.bytes().enumerate().filter(|&(_, b)| b == b'/') {
            if count < STACK {
                on_stack[count] = i + 1;
            } else {
                if on_heap.is_empty() {
                    on_heap.extend_from_slice(&on_stack);
                }
                on_heap.push(i + 1);
            }
            count += 1;
        }
        let starts: &[usize] = if count <= STACK {
            &on_stack[..count]
        } else {
            &on_heap
        };
        let w = Walker {
            path,
            starts,
            method,
        };
        let mut values = Vec::new();
        let (rule, slash_redirect) = match w.walk(&self.root, 0, &mut values) {
            Walk::Found(rule) => (rule, false),
            Walk::SlashRequired(rule) => (rule, true),
            Walk::None => return None,
        };
        let base = path.as_ptr() as usize;
        let spans = values
            .iter()
            .map(|v| {
                let start = v.as_ptr() as usize - base;
                (start, start + v.len())
            })
            .collect();
        Some(Match {
            rule,
            spans,
            slash_redirect,
        })
    }

    /// (name, value) of each variable of a match on `path`.
    pub fn values<'p>(&self, m: &Match, path: &'p str) -> Vec<(&str, &'p str)> {
        self.names[m.rule]
            .iter()
            .map(String::as_str)
            .zip(m.spans.iter().map(|&(a, b)| &path[a..b]))
            .collect()
    }
}

enum Walk {
    Found(usize),
    SlashRequired(usize),
    None,
}

fn method_ok(methods: &[String], method: &str) -> bool {
    methods.iter().any(|m| m == method)
}

struct Walker<'a> {
    path: &'a str,
    /// Start offset of each segment (the first segment is the empty text before the leading '/').
    starts: &'a [usize],
    method: &'a str,
}

impl<'a> Walker<'a> {
    fn segment(&self, i: usize) -> &'a str {
        let end = self
            .starts
            .get(i + 1)
            .map(|e| e - 1)
            .unwrap_or(self.path.len());
        &self.path[self.starts[i]..end]
    }

    fn walk(&self, state: &State, i: usize, values: &mut Vec<&'a str>) -> Walk {
        if i == self.starts.len() {
            if let Some((rule, _)) = state.rules.iter().find(|(_, m)| method_ok(m, self.method)) {
                return Walk::Found(*rule);
            }
            if let Some(slash) = state.statics.get("") {
                if let Some((rule, _)) = slash.rules.iter().find(|(_, m)| method_ok(m, self.method))
                {
                    // Werkzeug raises here (a redirect) instead of backtracking.
                    return Walk::SlashRequired(*rule);
                }
            }
            return Walk::None;
        }
        let head = self.segment(i);
        if let Some(next) = state.statics.get(head) {
            match self.walk(next, i + 1, values) {
                Walk::None => {}
                found => return found,
            }
        }
        for (part, next) in &state.dynamic {
            let (target, after) = if part.is_final {
                (&self.path[self.starts[i]..], self.starts.len())
            } else {
                (head, i + 1)
            };
            let mark = values.len();
            if part.matches_into(target, values) {
                match self.walk(next, after, values) {
                    Walk::None => values.truncate(mark),
                    found => return found,
                }
            }
        }
        Walk::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mapping::rule::parse_rule;

    fn build(rules: &[(&str, &[&str])]) -> Matcher {
        let mut m = Matcher::default();
        for (i, (path, methods)) in rules.iter().enumerate() {
            let parts = parse_rule(path).unwrap();
            m.add(i, &parts, methods.iter().map(|s| s.to_string()).collect())
                .unwrap();
        }
        m
    }

    #[test]
    fn static_beats_variable_in_any_order() {
        let m = build(&[
            ("/console/customers/<id>", &["GET"]),
            ("/console/customers/invite", &["GET"]),
        ]);
        assert_eq!(m.find("GET", "/console/customers/invite").unwrap().rule, 1);
        assert_eq!(m.find("GET", "/console/customers/42").unwrap().rule, 0);
    }

    #[test]
    fn paths_of_any_depth_match_the_same_way() {
        let deep: String = (0..40).map(|i| format!("/s{i}")).collect();
        let m = build(&[
            ("/files/<path:rest>", &["GET"]),
            (deep.as_str(), &["GET"]),
            ("/a/<x>/b", &["GET"]),
        ]);
        // Around the number of segments kept on the stack (32) and well past it.
        for n in [1, 30, 31, 32, 33, 40, 100] {
            let path = format!("/files{}", "/d".repeat(n));
            let hit = m
                .find("GET", &path)
                .unwrap_or_else(|| panic!("{n} segments"));
            assert_eq!(
                (hit.rule, m.values(&hit, &path)),
                (0, vec![("rest", &path[7..])])
            );
        }
        assert_eq!(m.find("GET", &deep).map(|h| h.rule), Some(1));
        assert!(m.find("GET", &format!("{deep}/x")).is_none());
        assert!(m.find("GET", &deep[..deep.len() - 4]).is_none());
        let hit = m.find("GET", "/a/x1/b").unwrap();
        assert_eq!(m.values(&hit, "/a/x1/b"), vec![("x", "x1")]);
    }

    #[test]
    fn backtracks_from_a_static_dead_end() {
        let m = build(&[
            ("/console/flags/promotions", &["GET"]),
            ("/console/flags/promotions/<id>/promote", &["POST"]),
            ("/console/flags/<key>/verify", &["POST"]),
        ]);
        let hit = m.find("POST", "/console/flags/promotions/verify").unwrap();
        assert_eq!(hit.rule, 2);
        assert_eq!(
            m.values(&hit, "/console/flags/promotions/verify"),
            vec![("key", "promotions")]
        );
    }

    #[test]
    fn method_takes_part_in_choosing() {
        let m = build(&[("/a/<x>", &["GET"]), ("/a/<int:y>", &["POST"])]);
        assert_eq!(m.find("POST", "/a/5").unwrap().rule, 1);
        assert_eq!(m.find("GET", "/a/5").unwrap().rule, 0);
        assert!(m.find("DELETE", "/a/5").is_none());
    }

    #[test]
    fn int_is_tried_before_string() {
        let m = build(&[("/s/<name>", &["GET"]), ("/s/<int:id>", &["GET"])]);
        assert_eq!(m.find("GET", "/s/7").unwrap().rule, 1);
        assert_eq!(m.find("GET", "/s/x7").unwrap().rule, 0);
    }

    #[test]
    fn missing_trailing_slash_is_the_slash_rule() {
        let m = build(&[("/console/customers/", &["GET"])]);
        let hit = m.find("GET", "/console/customers").unwrap();
        assert!(hit.slash_redirect);
        assert!(m
            .find("GET", "/console/customers/")
            .is_some_and(|h| !h.slash_redirect));
        let m = build(&[("/secrets", &["GET"])]);
        assert!(m.find("GET", "/secrets/").is_none());
    }

    /// Werkzeug redirects to the slash form of the first rule it tries whose trailing slash is
    /// all a path lacks, and does not try the next segment: which of two equally weighted
    /// segments comes first (Console's registration order) decides.
    #[test]
    fn a_rival_behind_a_trailing_slash_is_refused() {
        let get = || vec!["GET".to_string(), "HEAD".to_string()];
        let add = |rules: &[&str]| {
            let mut m = Matcher::default();
            let mut last = Ok(());
            for (i, path) in rules.iter().enumerate() {
                last = m.add(i, &parse_rule(path).unwrap(), get());
            }
            last
        };
        // The slash rule first, then the one it competes with, and the other way round.
        assert_eq!(
            add(&["/c/<v>/audit/", "/c/<uuid:v>/audit"]),
            Err(Rival {
                rule: 0,
                slash_of: Some(0)
            })
        );
        assert_eq!(
            add(&["/c/<uuid:v>/audit", "/c/<v>/audit/"]),
            Err(Rival {
                rule: 0,
                slash_of: Some(1)
            })
        );
        // A path both match is reported as such.
        assert_eq!(
            add(&["/c/<v>/audit/", "/c/<uuid:v>/audit/"]),
            Err(Rival {
                rule: 0,
                slash_of: None
            })
        );
        // No path reaches both: the slash rule's path goes on past the other's.
        assert_eq!(add(&["/c/<v>/", "/c/<uuid:v>/audit"]), Ok(()));
        // The slash form of one under another method: Werkzeug goes on (then 405).
        let mut m = Matcher::default();
        m.add(0, &parse_rule("/c/<v>/").unwrap(), vec!["POST".into()])
            .unwrap();
        assert_eq!(m.add(1, &parse_rule("/c/<uuid:v>").unwrap(), get()), Ok(()));
    }

    #[test]
    fn case_sensitive_and_exact() {
        let m = build(&[("/ops", &["GET"])]);
        assert!(m.find("GET", "/OPS").is_none());
        assert!(m.find("GET", "/ops/x").is_none());
    }

    #[test]
    fn path_converter_spans_segments() {
        let m = build(&[
            ("/static/<path:f>", &["GET"]),
            ("/static/app.css", &["GET"]),
        ]);
        assert_eq!(m.find("GET", "/static/app.css").unwrap().rule, 1);
        assert_eq!(m.find("GET", "/static/a/b.css").unwrap().rule, 0);
    }
}
