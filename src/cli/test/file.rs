//! A test file (`*.test.toml`) read into cases, or every problem found with its `FILE:LINE:COL`.
//! Names the file refers to that only the mapping or the catalogue can check (a group, a role, a
//! cluster) are checked when the suite is resolved (`run.rs`); everything else is checked here.
//!
//! ```toml
//! [principal.support]                 # a principal the cases name
//! groups = ["raxx-support-team"]      # and/or roles, permissions, break_glass; or admin = "email or id"
//!
//! [[case]]
//! name = "support reads the audit page"
//! who = "support"                     # a [principal.NAME], "no-session", an inline table, or a list
//! request = "GET /console/audit"      # or method = "GET" and path = "/console/audit"
//! expect = "allow"                    # or a list of outcomes, any of which passes
//! reason = "role:console-audit-user"  # optional, as `rule`
//!
//! [[case]]
//! name = "no group but the platform admins and break-glass reaches console-manager's rules"
//! every = { role = "console-manager" } # a statement over every rule it selects
//! who = { every_group_except = ["raxx-platform-admins", "break-glass"] }
//! expect = "deny"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub use super::case::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    principal: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    who: Option<Spanned<toml::Value>>,
    request: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    expect: Option<Spanned<toml::Value>>,
    rule: Option<Spanned<String>>,
    reason: Option<Spanned<String>>,
    #[serde(default)]
    tickets: Vec<Ticket>,
    every: Option<Spanned<Select>>,
    requires_one_of: Option<Spanned<Vec<String>>>,
}

/// Byte offsets to `LINE:COL`, both from 1.
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let line = self.0.partition_point(|s| *s <= offset);
        (line, offset - self.0[line.max(1) - 1] + 1)
    }
}

struct Reader<'a> {
    file: usize,
    name: &'a str,
    lines: Lines,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// A statement's `methods`, each one a rule may have (the mapping's own list): a misspelt
    /// one beside a right one would narrow the statement silently to the rules of the other.
    fn known_methods(&mut self, select: &Spanned<Select>) -> Option<()> {
        use crate::policy::mapping::KNOWN_METHODS;
        let unknown: Vec<&str> = select
            .get_ref()
            .methods
            .iter()
            .map(String::as_str)
            .filter(|m| !KNOWN_METHODS.contains(m))
            .collect();
        if unknown.is_empty() {
            return Some(());
        }
        self.problem(
            select.span().start,
            format!(
                "unknown method {} in `methods` (expected {}; methods are upper-case)",
                unknown.join(", "),
                KNOWN_METHODS.join(", ")
            ),
        );
        None
    }

    fn problem(&mut self, offset: usize, message: String) {
        let (line, col) = self.lines.at(offset);
        self.problems.push(crate::cli::toolbox::diag(
            self.name,
            line,
            col,
            crate::policy::mapping::Severity::Error,
            message,
        ));
    }

    fn strings(&mut self, v: &toml::Value, key: &str, at: usize) -> Vec<String> {
        match v.as_array() {
            Some(items) if items.iter().all(|i| i.is_str()) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => {
                self.problem(at, format!("`{key}` must be a list of strings"));
                Vec::new()
            }
        }
    }

    /// A principal written as a table: `groups`, `roles`, `permissions`, `break_glass`, or
    /// `admin` alone.
    fn principal(&mut self, table: &toml::Table, at: usize) -> Option<Who> {
        let mut groups = Vec::new();
        let mut roles = Vec::new();
        let mut permissions = Vec::new();
        let mut break_glass = false;
        let mut admin = None;
        for (key, v) in table {
            match key.as_str() {
                "groups" => groups = self.strings(v, key, at),
                "roles" => roles = self.strings(v, key, at),
                "permissions" => permissions = self.strings(v, key, at),
                "break_glass" => match v.as_bool() {
                    Some(b) => break_glass = b,
                    None => self.problem(at, "`break_glass` must be true or false".into()),
                },
                "admin" => match v.as_str() {
                    Some(a) if !a.is_empty() => admin = Some(a.to_string()),
                    _ => self.problem(at, "`admin` must be an admin's email or id".into()),
                },
                other => self.problem(
                    at,
                    format!("unknown key `{other}` in a principal: expected `groups`, `roles`, `permissions`, `break_glass` or `admin`"),
                ),
            }
        }
        match admin {
            Some(_) if table.len() > 1 => {
                self.problem(at, "a principal is an `admin` of the database or given by `groups`, `roles`, `permissions` and `break_glass`, not both".into());
                None
            }
            Some(a) => Some(Who::Admin(a)),
            // `{ groups = [] }` is a session holding nothing (an admin in no group); `{}` says
            // nothing and is more likely a mistake.
            None if table.is_empty() => {
                self.problem(at, "an empty principal: give `groups`, `roles`, `permissions` or `break_glass` (`groups = []`: a session holding nothing), or `admin`".into());
                None
            }
            None => Some(Who::Synthetic {
                groups,
                roles,
                permissions,
                break_glass,
            }),
        }
    }

    fn subject(
        &mut self,
        v: &toml::Value,
        at: usize,
        named: &BTreeMap<String, Subject>,
    ) -> Option<Subject> {
        let (line, col) = self.lines.at(at);
        let (label, who) = match v {
            toml::Value::String(s) if s == "no-session" => {
                ("no session".to_string(), Who::NoSession)
            }
            // Where the principal is defined: what a problem with it points to.
            toml::Value::String(s) => match named.get(s) {
                Some(p) => return Some(p.clone()),
                None => {
                    self.problem(
                        at,
                        format!("no [principal.{s}] in this file (or who = \"no-session\")"),
                    );
                    return None;
                }
            },
            toml::Value::Table(t) => {
                let who = self.principal(t, at)?;
                (describe(&who), who)
            }
            _ => {
                self.problem(at, "`who` is a principal's name, \"no-session\", a table (groups, roles, permissions, break_glass, or admin) or a list of these".into());
                return None;
            }
        };
        Some(Subject {
            label,
            who,
            line,
            col,
        })
    }

    fn subjects(
        &mut self,
        who: Option<&Spanned<toml::Value>>,
        case_at: usize,
        named: &BTreeMap<String, Subject>,
    ) -> Option<Subjects> {
        let Some(who) = who else {
            self.problem(
                case_at,
                "a case needs `who`: a principal's name, \"no-session\", or a table".into(),
            );
            return None;
        };
        let at = who.span().start;
        match who.get_ref() {
            toml::Value::Table(t)
                if t.contains_key("every_group_except") || t.contains_key("every_group") =>
            {
                let except = match (t.get("every_group_except"), t.get("every_group"), t.len()) {
                    (Some(v), None, 1) => self.strings(v, "every_group_except", at),
                    (None, Some(toml::Value::Boolean(true)), 1) => Vec::new(),
                    _ => {
                        self.problem(at, "`every_group = true` or `every_group_except = [...]`, alone in its table".into());
                        return None;
                    }
                };
                let (line, col) = self.lines.at(at);
                Some(Subjects::EveryGroup { except, line, col })
            }
            toml::Value::Array(items) if items.is_empty() => {
                self.problem(at, "`who` lists no principal".into());
                None
            }
            toml::Value::Array(items) => {
                let all: Vec<Option<Subject>> =
                    items.iter().map(|i| self.subject(i, at, named)).collect();
                all.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Subjects::List)
            }
            v => self.subject(v, at, named).map(|s| Subjects::List(vec![s])),
        }
    }

    fn expect(&mut self, raw: &RawCase, case_at: usize) -> Option<Expect> {
        let Some(e) = &raw.expect else {
            self.problem(
                case_at,
                format!(
                    "a case needs `expect`: one of {} (or a list of them)",
                    names()
                ),
            );
            return None;
        };
        let at = e.span().start;
        let words: Vec<&str> = match e.get_ref() {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_str()) => {
                items.iter().filter_map(|i| i.as_str()).collect()
            }
            _ => vec![""],
        };
        let mut outcomes = Vec::new();
        for w in words {
            match Label::parse(w) {
                Some(l) => outcomes.push(l),
                None => {
                    self.problem(
                        at,
                        format!("unknown outcome {w:?}: expected one of {}", names()),
                    );
                    return None;
                }
            }
        }
        if raw.rule.is_none()
            && raw.reason.is_none()
            && Label::ALL.iter().all(|l| outcomes.contains(l))
        {
            self.problem(
                at,
                "`expect` lists every outcome: a case any decision passes tests nothing (list the outcomes it may have)".into(),
            );
            return None;
        }
        Some(Expect {
            outcomes,
            rule: raw.rule.as_ref().map(|r| r.get_ref().clone()),
            reason: raw.reason.as_ref().map(|r| r.get_ref().clone()),
        })
    }

    fn case(&mut self, raw: Spanned<RawCase>, named: &BTreeMap<String, Subject>) -> Option<Case> {
        let case_at = raw.span().start;
        let (line, col) = self.lines.at(case_at);
        let raw = raw.into_inner();
        let request = match (&raw.request, &raw.method, &raw.path) {
            (Some(r), None, None) => match r.get_ref().split_once(' ') {
                Some((m, p)) if !m.is_empty() && !p.is_empty() && !p.contains(' ') => {
                    Some((m.to_string(), p.to_string()))
                }
                _ => {
                    self.problem(r.span().start, "`request` is \"METHOD TARGET\", e.g. \"GET /console/audit\" (the target exactly as a client sends it)".into());
                    return None;
                }
            },
            (None, Some(m), Some(p)) => Some((m.get_ref().clone(), p.get_ref().clone())),
            (None, None, None) => None,
            _ => {
                self.problem(
                    case_at,
                    "a request is `request = \"METHOD TARGET\"`, or `method` and `path` together"
                        .into(),
                );
                return None;
            }
        };
        let kind = match (request, raw.every.as_ref(), raw.requires_one_of.as_ref()) {
            (Some((method, path)), None, None) => {
                let who = self.subjects(raw.who.as_ref(), case_at, named);
                let expect = self.expect(&raw, case_at);
                Kind::Request {
                    method,
                    path,
                    who: who?,
                    expect: expect?,
                }
            }
            (None, Some(select), None) => {
                self.known_methods(select)?;
                if let Some(r) = &raw.rule {
                    self.problem(r.span().start, "`rule` on a statement over every rule: each selected rule decides its own requests (select it with `every = { path = ... }`)".into());
                    return None;
                }
                let who = self.subjects(raw.who.as_ref(), case_at, named);
                let expect = self.expect(&raw, case_at);
                Kind::Every {
                    select: select.get_ref().clone(),
                    who: who?,
                    expect: expect?,
                }
            }
            (None, Some(select), Some(roles)) => {
                self.known_methods(select)?;
                if raw.who.is_some()
                    || raw.expect.is_some()
                    || raw.rule.is_some()
                    || raw.reason.is_some()
                {
                    self.problem(roles.span().start, "`requires_one_of` asks its own principal (every role but these): no `who`, `expect`, `rule` or `reason` beside it".into());
                    return None;
                }
                if roles.get_ref().is_empty() {
                    self.problem(roles.span().start, "`requires_one_of` lists no role".into());
                    return None;
                }
                if !raw.tickets.is_empty() {
                    self.problem(roles.span().start, "`tickets` beside `requires_one_of` would change nothing: its principal holds every role but those".into());
                    return None;
                }
                Kind::RequiresOneOf {
                    select: select.get_ref().clone(),
                    roles: roles.get_ref().clone(),
                }
            }
            (None, None, Some(roles)) => {
                self.problem(
                    roles.span().start,
                    "`requires_one_of` needs `every = { ... }`: the rules it is about".into(),
                );
                return None;
            }
            (Some(_), _, _) => {
                self.problem(case_at, "a case is one request (`request`) or a statement over every rule (`every`), not both".into());
                return None;
            }
            (None, None, None) => {
                self.problem(case_at, "a case needs `request = \"METHOD TARGET\"` (or `method` and `path`), or `every = { ... }`".into());
                return None;
            }
        };
        let name = raw.name.clone().unwrap_or_else(|| default_name(&kind));
        Some(Case {
            file: self.file,
            line,
            col,
            name,
            kind,
            tickets: raw.tickets,
        })
    }
}

/// Reads `file` (index `index` of the suite) into its cases, or its problems.
pub fn read(index: usize, file: &TestFile) -> Result<Vec<Case>, Vec<Problem>> {
    let mut r = Reader {
        file: index,
        name: &file.name,
        lines: Lines::of(""),
        problems: Vec::new(),
    };
    let text = match std::str::from_utf8(&file.bytes) {
        Ok(t) => t,
        Err(e) => {
            r.problem(0, format!("not UTF-8: {e}"));
            return Err(r.problems);
        }
    };
    r.lines = Lines::of(text);
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            r.problem(at, e.message().trim().to_string());
            return Err(r.problems);
        }
    };
    let mut named = BTreeMap::new();
    for (name, v) in &raw.principal {
        let at = v.span().start;
        if name == "no-session" {
            r.problem(
                at,
                "\"no-session\" names a request without a session: call the principal otherwise"
                    .into(),
            );
            continue;
        }
        let Some(table) = v.get_ref().as_table() else {
            r.problem(at, format!("[principal.{name}] must be a table"));
            continue;
        };
        if let Some(who) = r.principal(table, at) {
            let (line, col) = r.lines.at(at);
            named.insert(
                name.clone(),
                Subject {
                    label: name.clone(),
                    who,
                    line,
                    col,
                },
            );
        }
    }
    // A name given twice: a failure would not say which case failed.
    let mut names = BTreeMap::new();
    for c in &raw.case {
        if let Some(name) = &c.get_ref().name {
            let (line, _) = r.lines.at(c.span().start);
            if let Some(first) = names.insert(name.clone(), line) {
                r.problem(
                    c.span().start,
                    format!("a second case named {name:?} (the first is on line {first}): give each case a name of its own"),
                );
            }
        }
    }
    let mut cases = Vec::new();
    let mut unnamed = Vec::new();
    for c in raw.case {
        let given = c.get_ref().name.is_some();
        if let Some(case) = r.case(c, &named) {
            unnamed.push(!given);
            cases.push(case);
        }
    }
    // A name made from an unnamed case's request that another case has too: the line tells them
    // apart (a report, JUnit's above all, names a case by its name).
    // (An inline array puts two on one line: then its column too; a name a case was given
    // is never taken.)
    let mut count = BTreeMap::<String, usize>::new();
    for c in &cases {
        *count.entry(c.name.clone()).or_default() += 1;
    }
    let mut taken: std::collections::BTreeSet<String> = cases
        .iter()
        .zip(&unnamed)
        .filter(|(c, unnamed)| !**unnamed || count[&c.name] == 1)
        .map(|(c, _)| c.name.clone())
        .collect();
    for (c, unnamed) in cases.iter_mut().zip(unnamed) {
        if unnamed && count[&c.name] > 1 {
            let base = std::mem::take(&mut c.name);
            let mut name = format!("{base} (line {})", c.line);
            if taken.contains(&name) {
                name = format!("{base} (line {}, column {})", c.line, c.col);
            }
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base} (line {}, column {}, {n})", c.line, c.col);
                n += 1;
            }
            taken.insert(name.clone());
            c.name = name;
        }
    }
    if cases.is_empty() && r.problems.is_empty() {
        r.problem(
            0,
            "no [[case]]: a test file that tests nothing passes nothing".into(),
        );
    }
    if r.problems.is_empty() {
        Ok(cases)
    } else {
        Err(r.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> TestFile {
        TestFile {
            name: "t.test.toml".into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        read(0, &file(text))
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn cases_are_read_with_their_lines_and_principals() {
        let cases = read(
            0,
            &file(
                r#"
[principal.support]
groups = ["raxx-support-team"]

[[case]]
who = "support"
request = "GET /console/audit"
expect = "allow"

[[case]]
name = "named"
who = [{ roles = ["r"] }, "no-session"]
method = "POST"
path = "/x?y=1"
expect = ["deny", "login"]
reason = "missing_role"

[[case]]
every = { cluster = "S8" }
requires_one_of = ["a"]
"#,
            ),
        )
        .unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!((cases[0].line, cases[0].col), (5, 1));
        assert_eq!(cases[0].name, "GET /console/audit as support: allow");
        let Kind::Request {
            who: Subjects::List(who),
            expect,
            method,
            path,
        } = &cases[1].kind
        else {
            panic!("{:?}", cases[1].kind)
        };
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/x?y=1"));
        assert_eq!(who[0].label, "roles r");
        assert_eq!(who[1].who, Who::NoSession);
        assert_eq!(expect.outcomes, [Label::Deny, Label::Login]);
        assert_eq!(expect.reason.as_deref(), Some("missing_role"));
        assert!(
            matches!(&cases[2].kind, Kind::RequiresOneOf { select, .. } if select.cluster.as_deref() == Some("S8"))
        );
    }

    #[test]
    fn every_problem_is_located() {
        let all = problems(
            "[[case]]\nwho = \"nobody\"\nrequest = \"GET /a\"\nexpect = \"allow\"\n\n[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"alow\"\n\n[[case]]\nwho = { groups = [\"g\"], admin = \"a@b\" }\nrequest = \"GET /a\"\nexpect = \"deny\"\n",
        );
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(
            all[0].starts_with("t.test.toml:2:7: no [principal.nobody]"),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with("t.test.toml:9:10: unknown outcome \"alow\""),
            "{all:#?}"
        );
        assert!(
            all[2].starts_with("t.test.toml:12:7: a principal is an `admin`"),
            "{all:#?}"
        );
        let all = problems("[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"deny\"\nexpected = 1\n");
        assert!(
            all[0].starts_with("t.test.toml:5:1: unknown field `expected`"),
            "{all:#?}"
        );
        let all = problems("[[case]\n");
        assert!(all[0].starts_with("t.test.toml:1:"), "{all:#?}");
        assert!(problems("")[0].contains("no [[case]]"));
        let all = problems(
            "[[case]]\nevery = {}\nrequires_one_of = [\"a\"]\ntickets = [{ customer = 1 }]\n",
        );
        assert!(
            all[0].starts_with("t.test.toml:3:19: `tickets` beside"),
            "{all:#?}"
        );
        let all = problems(
            "[[case]]\nwho = \"no-session\"\nevery = {}\nexpect = \"deny\"\nrule = \"/a\"\n",
        );
        assert!(
            all[0].starts_with("t.test.toml:5:8: `rule` on a statement"),
            "{all:#?}"
        );
        // A misspelt method beside a right one would narrow a statement silently.
        let all = problems(
            "[[case]]\nwho = \"no-session\"\nevery = { cluster = \"S8\", methods = [\"GET\", \"Post\"] }\nexpect = \"deny\"\n\n[[case]]\nevery = { methods = [\"POTS\"] }\nrequires_one_of = [\"a\"]\n",
        );
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0].starts_with("t.test.toml:3:9: unknown method Post in `methods`"),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with("t.test.toml:7:9: unknown method POTS"),
            "{all:#?}"
        );
        // An `expect` any decision passes, and a name given twice.
        let every: Vec<String> = Label::ALL
            .iter()
            .map(|l| format!("{:?}", l.as_str()))
            .collect();
        let all = problems(&format!(
            "[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = [{}]\n",
            every.join(", ")
        ));
        assert!(
            all[0].starts_with("t.test.toml:4:10: `expect` lists every outcome"),
            "{all:#?}"
        );
        let all = problems(
            "[[case]]\nname = \"n\"\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"login\"\n\n[[case]]\nname = \"n\"\nwho = \"no-session\"\nrequest = \"GET /b\"\nexpect = \"login\"\n",
        );
        assert!(
            all[0]
                .starts_with("t.test.toml:7:1: a second case named \"n\" (the first is on line 1)"),
            "{all:#?}"
        );
    }

    /// Two unnamed cases asking the same, or one whose made name another case was given: each
    /// made name gets its line, so no two cases of a report share a name.
    #[test]
    fn an_unnamed_case_whose_name_another_has_gets_its_line() {
        let case = "[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"login\"\n\n";
        let text = format!(
            "{case}{case}[[case]]\nname = \"GET /b as no session: login\"\nwho = \"no-session\"\nrequest = \"GET /c\"\nexpect = \"login\"\n\n[[case]]\nwho = \"no-session\"\nrequest = \"GET /b\"\nexpect = \"login\"\n"
        );
        let names: Vec<String> = read(0, &file(&text))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "GET /a as no session: login (line 1)",
                "GET /a as no session: login (line 6)",
                "GET /b as no session: login",
                "GET /b as no session: login (line 17)",
            ]
        );
        // Two on one line (an inline array), and a name a case was given that a made one
        // would take.
        let same = "{ who = \"no-session\", request = \"GET /a\", expect = \"login\" }";
        let text = format!("case = [{same}, {same}]\n\n[principal.p]\ngroups = []\n");
        let names: Vec<String> = read(0, &file(&text))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1], "{names:?}");
        let text = "[[case]]\nname = \"GET /a as no session: login (line 7)\"\nwho = \"no-session\"\nrequest = \"GET /c\"\nexpect = \"login\"\n\n[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"login\"\n\n[[case]]\nwho = \"no-session\"\nrequest = \"GET /a\"\nexpect = \"login\"\n";
        let names: std::collections::BTreeSet<String> = read(0, &file(text))
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
