//! `routes.toml`: parsed (serde, unknown keys are errors), validated, compiled into a matcher.
//!
//! Raw structs mirror the file (`load.rs`); [`Mapping::load`] turns them into typed [`Route`]s or
//! a list of [`Diagnostic`]s printed as `FILE:LINE:COL: message`. The compiled [`Mapping`] is immutable: a
//! reload builds a new one and swaps it in whole.

mod file;
#[cfg(test)]
pub mod fixture;
mod load;
pub mod matcher;
pub mod rule;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use matcher::{Match, Matcher};

pub use file::{read_bounded, read_bounded_async, MAX_FILE_BYTES};
pub(crate) use load::KNOWN_METHODS;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A session holding one of the roles or permissions.
    Protected,
    /// Forwarded without a session (login flow, static assets, health).
    Public,
    /// Machine-to-machine (bearer/HMAC checked by Console, I-7): forwarded untouched.
    Machine,
    /// Removed from Console: answered 404 by the gateway.
    Gone,
}

/// What happens to a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deny is 403.
    Enforce,
    /// Decide, record a would-be denial, forward anyway.
    Shadow,
    /// Forward; Console decides.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Protected => "protected",
            Access::Public => "public",
            Access::Machine => "machine",
            Access::Gone => "gone",
        }
    }
}

/// Where a route's mode comes from: its own `mode`, its cluster's, or `[defaults]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeFrom {
    Route,
    Cluster,
    Default,
}

impl ModeFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeFrom::Route => "route",
            ModeFrom::Cluster => "cluster",
            ModeFrom::Default => "defaults",
        }
    }
}

/// A stage of the cutover (003 §6: a sub-card, S1..S9), declared as `[cluster.NAME]`: the mode
/// of every route of the cluster that sets none itself, and what still blocks its promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub title: Option<String>,
    /// The mode of the cluster's routes that name none (route's own > cluster's > defaults).
    pub mode: Option<Mode>,
    /// Open operator decisions (003 §4 AMBIGUOUS-N) or other blockers: while any is listed, the
    /// cluster is not ready to enforce. Removed from the list once the decision is recorded.
    pub blocked_by: Vec<String>,
    pub note: Option<String>,
    pub line: usize,
    pub col: usize,
}

/// Review metadata; never used to decide (the cluster's mode is folded into [`Route::mode`]).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub blueprint: Option<String>,
    pub cluster: Option<String>,
    pub legacy: Option<String>,
    pub totp: bool,
    pub pending: Option<String>,
    pub guess: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub index: usize,
    /// Methods as written (HEAD added to the matcher when GET is present).
    pub methods: Vec<String>,
    pub path: String,
    /// Shared text: a grant names the one that let a request through without a copy of it.
    pub roles: Vec<Arc<str>>,
    pub permissions: Vec<Arc<str>>,
    pub access: Access,
    /// The mode the route runs in (before the kill switch): its own, else its cluster's, else
    /// `[defaults]`.
    pub mode: Mode,
    pub mode_from: ModeFrom,
    /// Name of the path variable holding a customer id (ticket-scoped grants).
    pub customer_param: Option<String>,
    pub line: usize,
    pub col: usize,
    pub meta: Meta,
    /// [`Route::label`], built once when the mapping is loaded, not per request.
    label: Arc<str>,
}

impl Route {
    /// `"GET,POST /console/customers/<id>"`: how logs, audit rows and `explain` name a rule.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label, shared (a forwarded request names its rule without copying it).
    pub fn shared_label(&self) -> Arc<str> {
        self.label.clone()
    }

    /// What the rule requires, as stored in the audit row.
    /// `role:R | permission:P`, written into one string (once per denial: until 2026-11-28 a
    /// `format!` per name and a join, issue 67).
    pub fn required(&self) -> String {
        let names = self.roles.iter().map(|r| ("role:", r));
        let names = names.chain(self.permissions.iter().map(|p| ("permission:", p)));
        let mut out = String::with_capacity(64);
        for (i, (kind, name)) in names.enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            out.push_str(kind);
            out.push_str(name);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a mapping file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {sev}{}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// A mapping that failed to load: every error found, in file order.
#[derive(Debug, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

/// A compiled, validated mapping.
#[derive(Debug)]
pub struct Mapping {
    pub file: PathBuf,
    /// First 12 hex digits of the SHA-256 of the file's bytes.
    pub version: String,
    pub default_mode: Mode,
    pub routes: Vec<Route>,
    /// The `[cluster.NAME]` tables, by name (empty: the file declares no stages).
    pub clusters: BTreeMap<String, Cluster>,
    /// Warnings found while loading (pending decisions, guesses are not warnings).
    pub warnings: Vec<Diagnostic>,
    matcher: Matcher,
}

/// The version a mapping file's content gets: the first 6 bytes of its SHA-256, in hex.
pub fn version_of(content: &[u8]) -> String {
    hex::encode(&Sha256::digest(content)[..6])
}

impl Mapping {
    /// Reads and compiles a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, LoadError> {
        let display = path.display().to_string();
        let bytes = read_bounded(path).map_err(|e| LoadError {
            diagnostics: vec![Diagnostic {
                file: display.clone(),
                line: 0,
                col: 0,
                severity: Severity::Error,
                message: format!("cannot read the mapping: {e}"),
            }],
        })?;
        let text = String::from_utf8(bytes).map_err(|e| LoadError {
            diagnostics: vec![Diagnostic {
                file: display.clone(),
                line: 0,
                col: 0,
                severity: Severity::Error,
                message: format!("the mapping is not UTF-8: {e}"),
            }],
        })?;
        Self::from_str(&display, path, &text)
    }

    /// Compiles mapping text; `name` is used in diagnostics.
    pub fn from_str(name: &str, path: &Path, text: &str) -> Result<Mapping, LoadError> {
        load::Loader::compile(name, path, text)
    }

    /// The cluster a route names, when the file declares it.
    pub fn cluster_of(&self, route: &Route) -> Option<&Cluster> {
        self.clusters.get(route.meta.cluster.as_deref()?)
    }

    /// What `check` reports about stages: a protected route in no cluster (no stage steers it)
    /// and a cluster no `[cluster.NAME]` declares. Once the file declares clusters, both are
    /// errors (an undeclared one is already refused when loading). A file that declares none
    /// does not use stages: only the clusters its rules name are reported, as warnings.
    pub fn stage_problems(&self) -> Vec<Diagnostic> {
        let severity = if self.clusters.is_empty() {
            Severity::Warning
        } else {
            Severity::Error
        };
        let file = self.file.display().to_string();
        let mut out = Vec::new();
        let mut undeclared = BTreeSet::new();
        for r in &self.routes {
            let at = |message: String| Diagnostic {
                file: file.clone(),
                line: r.line,
                col: r.col,
                severity,
                message,
            };
            match r.meta.cluster.as_deref() {
                None if r.access == Access::Protected && !self.clusters.is_empty() => out.push(at(format!(
                    "protected route {} is in no cluster: no stage of the cutover steers or reports it (add cluster = \"...\")",
                    r.label()
                ))),
                None => {}
                Some(c) if !self.clusters.contains_key(c) && undeclared.insert(c) => {
                    out.push(at(format!(
                        "cluster {c:?} is not declared: add a [cluster.{c}] table (its mode and blockers)"
                    )))
                }
                Some(_) => {}
            }
        }
        out
    }

    /// The rule Werkzeug would pick for this method and decoded path.
    pub fn find(&self, method: &str, path: &str) -> Option<(&Route, Match)> {
        let m = self.matcher.find(method, path)?;
        Some((&self.routes[m.rule], m))
    }

    /// The value of variable `name` in a match of this mapping on `path`.
    pub fn value<'p>(&self, m: &Match, path: &'p str, name: &str) -> Option<&'p str> {
        self.matcher
            .values(m, path)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Every role and permission the mapping names.
    pub fn names(&self) -> (BTreeSet<&str>, BTreeSet<&str>) {
        let roles = self
            .routes
            .iter()
            .flat_map(|r| r.roles.iter().map(|n| &**n))
            .collect();
        let perms = self
            .routes
            .iter()
            .flat_map(|r| r.permissions.iter().map(|n| &**n))
            .collect();
        (roles, perms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Mapping, LoadError> {
        Mapping::from_str("routes.toml", Path::new("routes.toml"), text)
    }

    fn first_error(text: &str) -> String {
        load(text).unwrap_err().diagnostics[0].to_string()
    }

    #[test]
    fn loads_a_minimal_mapping() {
        let m = load(
            r#"
[[route]]
methods = ["GET"]
path = "/console/customers/<id>"
roles = ["console-audit-user"]
"#,
        )
        .unwrap();
        assert_eq!(m.routes.len(), 1);
        assert_eq!(m.routes[0].line, 2);
        assert!(
            m.find("HEAD", "/console/customers/5").is_some(),
            "GET implies HEAD"
        );
        assert!(m.find("POST", "/console/customers/5").is_none());
        assert_eq!(m.version.len(), 12);
    }

    #[test]
    fn unknown_keys_are_located_errors() {
        let e = first_error("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nrole = [\"x\"]\n");
        assert!(
            e.starts_with("routes.toml:4:1: unknown field `role`"),
            "{e}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_other_errors() {
        let text = "[defaults]\nmod = \"shadow\"\n\n[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nrolez = [\"x\"]\n\n[[route]]\nmethods = [\"GET\"]\npath = \"/b\"\npermisions = [\"y\"]\nmode = \"enforcing\"\n\n[[route]]\nmethods = [\"GET\"]\npath = \"/c\"\n\n[[routes]]\npath = \"/d\"\n";
        let e = load(text).unwrap_err();
        let mut all: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
        all.sort();
        let starts = [
            "routes.toml:13:8: unknown mode \"enforcing\"",
            "routes.toml:12:1: unknown field `permisions`",
            "routes.toml:15:1: a protected route needs at least one role",
            "routes.toml:19:1: unknown field `routes`",
            "routes.toml:2:1: unknown field `mod`",
            "routes.toml:7:1: unknown field `rolez`",
        ];
        assert_eq!(all.len(), starts.len(), "{all:#?}");
        for s in starts {
            assert!(all.iter().any(|a| a.starts_with(s)), "{s} in {all:#?}");
        }
    }

    #[test]
    fn a_misspelt_access_is_the_one_error_of_its_rule() {
        // Not also "a protected route needs at least one role": the rule did not say protected.
        let e = load("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\naccess = \"publik\"\n")
            .unwrap_err();
        let all: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].contains("unknown access \"publik\""), "{all:?}");
    }

    #[test]
    fn unknown_values_are_errors() {
        let e = first_error("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nroles = [\"x\"]\nmode = \"enforcing\"\n");
        assert!(
            e.starts_with("routes.toml:5:8: unknown mode \"enforcing\""),
            "{e}"
        );
        let e = first_error("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\naccess = \"open\"\n");
        assert!(
            e.starts_with("routes.toml:4:10: unknown access \"open\""),
            "{e}"
        );
        let e = first_error("[[route]]\nmethods = [\"get\"]\npath = \"/a\"\nroles = [\"x\"]\n");
        assert!(
            e.starts_with("routes.toml:2:12: unknown method \"get\""),
            "{e}"
        );
    }

    #[test]
    fn duplicates_and_shadowed_rules_are_errors() {
        let text = "[[route]]\nmethods = [\"GET\"]\npath = \"/a/<x>\"\nroles = [\"r\"]\n\n[[route]]\nmethods = [\"POST\", \"GET\"]\npath = \"/a/<y>\"\nroles = [\"r\"]\n";
        let e = first_error(text);
        assert!(
            e.starts_with("routes.toml:8:8: rule is shadowed: GET /a/<y> can never match"),
            "{e}"
        );
        let text = "[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nroles = [\"r\"]\n[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nroles = [\"s\"]\n";
        assert!(first_error(text).contains("duplicate rule"));
    }

    #[test]
    fn rules_that_can_never_match_are_errors() {
        let e = first_error("[[route]]\nmethods = [\"GET\"]\npath = \"/a//b\"\nroles = [\"r\"]\n");
        assert!(e.contains("empty segment"), "{e}");
        let e = first_error("[[route]]\nmethods = []\npath = \"/a\"\nroles = [\"r\"]\n");
        assert!(e.contains("methods is empty"), "{e}");
        let e = first_error("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\n");
        assert!(e.contains("needs at least one role"), "{e}");
    }

    #[test]
    fn a_customer_param_that_could_never_read_a_customer_id_is_an_error() {
        let route = |path: &str, extra: &str| {
            format!("[[route]]\nmethods = [\"GET\"]\npath = \"{path}\"\n{extra}customer_param = \"c\"\n")
        };
        let roles = "roles = [\"r\"]\n";
        for ok in [
            "/customers/<int:c>/x",
            "/customers/<c>/x",
            "/customers/<string:c>",
        ] {
            let m = load(&route(ok, roles)).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(m.routes[0].customer_param.as_deref(), Some("c"));
        }
        let e = first_error(&route("/customers/<uuid:c>/x", roles));
        assert!(
            e.starts_with("routes.toml:5:18: customer_param \"c\" is a <uuid:...> variable"),
            "{e}"
        );
        let e = first_error(&route("/customers/<path:c>", roles));
        assert!(e.contains("is a <path:...> variable"), "{e}");
        let e = first_error(&route("/customers/<int:d>", roles));
        assert!(e.contains("is not a variable of path"), "{e}");
        for access in ["public", "machine", "gone"] {
            let e = first_error(&route(
                "/customers/<int:c>",
                &format!("access = \"{access}\"\n"),
            ));
            assert!(
                e.contains(&format!("access = \"{access}\" takes no customer_param")),
                "{e}"
            );
        }
    }

    /// Werkzeug orders equally weighted transitions by Console's registration order, which
    /// the file cannot know: siblings that can match one value are refused.
    #[test]
    fn equally_weighted_siblings_that_overlap_are_refused() {
        let two = |a: &str, b: &str| {
            format!("[[route]]\nmethods = [\"GET\"]\npath = \"{a}\"\nroles = [\"r\"]\n[[route]]\nmethods = [\"GET\"]\npath = \"{b}\"\nroles = [\"s\"]\n")
        };
        for (a, b) in [
            ("/x/<uuid:a>", "/x/<b>"),
            ("/x/<a>-<b>", "/x/<a>.<b>"),
            ("/x/<uuid:a>/edit", "/x/<b>/edit"),
            ("/x/<uuid:a>/<c>", "/x/<b>/edit"),
            ("/x/<uuid:a>/<path:c>", "/x/<b>/y/z"),
        ] {
            let e = first_error(&two(a, b));
            assert!(e.contains("weighs equally"), "{a} {b}: {e}");
            assert!(e.contains("(routes.toml:1:1)"), "{e}");
        }
        // Different weights, literals that tell them apart, or one transition: the order is
        // Werkzeug's own.
        for (a, b) in [
            ("/x/<int:a>", "/x/<b>"),
            ("/x/v<int:a>", "/x/w<int:a>"),
            ("/x/<a>.json", "/x/<a>.yaml"),
            ("/x/<a>/edit", "/x/<b>/view"),
            ("/x/<path:a>", "/x/<b>"),
            // Werkzeug backtracks: no path reaches a rule behind both.
            ("/x/<b>/view", "/x/<uuid:a>/edit"),
        ] {
            assert!(load(&two(a, b)).is_ok(), "{a} {b}");
        }
        // Rules of disjoint methods never compete.
        let e = two("/x/<uuid:a>", "/x/<b>").replacen("GET", "POST", 1);
        assert!(load(&e).is_ok());
    }

    /// Werkzeug raises its strict-slash redirect for the first rule it tries whose trailing
    /// slash is all a path lacks, instead of trying the next segment: a rule behind a slash
    /// competes with every rule its equally weighted rival leads to.
    #[test]
    fn equally_weighted_siblings_behind_a_trailing_slash_are_refused() {
        let two = |(ma, a): (&str, &str), (mb, b): (&str, &str)| {
            format!("[[route]]\nmethods = [{ma}]\npath = \"{a}\"\nroles = [\"r\"]\n[[route]]\nmethods = [{mb}]\npath = \"{b}\"\nroles = [\"s\"]\n")
        };
        const GET: &str = "\"GET\"";
        for (a, b) in [
            (
                (GET, "/console/<v0>/audit/"),
                (GET, "/console/<uuid:v0>/audit"),
            ),
            (
                (GET, "/console/<uuid:v0>/audit"),
                (GET, "/console/<v0>/audit/"),
            ),
            ((GET, "/<v0>/"), (GET, "/<uuid:v0>")),
            ((GET, "/<uuid:v0>"), (GET, "/<v0>/")),
            ((GET, "/x/<uuid:a>.txt/"), (GET, "/x/<a>.txt")),
            ((GET, "/s/x<a>/<b>/"), (GET, "/s/x<a>/<uuid:b>")),
            ((GET, "/s/x<a>/<uuid:b>"), (GET, "/s/x<a>/<b>/")),
            (("\"HEAD\"", "/<v0>/"), (GET, "/<uuid:v0>")),
            (
                ("\"POST\", \"GET\"", "/<v0>/<c>/"),
                (GET, "/<uuid:v0>/edit"),
            ),
        ] {
            let e = first_error(&two(a, b));
            assert!(e.starts_with("routes.toml:7:8: "), "{a:?} {b:?}: {e}");
            assert!(e.contains("weighs equally"), "{a:?} {b:?}: {e}");
            assert!(
                e.contains("lacks only the trailing slash of"),
                "{a:?} {b:?}: {e}"
            );
            assert!(
                e.contains(&format!("{} (routes.toml:5:1)", b.1))
                    && e.contains(&format!("{} (routes.toml:1:1)", a.1)),
                "both rules, where they start: {e}"
            );
        }
        for (a, b) in [
            // No method in common: Werkzeug skips the other method's rules, then answers 405.
            (
                (GET, "/console/<v0>/audit/"),
                ("\"POST\"", "/console/<uuid:v0>/audit"),
            ),
            // No path reaches a rule (or its redirect) behind both.
            ((GET, "/<v0>/"), (GET, "/<uuid:v0>/edit")),
            ((GET, "/x/<a>/edit/"), (GET, "/x/<uuid:b>/view")),
            // Werkzeug's own order: different weights.
            ((GET, "/<int:v0>/"), (GET, "/<v0>")),
            ((GET, "/x/<a>/"), (GET, "/x/<path:p>")),
            // Values no segment of the other can take.
            ((GET, "/x/<a>.txt/"), (GET, "/x/<uuid:a>.json")),
            ((GET, "/x/x<int:a>/"), (GET, "/x/<int:b>y")),
            ((GET, "/<v0>/<uuid:a>/"), (GET, "/<uuid:v0>/<int:b>")),
        ] {
            assert!(load(&two(a, b)).is_ok(), "{a:?} {b:?}");
            assert!(load(&two(b, a)).is_ok(), "{b:?} {a:?}");
        }
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = first_error("[[route]]\nmethods = [\"GET\"\npath = \"/a\"\n");
        assert!(e.starts_with("routes.toml:"), "{e}");
        assert!(!e.contains('\n'));
    }

    const STAGED: &str = r#"
[defaults]
mode = "enforce"

[cluster.S2]
title = "Audit, security, replay, ops"
mode = "shadow"

[cluster.S3]
blocked_by = ["AMBIGUOUS-2", "AMBIGUOUS-3"]

[[route]]
methods = ["GET"]
path = "/a"
roles = ["r"]
cluster = "S2"

[[route]]
methods = ["GET"]
path = "/b"
roles = ["r"]
cluster = "S2"
mode = "enforce"

[[route]]
methods = ["GET"]
path = "/c"
roles = ["r"]
cluster = "S3"

[[route]]
methods = ["GET"]
path = "/d"
roles = ["r"]
"#;

    #[test]
    fn a_cluster_sets_the_mode_of_its_routes_below_their_own() {
        let m = load(STAGED).unwrap();
        let mode = |p: &str| {
            let r = m.find("GET", p).unwrap().0;
            (r.mode, r.mode_from)
        };
        assert_eq!(mode("/a"), (Mode::Shadow, ModeFrom::Cluster));
        assert_eq!(mode("/b"), (Mode::Enforce, ModeFrom::Route));
        assert_eq!(mode("/c"), (Mode::Enforce, ModeFrom::Default));
        assert_eq!(mode("/d"), (Mode::Enforce, ModeFrom::Default));
        let s3 = &m.clusters["S3"];
        assert_eq!(s3.blocked_by, vec!["AMBIGUOUS-2", "AMBIGUOUS-3"]);
        assert_eq!((s3.line, s3.mode), (9, None));
        assert_eq!(
            m.clusters["S2"].title.as_deref(),
            Some("Audit, security, replay, ops")
        );
        // The kill switch stays above all.
        let a = m.find("GET", "/a").unwrap().0;
        assert_eq!(crate::policy::verdict::effective_mode(a, true), Mode::Off);
        // A protected route in no cluster: an error once clusters are declared.
        let problems = m.stage_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].severity, Severity::Error);
        assert!(
            problems[0]
                .to_string()
                .starts_with("routes.toml:31:1: protected route GET /d is in no cluster"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn an_undeclared_cluster_or_a_bad_cluster_table_is_an_error() {
        let text = STAGED.replace("cluster = \"S3\"", "cluster = \"S33\"");
        let e = load(&text).unwrap_err().diagnostics[0].to_string();
        assert!(
            e.starts_with("routes.toml:29:11: cluster \"S33\" is not declared (declared: S2, S3;"),
            "{e}"
        );
        let text = STAGED.replace(
            "mode = \"shadow\"",
            "mode = \"shadowed\"\nblockers = [\"x\"]",
        );
        let all: Vec<String> = load(&text)
            .unwrap_err()
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert!(
            all.iter()
                .any(|d| d.starts_with("routes.toml:7:8: unknown mode \"shadowed\"")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|d| d.starts_with("routes.toml:8:1: unknown field `blockers`")),
            "{all:?}"
        );
        let text = STAGED.replace("\"AMBIGUOUS-3\"]", "\"AMBIGUOUS-2\"]");
        assert!(first_error(&text).contains("blocker AMBIGUOUS-2 is listed twice"));
    }

    #[test]
    fn a_file_without_clusters_gets_warnings_not_errors() {
        let m = load("[[route]]\nmethods = [\"GET\"]\npath = \"/a\"\nroles = [\"r\"]\ncluster = \"S1\"\n[[route]]\nmethods = [\"GET\"]\npath = \"/b\"\nroles = [\"r\"]\n[[route]]\nmethods = [\"GET\"]\npath = \"/c\"\naccess = \"public\"\n").unwrap();
        let problems: Vec<String> = m.stage_problems().iter().map(|d| d.to_string()).collect();
        // The rule in no cluster is not reported: the file uses no stages.
        assert_eq!(
            problems,
            vec![
                "routes.toml:1:1: warning: cluster \"S1\" is not declared: add a [cluster.S1] table (its mode and blockers)".to_string(),
            ]
        );
    }

    #[test]
    fn pending_decisions_are_warnings() {
        let m = load("[[route]]\nmethods = [\"POST\"]\npath = \"/a\"\nroles = [\"r\"]\npending = \"AMBIGUOUS-3\"\n").unwrap();
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].to_string().contains("AMBIGUOUS-3"));
    }
}

#[cfg(test)]
mod production {
    use super::*;

    #[test]
    fn production_mapping_loads_with_only_pending_warnings() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"));
        let m = Mapping::load(path).unwrap_or_else(|e| panic!("routes.toml does not load:\n{e}"));
        assert!(m.routes.len() > 100);
        assert!(m.warnings.iter().all(|w| w.message.contains("AMBIGUOUS-")));
        let customers_invite = m.find("GET", "/console/customers/invite").unwrap().0;
        assert_eq!(
            customers_invite.roles,
            vec![std::sync::Arc::<str>::from("console-invite-admin")]
        );
        let verify = m
            .find("POST", "/console/flags/promotions/verify")
            .unwrap()
            .0;
        assert_eq!(verify.path, "/console/flags/<key>/verify");
    }
}

/// The shape of a Flask rule with variable names erased (`/a/<int:x>` and `/a/<int:id>` are
/// the same rule); an unparsable rule is its own signature.
pub fn rule_signature(rule: &str) -> String {
    rule::parse_rule(rule)
        .map(|p| load::signature(&p))
        .unwrap_or_else(|_| rule.to_string())
}
