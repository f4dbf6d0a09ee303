//! The seeds' invariants a gateway with these settings holds on this database (004 §1 I-4, I-5,
//! I-6, I-11; 004 §5/§9.3 T-PEN-6): each met, not met (and why), or not checkable here (and
//! why). `check --database-url` prints them, `rollout` prints them and makes I-11 a blocker of
//! every cluster's verdict, and the cockpit's board shows them (`rollout --json`'s
//! `invariants`). Nothing here claims an invariant the gateway does not hold: a fact the
//! database does not give is "not checkable", never "met".

use serde::Serialize;

use crate::runtime::posture::{DecisionSettings, Kind, PostureSettings, TicketRevalidation};
use crate::stores::db::Db;
use crate::stores::invariants::{self as facts, Promotion};

/// The flag I-11 names.
pub const FLAG: &str = "FLAG_RBAC_V2";
/// How long one read of the outbox may take.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    decision: &DecisionSettings,
    posture: &PostureSettings,
) -> Vec<Invariant> {
    // Console's tables carrying code of another role's (an index whose expression calls a
    // function of Console's role: the planner runs it as whoever plans a read of the table,
    // migration 0038) are not read for I-4: the read would run it as this command's role.
    // A role that cannot look does not read either.
    // The tables are held (locked) from the look to the read (`hold_console_tables`).
    let held = crate::stores::schema::hold_console_tables(pool).await;
    let unread = match held.as_ref().map(|h| h.findings.as_ref()) {
        Ok(Some(found)) if found.is_empty() => None,
        Ok(Some(found)) => Some(format!("Console's tables are not read here: code of another role's on them would run as this role ({} finding(s); `check --database-url` names each)", found.len())),
        Ok(None) => Some("Console's tables are not read here: this role may not run rbac_gateway_console_code, which looks first for code of another role's on them that a read would run as this role (deploy/mapping-grants.sql grants it to rbac_gateway_reader)".to_string()),
        Err(e) => Some(format!("Console's tables are not read here: cannot look for code of another role's on them first: {e}")),
    };
    let i4 = match unread {
        Some(why) => Invariant::new("I-4", State::NotCheckable, why),
        None => i4(pool, decision, posture).await,
    };
    drop(held);
    vec![
        i4,
        i5(pool, posture).await,
        i6(pool).await,
        i11(pool, decision, posture).await,
        t_pen_6(decision),
    ]
}

/// I-4: the alert before the session proceeds, and superadmin held through break-glass only.
async fn i4(pool: &Db, decision: &DecisionSettings, posture: &PostureSettings) -> Invariant {
    let holders = facts::break_glass_roles_outside_sessions(pool).await;
    let mut not_met = Vec::new();
    let mut said = Vec::new();
    if !decision.break_glass_requires_alert {
        not_met.push("--break-glass-requires-alert=false: a break-glass session's roles count before its alert is delivered".to_string());
    } else if posture.alert_webhook_url.is_none() {
        said.push(
            "no --alert-webhook-url here: unless another replica or `sweep` delivers its alert, no break-glass session proceeds"
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
                .map(|x| format!("admin {} holds {} through {}", x.admin_id, x.role, x.path))
                .collect();
        }
        Err(e) => {
            let why = format!("cannot read who holds the break-glass group's roles: {e}");
            // The opt-out alone is not met, whatever the database says.
            if not_met.is_empty() {
                return Invariant::new("I-4", State::NotCheckable, why);
            }
            details.push(why);
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

/// I-5: every grant and revoke the gateway writes reaches Console's audit writer (the outbox of
/// `rbac_gateway_audit_outbox`, docs/audit-writer.md): an audit writer is set, and no row waits
/// past `--audit-writer-alert-after`.
async fn i5(pool: &Db, posture: &PostureSettings) -> Invariant {
    let after = std::time::Duration::from_secs_f64(posture.audit_writer_alert_after.max(0.0));
    let state = crate::stores::audit_outbox::outbox_state(pool, after, LIMIT).await;
    let configured = posture.audit_writer_url.is_some();
    match (configured, state) {
        (_, Err(e)) => Invariant::new(
            "I-5",
            if configured { State::NotCheckable } else { State::NotMet },
            format!(
                "{}rbac_gateway_audit_outbox cannot be read: {e}",
                if configured { "" } else { "no --audit-writer-url; " }
            ),
        ),
        (false, Ok(s)) => Invariant::new(
            "I-5",
            State::NotMet,
            format!(
                "no --audit-writer-url: the rbac_grants_audit rows the gateway writes wait in rbac_gateway_audit_outbox, undelivered to customer_audit_events ({} now)",
                s.undelivered
            ),
        ),
        (true, Ok(s)) if s.overdue > 0 => {
            let mut i = Invariant::new(
                "I-5",
                State::NotMet,
                format!(
                    "{} rbac_grants_audit row(s) undelivered to the audit writer for longer than {}s (oldest {:.0}s)",
                    s.overdue,
                    after.as_secs(),
                    s.oldest_seconds
                ),
            );
            i.details.extend(s.last_error.map(|e| format!("last error: {e}")));
            i
        }
        (true, Ok(s)) => Invariant::new(
            "I-5",
            State::Met,
            format!(
                "every rbac_grants_audit row the gateway writes goes to the audit writer with its id as the idempotency key; {} undelivered, none past {}s",
                s.undelivered,
                after.as_secs()
            ),
        ),
    }
}

/// I-6: erasure cascades from `admins`.
async fn i6(pool: &Db) -> Invariant {
    match facts::erasure(pool).await {
        Ok((missing, blocking, trigger)) => {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!(
                    "no ON DELETE CASCADE reference to admins from {}",
                    missing.join(", ")
                ));
            }
            if !blocking.is_empty() {
                why.push(format!(
                    "references to admins that block an erasure (NO ACTION or RESTRICT): {}",
                    blocking.join(", ")
                ));
            }
            if !trigger {
                why.push("trigger rbac_gateway_erase_admin on admins is missing or disabled (the gateway's rows naming an erased admin stay; run `rbac-gateway migrate`)".to_string());
            }
            if why.is_empty() {
                Invariant::new("I-6", State::Met, "deleting an admin cascades to their sessions, groups, ticket grants, break-glass sessions and grants audit rows, no reference blocks it, and the gateway's rows naming them are erased")
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

/// I-11: FLAG_RBAC_V2 is not on in production without its `console_flag_promotions` row. The
/// kill switch is the fleet's (its latest recorded load) when a gateway recorded one, else this
/// command's.
async fn i11(pool: &Db, decision: &DecisionSettings, posture: &PostureSettings) -> Invariant {
    let promotion = facts::flag_promotion(pool, FLAG).await;
    let row = match &promotion {
        Ok(p) => p.said(FLAG),
        Err(e) => format!("console_flag_promotions could not be read: {e}"),
    };
    let (kill_switch, whose) = match facts::fleet_kill_switch(pool).await {
        Ok(Some(on)) => (on, "the fleet's latest recorded load"),
        _ => (decision.kill_switch(), "this command's FLAG_RBAC_V2"),
    };
    let env = posture.environment();
    let mut i = match (&env, kill_switch, &promotion) {
        (None, _, _) => Invariant::new(
            "I-11",
            State::NotCheckable,
            "the environment is not configured (--environment, GATEWAY_ENVIRONMENT or OTEL_RESOURCE_ATTRIBUTES' deployment.environment.name): whether this is production is unknown",
        ),
        (Some(e), _, _) if e.kind() == Kind::NotProduction => Invariant::new(
            "I-11",
            State::Met,
            format!("{} is not production ({}): the row is needed before promotion to production", e.name, e.source),
        ),
        (Some(e), true, _) => Invariant::new(
            "I-11",
            State::Met,
            format!("{FLAG}=0 in {} ({whose}): not promoted", e.name),
        ),
        (Some(e), false, Ok(Promotion::Present { .. })) => Invariant::new(
            "I-11",
            State::Met,
            format!("{FLAG} is on in {} and has its console_flag_promotions row", e.name),
        ),
        (Some(e), false, Ok(Promotion::Absent | Promotion::NoTable)) => Invariant::new(
            "I-11",
            State::NotMet,
            format!("{FLAG} is on in {} ({whose}) without its console_flag_promotions row (002 Phase 2 inserts it; the gateway keeps enforcing the mapping)", e.name),
        ),
        (Some(e), false, _) => Invariant::new(
            "I-11",
            State::NotCheckable,
            format!("{FLAG} is on in {} ({whose}), and whether console_flag_promotions holds its row cannot be read here", e.name),
        ),
    };
    i.details.push(row);
    // Judged as production, as `serve` judges it (it reads the row there too): a name that says
    // neither was "not checkable" here while `serve` said "not met" (review B).
    if let Some(e) = env.as_ref().filter(|e| e.kind() == Kind::Other) {
        i.details.push(format!(
            "environment {:?} ({}) is neither a production name (production, prod, prd, or one followed by - or _) nor a known other one (staging, dev, test, qa, ...): judged as production, as serve judges it; set --environment to say which",
            e.name, e.source
        ));
    }
    i
}

/// T-PEN-6: ticket grants re-validated against FreeScout on every request, fail closed.
fn t_pen_6(decision: &DecisionSettings) -> Invariant {
    match decision.ticket_revalidation() {
        TicketRevalidation::GrantsOff => Invariant::new("T-PEN-6", State::Met, "FLAG_TICKET_SCOPED_GRANTS=0: no ticket grant counts"),
        TicketRevalidation::EveryRequest => Invariant::new("T-PEN-6", State::Met, "each ticket grant is re-validated against --ticket-validation-url on every request (503 when FreeScout does not answer)"),
        TicketRevalidation::Refused => Invariant::new("T-PEN-6", State::Met, "no --ticket-validation-url: no ticket grant is honoured (fail closed)"),
        TicketRevalidation::Waived => Invariant::new("T-PEN-6", State::NotMet, "waived (--ticket-revalidation-waived): ticket grants are honoured from rbac_ticket_grants alone, no ticket is re-checked per request"),
    }
}

/// The section as `check` and `rollout` print it.
pub fn lines(invariants: &[Invariant]) -> Vec<String> {
    let mut out = vec![
        "invariants:".to_string(),
        "  (I-4 and T-PEN-6 as this command's flags and environment set them, the same serve reads: run it with the gateway's; FLAG_RBAC_V2 as the fleet last recorded it)".to_string(),
    ];
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
