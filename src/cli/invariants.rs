//! The seeds' invariants a gateway with these settings holds on this database (004 §1 I-4, I-5,
//! I-6, I-11; 004 §5/§9.3 T-PEN-6): each met, not met (and why), or not checkable here (and
//! why). `check --database-url` prints them, `rollout` prints them and makes I-11 a blocker of
//! every cluster's verdict, and the cockpit's board shows them (`rollout --json`'s
//! `invariants`). Nothing here claims an invariant the gateway does not hold: a fact the
//! database does not give is "not checkable", never "met".

use serde::Serialize;

use crate::runtime::posture::{DecisionArgs, PostureArgs, TicketRevalidation};
use crate::stores::db::Db;
use crate::stores::invariants::{self as facts, Promotion};

/// The flag I-11 names.
pub const FLAG: &str = "FLAG_RBAC_V2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Met,
    NotMet,
    NotCheckable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Met => "met",
            State::NotMet => "NOT MET",
            State::NotCheckable => "not checkable here",
        }
    }
}

/// One invariant: its id (as the seeds name it), its state, why, and the lines that show it (the
/// admins who hold a break-glass role, the promotion row).
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub id: &'static str,
    pub state: State,
    pub why: String,
    pub details: Vec<String>,
}

impl Invariant {
    fn new(id: &'static str, state: State, why: impl Into<String>) -> Invariant {
        Invariant {
            id,
            state,
            why: why.into(),
            details: Vec::new(),
        }
    }
}

/// Every invariant, in the seeds' order.
pub async fn invariants(
    pool: &Db,
    decision: &DecisionArgs,
    posture: &PostureArgs,
) -> Vec<Invariant> {
    vec![
        i4(pool, decision, posture).await,
        i5(),
        i6(pool).await,
        i11(pool, decision, posture).await,
        t_pen_6(decision),
    ]
}

/// I-4: the alert before the session proceeds, and superadmin held through break-glass only.
async fn i4(pool: &Db, decision: &DecisionArgs, posture: &PostureArgs) -> Invariant {
    let holders = facts::break_glass_roles_outside_sessions(pool).await;
    let mut not_met = Vec::new();
    let mut said = Vec::new();
    if !decision.break_glass_requires_alert {
        not_met.push("--break-glass-requires-alert=false: a break-glass session's roles count before its alert is delivered".to_string());
    } else if posture.alert_destination().is_none() {
        said.push(
            "no --alert-webhook-url: no alert is delivered, so no break-glass session can proceed"
                .to_string(),
        );
    } else {
        said.push("a break-glass session's roles count once its alert was delivered".to_string());
    }
    let mut details = Vec::new();
    match &holders {
        Ok(h) if h.is_empty() => said.push(
            "no admin holds a role of the break-glass group outside a break-glass session".into(),
        ),
        Ok(h) => {
            let admins: std::collections::BTreeSet<&str> =
                h.iter().map(|x| x.admin_id.as_str()).collect();
            not_met.push(format!(
                "{} admin(s) hold a role of the break-glass group outside a break-glass session (superadmin is break-glass only)",
                admins.len()
            ));
            details = h
                .iter()
                .map(|x| {
                    let who = if x.email.is_empty() {
                        x.admin_id.clone()
                    } else {
                        format!("{} ({})", x.admin_id, x.email)
                    };
                    format!("{who} holds {} through {}", x.role, x.path)
                })
                .collect();
        }
        Err(e) => {
            let mut i = Invariant::new(
                "I-4",
                State::NotCheckable,
                format!("cannot read who holds the break-glass group's roles: {e}"),
            );
            i.details = not_met;
            return i;
        }
    }
    let mut i = if not_met.is_empty() {
        Invariant::new("I-4", State::Met, said.join("; "))
    } else {
        Invariant::new("I-4", State::NotMet, not_met.join("; "))
    };
    i.details = details;
    i
}

/// I-5: every grant and revoke the gateway writes reaches Console's audit writer.
fn i5() -> Invariant {
    Invariant::new(
        "I-5",
        State::NotMet,
        "the rbac_grants_audit rows the gateway writes (sweep expiries, webhook revocations) are not delivered to Console's audit writer (customer_audit_events)",
    )
}

/// I-6: erasure cascades from `admins`.
async fn i6(pool: &Db) -> Invariant {
    match facts::erasure(pool).await {
        Ok((missing, trigger)) => {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!(
                    "no ON DELETE CASCADE reference to admins from {}",
                    missing.join(", ")
                ));
            }
            if !trigger {
                why.push("trigger rbac_gateway_erase_admin on admins is missing or disabled (the gateway's rows naming an erased admin stay; run `rbac-gateway migrate`)".to_string());
            }
            if why.is_empty() {
                Invariant::new("I-6", State::Met, "deleting an admin cascades to their sessions, groups, ticket grants and break-glass sessions, and erases the gateway's rows naming them")
            } else {
                Invariant::new("I-6", State::NotMet, why.join("; "))
            }
        }
        Err(e) => Invariant::new(
            "I-6",
            State::NotCheckable,
            format!("cannot read the references to admins: {e}"),
        ),
    }
}

/// I-11: FLAG_RBAC_V2 is not on in production without its `console_flag_promotions` row.
async fn i11(pool: &Db, decision: &DecisionArgs, posture: &PostureArgs) -> Invariant {
    let promotion = facts::flag_promotion(pool, FLAG).await;
    let row = match &promotion {
        Ok(p) => p.said(FLAG),
        Err(e) => format!("console_flag_promotions could not be read: {e}"),
    };
    let env = posture.environment();
    let mut i = match (&env, decision.kill_switch(), &promotion) {
        (None, _, _) => Invariant::new(
            "I-11",
            State::NotCheckable,
            "the environment is not configured (--environment, GATEWAY_ENVIRONMENT or OTEL_RESOURCE_ATTRIBUTES' deployment.environment.name): whether this is production is unknown",
        ),
        (Some(e), _, _) if !e.is_production() => Invariant::new(
            "I-11",
            State::Met,
            format!("{} is not production ({}): the row is needed before promotion to production", e.name, e.source),
        ),
        (Some(e), true, _) => Invariant::new(
            "I-11",
            State::Met,
            format!("{FLAG}=0 in {}: not promoted", e.name),
        ),
        (Some(e), false, Ok(Promotion::Present { .. })) => Invariant::new(
            "I-11",
            State::Met,
            format!("{FLAG} is on in {} and has its console_flag_promotions row", e.name),
        ),
        (Some(e), false, Err(_)) => Invariant::new(
            "I-11",
            State::NotCheckable,
            format!("{FLAG} is on in {}, and console_flag_promotions could not be read", e.name),
        ),
        (Some(e), false, Ok(_)) => Invariant::new(
            "I-11",
            State::NotMet,
            format!("{FLAG} is on in {} without its console_flag_promotions row (002 Phase 2 inserts it; the gateway keeps enforcing the mapping)", e.name),
        ),
    };
    i.details.push(row);
    i
}

/// T-PEN-6: ticket grants re-validated against FreeScout on every request, fail closed.
fn t_pen_6(decision: &DecisionArgs) -> Invariant {
    match decision.ticket_revalidation() {
        TicketRevalidation::GrantsOff => Invariant::new("T-PEN-6", State::Met, "FLAG_TICKET_SCOPED_GRANTS=0: no ticket grant counts"),
        TicketRevalidation::EveryRequest => Invariant::new("T-PEN-6", State::Met, "each ticket grant is re-validated against --ticket-validation-url on every request (503 when FreeScout does not answer)"),
        TicketRevalidation::Refused => Invariant::new("T-PEN-6", State::Met, "no --ticket-validation-url: no ticket grant is honoured (fail closed)"),
        TicketRevalidation::Waived => Invariant::new("T-PEN-6", State::NotMet, "waived (--ticket-revalidation-waived): ticket grants are honoured from rbac_ticket_grants alone, no ticket is re-checked per request"),
    }
}

/// The section as `check` and `rollout` print it.
pub fn lines(invariants: &[Invariant]) -> Vec<String> {
    let mut out = vec!["invariants:".to_string()];
    for i in invariants {
        out.push(format!("  {} {}: {}", i.id, i.state.as_str(), i.why));
        for d in &i.details {
            out.push(format!("      {d}"));
        }
    }
    out
}

/// What blocks every cluster's verdict in `rollout`: I-11 not met.
pub fn blocker(invariants: &[Invariant]) -> Option<String> {
    invariants
        .iter()
        .find(|i| i.id == "I-11" && i.state == State::NotMet)
        .map(|i| format!("I-11: {}", i.why))
}
