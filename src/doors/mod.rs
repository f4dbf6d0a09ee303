//! The doors: every way a request reaches the gateway, each owning only its transport.
//!
//! Two doors ask the policy: [`proxy`], the reverse proxy of the data plane (the default mode),
//! and [`forward_auth`], `/authz` for an edge proxy's `auth_request` (`--authz-listen`). Each
//! builds [`crate::policy::outcome::Facts`], calls `decide` and `carry_out`, and only transports
//! the [`crate::policy::answer::Answer`]; both are [`crate::dataplane::workers::Door`]s, served on
//! every worker thread.
//!
//! The others answer from the gateway's state, never through `decide`: [`rbac_api`], Console's
//! reader API (`/api/rbac/...`, on the proxy's listener before any route is decided); and, each on
//! a listener of its own ([`crate::dataplane::listen::serve_side`]), [`admin`] (`/healthz`,
//! `/readyz`, `/metrics`) and [`freescout_webhook`] (`--freescout-webhook-listen`), which revokes
//! the grants of a resolved or closed ticket as the sweep does.

pub mod admin;
pub mod forward_auth;
pub mod freescout_webhook;
pub mod proxy;
pub mod rbac_api;

use crate::policy::outcome::{Outcome, Via};
use crate::policy::verdict::Grant;
use crate::runtime::telemetry::ServerSpan;

/// The decision on the request's span (tracing on only): the rule that matched (its path as
/// `http.route`, its label as `rbac.rule`), the admin (`enduser.id`, `rbac.admin_id`), why (`rbac.reason`), the
/// mapping's version. What the cookie held, the query and the headers are never recorded.
#[cold]
#[inline(never)]
pub(crate) fn trace_outcome(span: &ServerSpan, method: &str, outcome: &Outcome, version: &str) {
    // One lock of the span's record for them all.
    span.record(|span| {
        span.set("rbac.mapping_version", version);
        let (rule, admin, reason): (Option<&str>, Option<&str>, Option<&str>) = match outcome {
            Outcome::Forward(f) => {
                if let Via::Allowed(Grant::Role(r) | Grant::Permission(r)) = &f.via {
                    span.set("rbac.granted_by", r.as_str());
                }
                (
                    f.rule.as_deref(),
                    f.principal.as_ref().map(|p| p.admin_id.as_str()),
                    None,
                )
            }
            Outcome::ShadowDeny { row, .. } | Outcome::Deny { row } => (
                row.route.as_deref(),
                row.admin_id.as_deref(),
                Some(row.reason.as_str()),
            ),
            Outcome::Refuse(r) => (None, None, Some(r.as_str())),
            Outcome::Unavailable(u) => (None, None, Some(u.as_str())),
            // No session: the rule that asks for one matched all the same.
            Outcome::Redirect { rule, .. } => (Some(&**rule), None, Some("no_session")),
            Outcome::Gone => (None, None, Some("gone")),
        };
        if let Some(rule) = rule {
            // The rule's label is `METHODS path` (the metrics' `route`): `http.route` is its path.
            span.route(method, rule.split_once(' ').map_or(rule, |(_, path)| path));
            span.set("rbac.rule", rule);
        }
        if let Some(admin) = admin {
            span.set("enduser.id", admin);
            span.set("rbac.admin_id", admin);
        }
        if let Some(reason) = reason {
            span.set("rbac.reason", reason);
        }
    });
}
