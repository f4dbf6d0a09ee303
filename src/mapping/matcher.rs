//! The state machine that picks a rule for (method, decoded path), as Werkzeug's
//! `StateMachineMatcher` does: static transitions first, then dynamic ones in weight order,
//! with backtracking; a rule whose methods do not include the request's is skipped and the
//! search goes on; a missing trailing slash matches the slash rule (Werkzeug answers it with a
//! redirect, which the gateway treats as that rule).

use std::collections::HashMap;

use super::rule::Part;

#[derive(Debug, Default)]
struct State {
    /// (rule index, methods) in the order the rules were added.
    rules: Vec<(usize, Vec<String>)>,
    statics: HashMap<String, State>,
    dynamic: Vec<(Part, State)>,
}

/// A successful match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule: usize,
    /// Variable values in rule order (name, value).
    pub values: Vec<(String, String)>,
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
    pub fn add(&mut self, index: usize, parts: &[Part], methods: Vec<String>) {
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
    }

    /// Finds the rule for `method` and an already decoded, validated `path` (starts with '/').
    pub fn find(&self, method: &str, path: &str) -> Option<Match> {
        let parts: Vec<&str> = path.split('/').collect();
        let mut values = Vec::new();
        let (rule, slash_redirect) = match walk(&self.root, &parts, method, &mut values) {
            Walk::Found(rule) => (rule, false),
            Walk::SlashRequired(rule) => (rule, true),
            Walk::None => return None,
        };
        let names = &self.names[rule];
        Some(Match {
            rule,
            values: names.iter().cloned().zip(values).collect(),
            slash_redirect,
        })
    }

    /// Every rule index the path would match for some method (for "shadowed rule" checks).
    pub fn rule_count(&self) -> usize {
        self.names.len()
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

fn walk(state: &State, parts: &[&str], method: &str, values: &mut Vec<String>) -> Walk {
    let Some((&head, rest)) = parts.split_first() else {
        if let Some((rule, _)) = state.rules.iter().find(|(_, m)| method_ok(m, method)) {
            return Walk::Found(*rule);
        }
        if let Some(slash) = state.statics.get("") {
            if let Some((rule, _)) = slash.rules.iter().find(|(_, m)| method_ok(m, method)) {
                // Werkzeug raises here (a redirect) instead of backtracking.
                return Walk::SlashRequired(*rule);
            }
        }
        return Walk::None;
    };
    if let Some(next) = state.statics.get(head) {
        match walk(next, rest, method, values) {
            Walk::None => {}
            found => return found,
        }
    }
    for (part, next) in &state.dynamic {
        let (target, remaining): (String, &[&str]) = if part.is_final {
            (parts.join("/"), &[])
        } else {
            (head.to_string(), rest)
        };
        if let Some(caps) = part.matches(&target) {
            let mark = values.len();
            values.extend(caps);
            match walk(next, remaining, method, values) {
                Walk::None => values.truncate(mark),
                found => return found,
            }
        }
    }
    Walk::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::rule::parse_rule;

    fn build(rules: &[(&str, &[&str])]) -> Matcher {
        let mut m = Matcher::default();
        for (i, (path, methods)) in rules.iter().enumerate() {
            let parts = parse_rule(path).unwrap();
            m.add(i, &parts, methods.iter().map(|s| s.to_string()).collect());
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
    fn backtracks_from_a_static_dead_end() {
        let m = build(&[
            ("/console/flags/promotions", &["GET"]),
            ("/console/flags/promotions/<id>/promote", &["POST"]),
            ("/console/flags/<key>/verify", &["POST"]),
        ]);
        let hit = m.find("POST", "/console/flags/promotions/verify").unwrap();
        assert_eq!(hit.rule, 2);
        assert_eq!(
            hit.values,
            vec![("key".to_string(), "promotions".to_string())]
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
