//! Loading `routes.toml`: the raw structs that mirror the file, and the [`Loader`] that checks
//! them one concern at a time (TOML, `[defaults]`, clusters, then each route: methods, access,
//! cluster and mode, names, what the access takes, `customer_param`, pending decisions, its
//! place in the matcher) and compiles them into a [`Mapping`] or every error found.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::matcher::Matcher;
use super::{
    rule, version_of, Access, Cluster, Diagnostic, LoadError, Mapping, Meta, Mode, ModeFrom, Route,
    Severity,
};

// Unknown keys are errors. They are gathered (`unknown`) rather than refused by serde's
// `deny_unknown_fields`, which stops at the first: `check` reports every problem of a file.
#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    cluster: BTreeMap<String, Spanned<RawCluster>>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Deserialize)]
struct RawCluster {
    title: Option<String>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    blocked_by: Vec<Spanned<String>>,
    note: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
struct RawDefaults {
    mode: Option<Spanned<String>>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// The keys of a table that are not fields of its struct.
type Unknown = std::collections::BTreeMap<String, toml::Value>;

const FILE_KEYS: &[&str] = &["defaults", "route", "cluster"];
const CLUSTER_KEYS: &[&str] = &["title", "mode", "blocked_by", "note"];
const DEFAULTS_KEYS: &[&str] = &["mode"];
const ROUTE_KEYS: &[&str] = &[
    "methods",
    "path",
    "roles",
    "permissions",
    "access",
    "mode",
    "customer_param",
    "blueprint",
    "cluster",
    "legacy",
    "totp",
    "pending",
    "guess",
    "note",
];

/// An error for each key of `unknown`, at the first line from `from` that assigns it or opens a
/// table of that name: up to the next table header when `from` starts a table (`Some`), in the
/// whole file for the file's own keys (`None`).
fn unknown_keys(
    text: &str,
    from: Option<usize>,
    unknown: &Unknown,
    expected: &[&str],
    lines: &Lines,
) -> Vec<Diagnostic> {
    let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    unknown
        .keys()
        .map(|key| {
            let at = key_offset(text, from, key).unwrap_or(from.unwrap_or(0));
            lines.at(
                at,
                Severity::Error,
                format!(
                    "unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                ),
            )
        })
        .collect()
}

/// Where `key` is written in the table whose text starts at `from` (`None`: the file).
fn key_offset(text: &str, from: Option<usize>, key: &str) -> Option<usize> {
    let mut offset = from.unwrap_or(0);
    for (i, line) in text.get(offset..)?.split_inclusive('\n').enumerate() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let header = body.starts_with('[');
        if from.is_some() && header && i > 0 {
            // The next table: the key is not in this one.
            return None;
        }
        let name = body.trim_start_matches('[').trim_start_matches('"');
        if let Some(rest) = name.strip_prefix(key) {
            let rest = rest.trim_start_matches('"').trim_start();
            if rest.starts_with('=') || rest.starts_with(']') || rest.starts_with('.') {
                return Some(offset + indent);
            }
        }
        offset += line.len();
    }
    None
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    methods: Spanned<Vec<Spanned<String>>>,
    path: Spanned<String>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    permissions: Vec<Spanned<String>>,
    access: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    customer_param: Option<Spanned<String>>,
    blueprint: Option<String>,
    cluster: Option<Spanned<String>>,
    legacy: Option<String>,
    #[serde(default)]
    totp: bool,
    pending: Option<Spanned<String>>,
    guess: Option<String>,
    note: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// The methods a rule may have (upper-case, as a request line writes them).
pub(crate) const KNOWN_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

struct Lines<'a> {
    file: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(file: &'a str, text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { file, starts }
    }

    fn at(&self, offset: usize, severity: Severity, message: impl Into<String>) -> Diagnostic {
        let line = self.starts.partition_point(|&s| s <= offset);
        let col = offset - self.starts[line - 1] + 1;
        Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            severity,
            message: message.into(),
        }
    }
}

/// One pass over a mapping file: what it found so far (errors and warnings in file order, the
/// clusters, the routes and the matcher they are placed in). One method per concern; the
/// diagnostics come out in the order the checks run, route by route.
pub(super) struct Loader<'a> {
    text: &'a str,
    lines: Lines<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    clusters: BTreeMap<String, Cluster>,
    default_mode: Mode,
    routes: Vec<Route>,
    matcher: Matcher,
    /// (method, rule signature) -> index of the route that takes it: duplicate and shadowing
    /// checks.
    seen: HashMap<(String, String), usize>,
}

/// What the checks of one route agree on before it is placed: the values the later checks read.
struct Checked {
    path: String,
    parts: Option<Vec<rule::Part>>,
    methods: Vec<String>,
    access: Access,
}

impl<'a> Loader<'a> {
    /// Compiles mapping text; `name` is used in diagnostics, `path` is the mapping's file.
    pub(super) fn compile(name: &'a str, path: &Path, text: &'a str) -> Result<Mapping, LoadError> {
        let mut loader = Loader {
            text,
            lines: Lines::new(name, text),
            errors: Vec::new(),
            warnings: Vec::new(),
            clusters: BTreeMap::new(),
            default_mode: Mode::Enforce,
            routes: Vec::new(),
            matcher: Matcher::default(),
            seen: HashMap::new(),
        };
        let raw = loader.parse_toml()?;
        loader.errors.extend(unknown_keys(
            text,
            None,
            &raw.unknown,
            FILE_KEYS,
            &loader.lines,
        ));
        loader.defaults(raw.defaults.as_ref());
        for (name, spanned) in &raw.cluster {
            loader.cluster(name, spanned);
        }
        if raw.route.is_empty() {
            loader.error(
                0,
                "the mapping has no [[route]]: every request would be denied",
            );
        }
        for spanned in &raw.route {
            loader.route(spanned);
        }
        loader.finish(path)
    }

    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors
            .push(self.lines.at(offset, Severity::Error, message));
    }

    /// The file as TOML, or its one syntax error.
    fn parse_toml(&self) -> Result<RawFile, LoadError> {
        toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            // toml's message repeats the location and source line; keep only the first line.
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            LoadError {
                diagnostics: vec![self.lines.at(offset, Severity::Error, msg)],
            }
        })
    }

    /// `[defaults]`: its keys and the default mode.
    fn defaults(&mut self, defaults: Option<&Spanned<RawDefaults>>) {
        if let Some(d) = defaults {
            self.errors.extend(unknown_keys(
                self.text,
                Some(d.span().start),
                &d.get_ref().unknown,
                DEFAULTS_KEYS,
                &self.lines,
            ));
        }
        self.default_mode = match defaults.and_then(|d| d.get_ref().mode.as_ref()) {
            None => Mode::Enforce,
            Some(m) => self.parse_mode(m).unwrap_or(Mode::Enforce),
        };
    }

    /// One `[cluster.NAME]`: its keys, mode and blockers.
    fn cluster(&mut self, name: &str, spanned: &Spanned<RawCluster>) {
        let start = spanned.span().start;
        let c = spanned.get_ref();
        self.errors.extend(unknown_keys(
            self.text,
            Some(start),
            &c.unknown,
            CLUSTER_KEYS,
            &self.lines,
        ));
        let mode = c.mode.as_ref().and_then(|m| self.parse_mode(m));
        let blocked_by = self.blockers(&c.blocked_by);
        let pos = self.lines.at(start, Severity::Error, "");
        self.clusters.insert(
            name.to_string(),
            Cluster {
                name: name.to_string(),
                title: c.title.clone(),
                mode,
                blocked_by,
                note: c.note.clone(),
                line: pos.line,
                col: pos.col,
            },
        );
    }

    /// A cluster's `blocked_by`: names without surrounding blanks, each listed once.
    fn blockers(&mut self, listed: &[Spanned<String>]) -> Vec<String> {
        let mut blocked_by = Vec::new();
        for b in listed {
            let id = b.get_ref();
            if id.trim().is_empty() || id.trim() != id {
                self.error(
                    b.span().start,
                    format!("{id:?} is not a valid blocker name"),
                );
            } else if blocked_by.contains(id) {
                self.error(b.span().start, format!("blocker {id} is listed twice"));
            } else {
                blocked_by.push(id.clone());
            }
        }
        blocked_by
    }

    /// One `[[route]]`: every check in file order, then its place in the matcher when it has no
    /// error, then the route itself.
    fn route(&mut self, spanned: &Spanned<RawRoute>) {
        let start = spanned.span().start;
        let r = spanned.get_ref();
        let index = self.routes.len();
        let before = self.errors.len();
        self.errors.extend(unknown_keys(
            self.text,
            Some(start),
            &r.unknown,
            ROUTE_KEYS,
            &self.lines,
        ));
        let path = r.path.get_ref().clone();
        let parts = self.rule_parts(r, &path);
        let methods = self.methods(r);
        // None: an access this file misspelt (reported here; what it takes is not checked).
        let known_access = self.access(r);
        let access = known_access.unwrap_or(Access::Protected);
        self.cluster_declared(r);
        let (mode, mode_from) = self.mode(r);
        let (roles, permissions) = self.names(r);
        // A misspelt access or key: what the rule takes is not checked (it says nothing of
        // what the author meant).
        let known_access = known_access.filter(|_| r.unknown.is_empty());
        self.what_access_takes(start, known_access, access, &roles, &permissions);
        let checked = Checked {
            path,
            parts,
            methods,
            access,
        };
        let customer_param = self.customer_param(r, &checked);
        self.pending(r, &checked);
        self.place(r, start, index, before, &checked);
        let Checked {
            path,
            methods,
            access,
            ..
        } = checked;
        let pos = self.lines.at(start, Severity::Error, "");
        self.routes.push(Route {
            index,
            label: format!("{} {}", methods.join(","), path).into(),
            methods,
            path,
            roles: roles.into_iter().map(Into::into).collect(),
            permissions: permissions.into_iter().map(Into::into).collect(),
            access,
            mode,
            mode_from,
            customer_param,
            line: pos.line,
            col: pos.col,
            meta: Meta {
                blueprint: r.blueprint.clone(),
                cluster: r.cluster.as_ref().map(|c| c.get_ref().clone()),
                legacy: r.legacy.clone(),
                totp: r.totp,
                pending: r.pending.as_ref().map(|p| p.get_ref().clone()),
                guess: r.guess.clone(),
                note: r.note.clone(),
            },
        });
    }

    /// The route's path as a Flask rule, or an error.
    fn rule_parts(&mut self, r: &RawRoute, path: &str) -> Option<Vec<rule::Part>> {
        match rule::parse_rule(path) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(r.path.span().start, format!("path {path:?}: {e}"));
                None
            }
        }
    }

    /// The route's methods: at least one, each known and listed once.
    fn methods(&mut self, r: &RawRoute) -> Vec<String> {
        let mut methods = Vec::new();
        if r.methods.get_ref().is_empty() {
            self.error(
                r.methods.span().start,
                "methods is empty: the rule can never match",
            );
        }
        for m in r.methods.get_ref() {
            let name = m.get_ref();
            if !KNOWN_METHODS.contains(&name.as_str()) {
                self.error(
                    m.span().start,
                    format!(
                        "unknown method {name:?} (expected one of {}; methods are upper-case)",
                        KNOWN_METHODS.join(", ")
                    ),
                );
            } else if methods.contains(name) {
                self.error(m.span().start, format!("method {name} is listed twice"));
            } else {
                methods.push(name.clone());
            }
        }
        methods
    }

    /// The route's access (protected when omitted), or `None` when misspelt (reported).
    fn access(&mut self, r: &RawRoute) -> Option<Access> {
        match &r.access {
            None => Some(Access::Protected),
            Some(a) => match a.get_ref().as_str() {
                "protected" => Some(Access::Protected),
                "public" => Some(Access::Public),
                "machine" => Some(Access::Machine),
                "gone" => Some(Access::Gone),
                other => {
                    self.error(
                        a.span().start,
                        format!("unknown access {other:?} (expected \"public\", \"machine\" or \"gone\"; omit it for a protected route)"),
                    );
                    None
                }
            },
        }
    }

    /// A cluster the file does not declare, once it declares any: a misspelt name would
    /// silently drop the cluster's mode from the route.
    fn cluster_declared(&mut self, r: &RawRoute) {
        if let Some(c) = &r.cluster {
            if !self.clusters.is_empty() && !self.clusters.contains_key(c.get_ref()) {
                let message = format!(
                    "cluster {:?} is not declared (declared: {}; add a [cluster.{}] table)",
                    c.get_ref(),
                    self.clusters.keys().cloned().collect::<Vec<_>>().join(", "),
                    c.get_ref()
                );
                self.error(c.span().start, message);
            }
        }
    }

    /// The route's mode and where it comes from: its own, else its cluster's, else `[defaults]`.
    fn mode(&mut self, r: &RawRoute) -> (Mode, ModeFrom) {
        let cluster_mode = r
            .cluster
            .as_ref()
            .and_then(|c| self.clusters.get(c.get_ref()))
            .and_then(|c: &Cluster| c.mode);
        match (&r.mode, cluster_mode) {
            (Some(m), _) => (
                self.parse_mode(m).unwrap_or(self.default_mode),
                ModeFrom::Route,
            ),
            (None, Some(m)) => (m, ModeFrom::Cluster),
            (None, None) => (self.default_mode, ModeFrom::Default),
        }
    }

    /// The route's roles and permissions, each name checked (no surrounding blanks, not empty).
    fn names(&mut self, r: &RawRoute) -> (Vec<String>, Vec<String>) {
        let roles: Vec<String> = r.roles.iter().map(|s| s.get_ref().clone()).collect();
        let permissions: Vec<String> = r.permissions.iter().map(|s| s.get_ref().clone()).collect();
        for name in r.roles.iter().chain(&r.permissions) {
            if name.get_ref().trim().is_empty() || name.get_ref().trim() != name.get_ref() {
                self.error(
                    name.span().start,
                    format!(
                        "{:?} is not a valid role or permission name",
                        name.get_ref()
                    ),
                );
            }
        }
        (roles, permissions)
    }

    /// A protected route names at least one role or permission; the others name none.
    fn what_access_takes(
        &mut self,
        start: usize,
        known_access: Option<Access>,
        access: Access,
        roles: &[String],
        permissions: &[String],
    ) {
        match known_access {
            None => {}
            Some(Access::Protected) if roles.is_empty() && permissions.is_empty() => self.error(
                start,
                "a protected route needs at least one role or permission (or access = \"public\" / \"machine\" / \"gone\")",
            ),
            Some(Access::Public | Access::Machine | Access::Gone)
                if !roles.is_empty() || !permissions.is_empty() =>
            {
                self.error(
                    start,
                    format!("access = \"{}\" takes no roles or permissions: they would never be checked", access.as_str()),
                )
            }
            _ => {}
        }
    }

    /// `customer_param`: only on a protected route, naming a variable of the path that can
    /// read a customer id.
    fn customer_param(&mut self, r: &RawRoute, checked: &Checked) -> Option<String> {
        let c = r.customer_param.as_ref()?;
        if checked.access != Access::Protected {
            self.error(
                c.span().start,
                format!(
                    "access = \"{}\" takes no customer_param: ticket grants would never be checked",
                    checked.access.as_str()
                ),
            );
        }
        if let Some(parts) = &checked.parts {
            if let Some(problem) = customer_param_problem(c.get_ref(), parts, &checked.path) {
                self.error(c.span().start, problem);
            }
        }
        Some(c.get_ref().clone())
    }

    /// A pending operator decision: a warning, not an error.
    fn pending(&mut self, r: &RawRoute, checked: &Checked) {
        if let Some(p) = &r.pending {
            self.warnings.push(self.lines.at(
                p.span().start,
                Severity::Warning,
                format!(
                    "pending operator decision {} on {} {} (encoded with option A)",
                    p.get_ref(),
                    checked.methods.join(","),
                    checked.path
                ),
            ));
        }
    }

    /// The route's place in the matcher (HEAD added beside GET): refused when an earlier rule
    /// already takes the same method and shape, or when Werkzeug's answer could depend on the
    /// order Console registers it and a rival it weighs equally (`Matcher::add`). A route with
    /// an error (`before`: the error count when its checks began) is not placed; `start` is
    /// where its table starts.
    fn place(
        &mut self,
        r: &RawRoute,
        start: usize,
        index: usize,
        before: usize,
        checked: &Checked,
    ) {
        let Some(parts) = &checked.parts else {
            return;
        };
        let path = &checked.path;
        let signature = signature(parts);
        let mut matcher_methods = checked.methods.clone();
        if checked.methods.iter().any(|m| m == "GET")
            && !checked.methods.iter().any(|m| m == "HEAD")
        {
            matcher_methods.push("HEAD".to_string());
        }
        for m in &matcher_methods {
            if let Some(&prev) = self.seen.get(&(m.clone(), signature.clone())) {
                let prev: &Route = &self.routes[prev];
                let what = if prev.path == *path {
                    "duplicate rule"
                } else {
                    "rule is shadowed"
                };
                let message = format!(
                    "{what}: {m} {path} can never match, {} (line {}) takes it first",
                    prev.label(),
                    prev.line
                );
                self.error(r.path.span().start, message);
            }
        }
        if self.errors.len() != before {
            return;
        }
        for m in &matcher_methods {
            self.seen.insert((m.clone(), signature.clone()), index);
        }
        if let Err(rival) = self.matcher.add(index, parts, matcher_methods) {
            let at = self.lines.at(start, Severity::Error, "");
            let this = format!(
                "{} {path} ({}:{}:{})",
                checked.methods.join(","),
                at.file,
                at.line,
                at.col
            );
            let other: &Route = &self.routes[rival.rule];
            let that = format!(
                "{} ({}:{}:{})",
                other.label(),
                at.file,
                other.line,
                other.col
            );
            let why = match rival.slash_of {
                None => "Console tries them in the order it registers its routes, which routes.toml cannot know".to_string(),
                Some(slash) => {
                    let (slashed, runs) = if slash == index {
                        (format!("{} {path}", checked.methods.join(",")), other.label().to_string())
                    } else {
                        (other.label().to_string(), format!("{} {path}", checked.methods.join(",")))
                    };
                    format!(
                        "a path that lacks only the trailing slash of {slashed} gets Werkzeug's redirect to the slash if Console registered that rule first (the redirect ends Werkzeug's search), and {runs} otherwise: the order Console registers its routes decides, which routes.toml cannot know"
                    )
                }
            };
            let message = format!(
                "{this} and {that} have a segment Werkzeug weighs equally and that can match the same value: {why}. Make the segments differ (a converter, a literal), or map one of them"
            );
            self.error(r.path.span().start, message);
        }
    }

    /// The mapping, or every error found.
    fn finish(self, path: &Path) -> Result<Mapping, LoadError> {
        if !self.errors.is_empty() {
            return Err(LoadError {
                diagnostics: self.errors,
            });
        }
        Ok(Mapping {
            file: path.to_path_buf(),
            version: version_of(self.text.as_bytes()),
            default_mode: self.default_mode,
            routes: self.routes,
            clusters: self.clusters,
            warnings: self.warnings,
            matcher: self.matcher,
        })
    }

    fn parse_mode(&mut self, m: &Spanned<String>) -> Option<Mode> {
        match m.get_ref().as_str() {
            "enforce" => Some(Mode::Enforce),
            "shadow" => Some(Mode::Shadow),
            "off" => Some(Mode::Off),
            other => {
                self.error(
                    m.span().start,
                    format!("unknown mode {other:?} (expected \"enforce\", \"shadow\" or \"off\")"),
                );
                None
            }
        }
    }
}

/// Why `customer_param` `name` could never read a customer id on this rule, if it could not.
fn customer_param_problem(name: &str, parts: &[rule::Part], path: &str) -> Option<String> {
    let converter = parts.iter().find_map(|p| {
        let vars = p.pieces.iter().filter_map(|piece| match piece {
            rule::Piece::Var(conv) => Some(*conv),
            rule::Piece::Literal(_) => None,
        });
        vars.zip(&p.names)
            .find(|(_, n)| *n == name)
            .map(|(conv, _)| conv)
    });
    match converter {
        None => Some(format!(
            "customer_param {name:?} is not a variable of path {path:?}"
        )),
        // A customer id is an integer: these never read as one, so a ticket grant would
        // silently never apply on this route.
        Some(conv @ (rule::Converter::Uuid | rule::Converter::Path)) => Some(format!(
            "customer_param {name:?} is a <{}:...> variable: a customer id is an integer, so ticket grants would never apply (use <int:...> or a plain variable)",
            if conv == rule::Converter::Uuid { "uuid" } else { "path" }
        )),
        Some(rule::Converter::Int | rule::Converter::Default) => None,
    }
}

/// A rule's shape with variable names erased: two rules with the same signature and method are
/// the same Werkzeug state, so the later one can never be chosen.
pub(super) fn signature(parts: &[rule::Part]) -> String {
    parts
        .iter()
        .map(|p| {
            p.pieces
                .iter()
                .map(|piece| match piece {
                    rule::Piece::Literal(s) => s.clone(),
                    rule::Piece::Var(c) => format!("<{c:?}>"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}
