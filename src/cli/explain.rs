//! `rbac-gateway explain`: the decision for one admin, method and path.

use std::time::Duration;

use super::{failure, load_mapping, runtime, usage, Exit};
use crate::config::ExplainArgs;
use crate::decision::{authorize, route_step, Step, Verdict};
use crate::{db, identity, target};

pub fn explain(args: ExplainArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    let t = target::check_method(args.method.as_bytes())
        .and_then(|_| target::parse_target(args.path.as_bytes()));
    let t = match t {
        Ok(t) => t,
        Err(r) => {
            println!("decision: 400 refused ({r})");
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
    let kill = args.flag_rbac_v2 == "0";
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
        let decision = match route_step(route, kill) {
            Step::NoRoute => "403 denied (no_route)".to_string(),
            Step::Gone => "404 gone".to_string(),
            Step::Forward(k) => format!("forward ({})", k.as_str()),
            Step::NeedPrincipal => match authorize(route.unwrap(), &principal) {
                Verdict::Allow { by } => format!("allow (granted by {by:?})"),
                Verdict::Deny => format!(
                    "403 denied (missing_role, mode {})",
                    route.unwrap().mode.as_str()
                ),
            },
        };
        println!("decision: {decision}");
        Ok(())
    })
}
