//! The decision, and nothing else: no I/O, so the proxy, `explain`, `check` and the tests all
//! call the same two functions. [`route_step`] decides what can be decided from the rule alone;
//! [`authorize`] decides a protected rule for a resolved principal.

use std::sync::Arc;

use crate::policy::mapping::{Access, Mode, Route};
use crate::policy::principal::Principal;

/// What the rule alone says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No rule for this method and path: 403 with reason `no_route`.
    NoRoute,
    /// `access = "gone"`: 404.
    Gone,
    /// Forward without a session: public, machine, or mode off / kill switch.
    Forward(ForwardKind),
    /// A session and a role or permission are needed.
    NeedPrincipal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKind {
    Public,
    Machine,
    Off,
}

impl ForwardKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardKind::Public => "public",
            ForwardKind::Machine => "machine",
            ForwardKind::Off => "off",
        }
    }

    pub fn decision(self) -> Decision {
        match self {
            ForwardKind::Public => Decision::Public,
            ForwardKind::Machine => Decision::Machine,
            ForwardKind::Off => Decision::Off,
        }
    }
}

/// The effective mode of a route, with the kill switch (I-5) applied.
pub fn effective_mode(route: &Route, kill_switch: bool) -> Mode {
    if kill_switch {
        Mode::Off
    } else {
        route.mode
    }
}

pub fn route_step(route: Option<&Route>, kill_switch: bool) -> Step {
    let Some(route) = route else {
        return if kill_switch {
            Step::Forward(ForwardKind::Off)
        } else {
            Step::NoRoute
        };
    };
    match route.access {
        Access::Public => Step::Forward(ForwardKind::Public),
        Access::Machine => Step::Forward(ForwardKind::Machine),
        // The kill switch forwards everything (interface.md, I-5), a removed route too: Console's
        // own code decides, and answers 404 itself where the route is gone from it as well.
        Access::Gone if kill_switch => Step::Forward(ForwardKind::Off),
        Access::Gone => Step::Gone,
        Access::Protected if effective_mode(route, kill_switch) == Mode::Off => {
            Step::Forward(ForwardKind::Off)
        }
        Access::Protected => Step::NeedPrincipal,
    }
}

/// The verdict for a protected route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed because the principal holds this role or permission.
    Allow { by: Grant },
    /// Nothing required is held.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Role(Arc<str>),
    Permission(Arc<str>),
}

/// ANY listed role or ANY listed permission passes (after inheritance).
pub fn authorize(route: &Route, principal: &Principal) -> Verdict {
    if let Some(r) = route.roles.iter().find(|r| principal.has_role(r)) {
        return Verdict::Allow {
            by: Grant::Role(r.clone()),
        };
    }
    if let Some(p) = route
        .permissions
        .iter()
        .find(|p| principal.has_permission(p))
    {
        return Verdict::Allow {
            by: Grant::Permission(p.clone()),
        };
    }
    Verdict::Deny
}

/// Reasons stored in `access_audit_events.reason`.
pub const REASON_NO_ROUTE: &str = "no_route";
pub const REASON_MISSING_ROLE: &str = "missing_role";

/// What was decided about a request: the `decision` label of `rbac_gateway_requests_total`,
/// `rbac_gateway_authz_requests_total` and `rbac_gateway_decision_duration_seconds`. A new
/// label is a new variant here (and its line in [`Decision::as_str`]); everything that lists
/// the labels (metrics registered at start, explain, dashboards' queries) reads [`Decision::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allowed,
    Denied,
    Redirected,
    Refused,
    Public,
    Machine,
    Gone,
    Off,
    ShadowDenied,
    Unavailable,
}

impl Decision {
    pub const ALL: [Decision; 10] = [
        Decision::Allowed,
        Decision::Denied,
        Decision::Redirected,
        Decision::Refused,
        Decision::Public,
        Decision::Machine,
        Decision::Gone,
        Decision::Off,
        Decision::ShadowDenied,
        Decision::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Redirected => "redirected",
            Decision::Refused => "refused",
            Decision::Public => "public",
            Decision::Machine => "machine",
            Decision::Gone => "gone",
            Decision::Off => "off",
            Decision::ShadowDenied => "shadow_denied",
            Decision::Unavailable => "unavailable",
        }
    }

    /// Index into [`Decision::ALL`] (per-worker tables of counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mapping::fixture::rules;
    use crate::policy::mapping::Mapping;

    fn mapping() -> Mapping {
        rules()
            .route("GET", "/a")
            .roles(&["r1", "r2"])
            .permissions(&["p:x"])
            .route("GET", "/shadow")
            .roles(&["r1"])
            .mode("off")
            .route("GET", "/pub")
            .access("public")
            .route("GET", "/old")
            .access("gone")
            .mapping()
    }

    fn principal(roles: &[&str], perms: &[&str]) -> Principal {
        Principal::for_tests(
            "a",
            roles.iter().map(|s| s.to_string()).collect(),
            perms.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn any_role_or_permission_passes() {
        let m = mapping();
        let r = &m.routes[0];
        assert_eq!(
            authorize(r, &principal(&["r2"], &[])),
            Verdict::Allow {
                by: Grant::Role("r2".into())
            }
        );
        assert_eq!(
            authorize(r, &principal(&[], &["p:x"])),
            Verdict::Allow {
                by: Grant::Permission("p:x".into())
            }
        );
        assert_eq!(authorize(r, &principal(&["r3"], &["p:y"])), Verdict::Deny);
    }

    #[test]
    fn steps_follow_access_mode_and_kill_switch() {
        let m = mapping();
        assert_eq!(route_step(None, false), Step::NoRoute);
        assert_eq!(route_step(None, true), Step::Forward(ForwardKind::Off));
        assert_eq!(route_step(Some(&m.routes[0]), false), Step::NeedPrincipal);
        assert_eq!(
            route_step(Some(&m.routes[0]), true),
            Step::Forward(ForwardKind::Off)
        );
        assert_eq!(
            route_step(Some(&m.routes[1]), false),
            Step::Forward(ForwardKind::Off)
        );
        assert_eq!(
            route_step(Some(&m.routes[2]), false),
            Step::Forward(ForwardKind::Public)
        );
        assert_eq!(route_step(Some(&m.routes[3]), false), Step::Gone);
        // The kill switch forwards a removed route too: Console decides.
        assert_eq!(
            route_step(Some(&m.routes[3]), true),
            Step::Forward(ForwardKind::Off)
        );
    }
}
