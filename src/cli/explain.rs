//! `rbac-gateway explain`: the decision for one admin, method and path, from the same
//! [`decide`] the proxy calls (shadow mode, ticket grants and the kill switch included).

use std::sync::Arc;
use std::time::Duration;

use super::{failure, load_mapping, runtime, usage, Exit};
use crate::config::ExplainArgs;
use crate::identity::Principal;
use crate::metrics::Metrics;
use crate::outcome::{decide, Authority, Facts, Outcome, Switches, Unavailable, Via};
use crate::{db, identity, target};

/// The admin being explained holds the (pretend) session; everything is read fresh from the
/// database, nothing is cached.
struct ExplainAuthority {
    pool: sqlx::PgPool,
    principal: Arc<Principal>,
    metrics: Metrics,
    ticket_validation_url: Option<String>,
}

impl Authority for ExplainAuthority {
    async fn principal_for_token(
        &self,
        _token: &str,
    ) -> Result<Option<Arc<Principal>>, Unavailable> {
        Ok(Some(self.principal.clone()))
    }

    async fn known_admin(&self, _token: &str) -> Option<String> {
        Some(self.principal.admin_id.clone())
    }

    async fn with_ticket_grants(
        &self,
        principal: &Principal,
        customer: i32,
        request_id: &str,
    ) -> Result<Option<Principal>, Unavailable> {
        crate::state::ticket_principal(
            &self.pool,
            &self.metrics,
            self.ticket_validation_url.as_deref(),
            principal,
            customer,
            request_id,
        )
        .await
    }
}

/// One line saying what the gateway answers, in the words the proxy's metrics use.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Refuse(r) => format!("400 refused ({r})"),
        Outcome::Forward(f) => match &f.via {
            Via::Open(k) => format!("forward ({})", k.as_str()),
            Via::Allowed(by) if f.drift.is_some() => format!(
                "allow (granted by {by:?}; shadow mode: forwarded, Console's answer is compared)"
            ),
            Via::Allowed(by) => format!("allow (granted by {by:?})"),
            Via::ShadowDenied => "forward (shadow mode: would deny, missing_role)".to_string(),
        },
        Outcome::ShadowDeny { row, .. } => format!(
            "forward (shadow mode: would deny, {}; an {} row is written and Console's answer is compared)",
            row.reason, row.event_type
        ),
        Outcome::Redirect { location } => format!("302 redirect to {location}"),
        Outcome::Deny { row } => format!("403 denied ({})", row.reason),
        Outcome::Gone => "404 gone".to_string(),
        Outcome::Unavailable(u) => format!("503 unavailable ({})", u.as_str()),
    }
}

pub fn explain(args: ExplainArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    let t = target::check_method(args.method.as_bytes())
        .and_then(|_| target::parse_target(args.path.as_bytes()));
    let t = match t {
        Ok(t) => t,
        Err(r) => {
            println!("decision: {}", describe(&Outcome::Refuse(r)));
            println!("answer: 400");
            return Ok(());
        }
    };
    let found = mapping.find(&args.method, &t.path);
    let route = found.as_ref().map(|(r, _)| *r);
    match route {
        Some(r) => {
            println!(
                "rule: {} ({}:{}:{})",
                r.label(),
                args.routes.display(),
                r.line,
                r.col
            );
            println!(
                "requires: {}",
                if r.required().is_empty() {
                    r.access.as_str().to_string()
                } else {
                    r.required()
                }
            );
            println!("access: {}, mode: {}", r.access.as_str(), r.mode.as_str());
        }
        None => println!("rule: none matches {} {}", args.method, t.path),
    }
    let switches = Switches {
        kill_switch: args.flag_rbac_v2 == "0",
        ticket_grants: args.flag_ticket_scoped_grants == "1",
    };
    if switches.kill_switch {
        println!("kill switch: on (FLAG_RBAC_V2=0), every route is off");
    }
    runtime()?.block_on(async {
        let pool = db::pool(&args.database_url, 1, Duration::from_secs(10)).map_err(usage)?;
        let principal = identity::resolve(&pool, &args.admin, Duration::ZERO)
            .await
            .map_err(failure)?;
        let provenance = identity::provenance(&pool, &args.admin)
            .await
            .map_err(failure)?;
        println!(
            "admin: {}{}",
            args.admin,
            if principal.break_glass {
                " (break-glass active)"
            } else {
                ""
            }
        );
        println!("effective roles:");
        for line in &provenance {
            println!("  {line}");
        }
        if principal.roles().is_empty() {
            println!("  (none)");
        }
        println!(
            "permissions: {}",
            if principal.permissions().is_empty() {
                "(none)".into()
            } else {
                principal.permissions().join(", ")
            }
        );
        let authority = ExplainAuthority {
            pool,
            principal,
            metrics: Metrics::new(),
            ticket_validation_url: args.ticket_validation_url.clone(),
        };
        let facts = Facts {
            method: &args.method,
            target: &t,
            token: Some("explain"),
            client_ip: None,
            user_agent: None,
            request_id: "explain",
        };
        let outcome = decide(&authority, &mapping, switches, &facts).await;
        if let Outcome::Forward(f) | Outcome::ShadowDeny { forward: f, .. } = &outcome {
            if let Some(p) = &f.principal {
                if p.roles() != authority.principal.roles() {
                    println!("ticket-scoped grants add: {}", p.roles_header());
                }
            }
        }
        println!("decision: {}", describe(&outcome));
        println!(
            "answer: {}",
            outcome
                .status()
                .map_or("forwarded (Console answers)".to_string(), |s| s.to_string())
        );
        Ok(())
    })
}
