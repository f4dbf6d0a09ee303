//! `explain`'s why for a case that failed: the rule that matched and what it requires, who asked
//! and how each of their roles is held, and the decision, in the lines `explain` prints.

use super::world::{Decided, Resolved, World};
use crate::cli::access::InMemory;

/// The why of `d`, the decision for `r` (with `authority`'s ticket grants) on `method` `path`.
pub(crate) fn why(
    world: &World<'_>,
    r: &Resolved,
    authority: &InMemory,
    method: &str,
    path: &str,
    d: &Decided,
) -> Vec<String> {
    let mut out = Vec::new();
    let mapping = world.mapping;
    if d.reader_api {
        out.push(
            "rule: none applies: Console's reader API, answered by the gateway (--rbac-api)".into(),
        );
    } else if d.label == super::file::Label::Refused {
        out.push(format!(
            "request: {method} {path} is refused before any rule is matched"
        ));
    } else {
        match d.rule.map(|i| &mapping.routes[i]) {
            Some(route) => {
                out.push(format!(
                    "rule: {} ({}:{}:{})",
                    route.label(),
                    mapping.file.display(),
                    route.line,
                    route.col
                ));
                out.push(format!(
                    "requires: {}",
                    if route.required().is_empty() {
                        route.access.as_str().to_string()
                    } else {
                        route.required()
                    }
                ));
                out.push(format!(
                    "access: {}, mode: {}",
                    route.access.as_str(),
                    route.mode.as_str()
                ));
                if route.customer_param.is_some() && !authority.tickets.is_empty() {
                    let customers: Vec<String> =
                        authority.tickets.keys().map(|c| c.to_string()).collect();
                    out.push(format!(
                        "ticket-scoped grants in force for customers: {} (customer_param = {:?})",
                        customers.join(", "),
                        route.customer_param.as_deref().unwrap_or_default()
                    ));
                }
            }
            None => out.push(format!("rule: none matches {method} {path}")),
        }
    }
    if world.settings.switches.kill_switch {
        out.push("kill switch: on (FLAG_RBAC_V2=0), every route is off".into());
    }
    match &r.principal {
        None => out.push(format!("who: {} (a request without a session)", r.label)),
        Some(p) => {
            out.push(format!(
                "who: {}{}",
                r.label,
                if p.break_glass {
                    " (break-glass active)"
                } else {
                    ""
                }
            ));
            if r.alert_waits {
                out.push("break-glass: a session is active, not honoured until its alert is delivered (as `serve` decides by default)".into());
            }
            out.push("effective roles:".into());
            for role in p.roles() {
                match r.how.get(role) {
                    Some(how) => out.push(format!("  {role}: {how}")),
                    None => out.push(format!("  {role}")),
                }
            }
            if p.roles().is_empty() {
                out.push("  (none)".into());
            }
            out.push(format!(
                "permissions: {}",
                if p.permissions().is_empty() {
                    "(none)".into()
                } else {
                    p.permissions().join(", ")
                }
            ));
            let added: Vec<&str> = d
                .forwarded_roles
                .iter()
                .filter(|x| !p.has_role(x))
                .map(String::as_str)
                .collect();
            if !added.is_empty() {
                out.push(format!("ticket-scoped grants add: {}", added.join(",")));
            }
        }
    }
    out.push(format!("decision: {}", d.decision));
    out.push(format!(
        "answer: {}",
        d.status
            .map_or("forwarded (Console answers)".to_string(), |s| s.to_string())
    ));
    out
}
