//! What a test file says, once read: the cases, who asks in them, what they ask and what they
//! expect. `file.rs` reads a `*.test.toml` into these; `run.rs` runs them.

use serde::Deserialize;

/// One problem of a test file, located.
pub type Problem = crate::policy::mapping::Diagnostic;

/// A decision, in the words a case expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Forwarded, by a role or permission held.
    Allow,
    /// 403.
    Deny,
    /// 302 to the login page (no valid session).
    Login,
    /// Forwarded without a session: `access = "public"`.
    Public,
    /// Forwarded untouched: `access = "machine"` (I-7).
    Machine,
    /// Forwarded without a decision: mode `off` (or the kill switch).
    Off,
    /// Forwarded in shadow mode although nothing required is held (the denial is recorded).
    ShadowDeny,
    /// 404: `access = "gone"`.
    Gone,
    /// 400: the method or target is refused.
    Refused,
    /// Console's reader API, answered by the gateway itself (`reason` is the status).
    Api,
    /// 503.
    Unavailable,
}

impl Label {
    pub const ALL: [Label; 11] = [
        Label::Allow,
        Label::Deny,
        Label::Login,
        Label::Public,
        Label::Machine,
        Label::Off,
        Label::ShadowDeny,
        Label::Gone,
        Label::Refused,
        Label::Api,
        Label::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Allow => "allow",
            Label::Deny => "deny",
            Label::Login => "login",
            Label::Public => "public",
            Label::Machine => "machine",
            Label::Off => "off",
            Label::ShadowDeny => "shadow_deny",
            Label::Gone => "gone",
            Label::Refused => "refused",
            Label::Api => "api",
            Label::Unavailable => "unavailable",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Who {
    /// A request without a session.
    NoSession,
    /// A principal given by its groups and roles (expanded through the catalogue) and
    /// permissions held directly; `break_glass`: with an active break-glass session.
    Synthetic {
        groups: Vec<String>,
        roles: Vec<String>,
        permissions: Vec<String>,
        break_glass: bool,
    },
    /// An admin of the database, by email or id (needs `--database-url`).
    Admin(String),
}

/// A principal as a case names it: how the output names it, what it is, and where it is written.
#[derive(Debug, Clone)]
pub struct Subject {
    pub label: String,
    pub who: Who,
    pub line: usize,
    pub col: usize,
}

/// Whom a case asks about.
#[derive(Debug, Clone)]
pub enum Subjects {
    List(Vec<Subject>),
    /// Each group of the catalogue in use, but those named, as a principal holding that group.
    EveryGroup {
        except: Vec<String>,
        line: usize,
        col: usize,
    },
}

/// A ticket-scoped grant in force for a case: the roles (expanded) and permissions it adds on a
/// rule with `customer_param`, for that customer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    pub customer: i32,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// What must be decided.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Any of these.
    pub outcomes: Vec<Label>,
    /// The rule that must decide: its label (`GET,POST /x/<id>`) or its path (`/x/<id>`).
    pub rule: Option<String>,
    /// Why it must be decided so: `missing_role` or `no_route` for a denial, `role:NAME` or
    /// `permission:NAME` for an allowed request, the refusal for a refused one, the status for
    /// the reader API.
    pub reason: Option<String>,
}

/// Which rules a statement is about: every rule (and every method of it written in `methods`)
/// that matches all the keys given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// `cluster = "S8"`: the rule's cluster.
    pub cluster: Option<String>,
    /// The rule's path begins with this, or a path generated for it does; the prefix itself,
    /// and it with one and two segments appended, are asked too, so that a rule reaching below
    /// it from elsewhere (a `<path:...>` catch-all) is selected.
    pub path_prefix: Option<String>,
    /// The rule's path, exactly as written (`/console/customers/<id>`).
    pub path: Option<String>,
    /// Only these methods of the rules (and rules with one of them).
    #[serde(default)]
    pub methods: Vec<String>,
    /// `protected`, `public`, `machine` or `gone`.
    pub access: Option<String>,
    /// Rules that name this role.
    pub role: Option<String>,
    /// Rules that name this permission.
    pub permission: Option<String>,
}

/// What a case asks.
#[derive(Debug, Clone)]
pub enum Kind {
    /// One request.
    Request {
        method: String,
        path: String,
        who: Subjects,
        expect: Expect,
    },
    /// The same expectation on every rule `select` selects, every method and every path
    /// generated for it.
    Every {
        select: Select,
        who: Subjects,
        expect: Expect,
    },
    /// Every rule `select` selects refuses a principal holding every role and permission the
    /// catalogue and the mapping know but these roles (and those that give one of them).
    RequiresOneOf { select: Select, roles: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct Case {
    /// Index of its file in the suite.
    pub file: usize,
    pub line: usize,
    pub col: usize,
    pub name: String,
    pub kind: Kind,
    pub tickets: Vec<Ticket>,
}

/// A test file, read.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// How messages name it (its path).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Every outcome word, for messages.
pub(super) fn names() -> String {
    Label::ALL
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the output names an inline principal.
pub fn describe(who: &Who) -> String {
    match who {
        Who::NoSession => "no session".into(),
        Who::Admin(a) => format!("admin {a}"),
        Who::Synthetic {
            groups,
            roles,
            permissions,
            break_glass,
        } => {
            let mut parts = Vec::new();
            if !groups.is_empty() {
                parts.push(format!("groups {}", groups.join(",")));
            }
            if !roles.is_empty() {
                parts.push(format!("roles {}", roles.join(",")));
            }
            if !permissions.is_empty() {
                parts.push(format!("permissions {}", permissions.join(",")));
            }
            if *break_glass {
                parts.push("break-glass session".into());
            }
            if parts.is_empty() {
                return "a session holding nothing".into();
            }
            parts.join(" + ")
        }
    }
}

pub(super) fn default_name(kind: &Kind) -> String {
    let who = |w: &Subjects| match w {
        Subjects::List(l) => l
            .iter()
            .map(|s| s.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        Subjects::EveryGroup { except, .. } if except.is_empty() => "every group".into(),
        Subjects::EveryGroup { except, .. } => format!("every group but {}", except.join(", ")),
    };
    match kind {
        Kind::Request {
            method,
            path,
            who: w,
            expect,
        } => {
            format!(
                "{method} {path} as {}: {}",
                who(w),
                outcomes(&expect.outcomes)
            )
        }
        Kind::Every { who: w, expect, .. } => {
            format!(
                "every selected rule as {}: {}",
                who(w),
                outcomes(&expect.outcomes)
            )
        }
        Kind::RequiresOneOf { roles, .. } => {
            format!("every selected rule requires one of {}", roles.join(", "))
        }
    }
}

/// `allow`, or `deny|shadow_deny`.
pub fn outcomes(labels: &[Label]) -> String {
    labels
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("|")
}
