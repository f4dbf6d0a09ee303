//! Console's reader API (002 Phase 2, RV-3), answered by the gateway itself on the main listener:
//! `GET /api/rbac/me` and `GET /api/rbac/permissions/check?permission=P[&customer_id=N]`.
//!
//! The gateway already holds what these answers need: the resolver and its caches (kept coherent
//! by the change feed) and the live ticket-scoped grants. [`answer`] computes the JSON from a
//! [`Source`] (the gateway's state, `gateway/reader.rs`, which also counts the call; or an
//! in-memory fake); `doors/rbac_api.rs` only writes it as HTTP. These paths never reach
//! [`crate::policy::outcome::decide`] nor Console.
//!
//! A permission is held when it is among the effective permissions of 004 §3.4 (groups -> roles
//! -> inheritance -> permissions, break-glass included); with `customer_id`, the admin's live
//! ticket-scoped grants for that customer count too (§3.4 step 2), each granting ticket
//! re-validated as the proxy does (§9.3: the validator unreachable -> 503, fail closed).

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::policy::outcome::{Authority, Unavailable};
use crate::policy::principal::Principal;
use crate::policy::target::Target;

pub const ME: &str = "/api/rbac/me";
pub const CHECK: &str = "/api/rbac/permissions/check";

/// The label of `rbac_gateway_requests_total{decision}` for reader API calls.
pub const LABEL: &str = "api";

/// One active ticket-scoped grant, as `/me` lists it (filled by the ticket store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketGrant {
    pub ticket_id: String,
    pub customer_id: i32,
    pub role: String,
    pub expires_at_utc: Option<DateTime<Utc>>,
}

/// What the reader API needs besides the decision's [`Authority`].
pub trait Source: Authority {
    /// FLAG_TICKET_SCOPED_GRANTS: when off, ticket grants grant nothing (004 §9.1).
    fn ticket_grants_on(&self) -> bool;

    /// The admin's active ticket-scoped grants (not revoked, not expired).
    fn ticket_grants(
        &self,
        admin_id: &str,
    ) -> impl Future<Output = Result<Vec<TicketGrant>, Unavailable>> + Send;

    /// The first (by name) of `roles` that grants `permission` directly.
    fn role_granting(
        &self,
        roles: &[String],
        permission: &str,
    ) -> impl Future<Output = Result<Option<String>, Unavailable>> + Send;

    /// The first (by id) live, re-validated ticket whose grant for `customer` carries
    /// `permission` (inheritance expanded); None when there is none.
    fn ticket_granting(
        &self,
        principal: &Principal,
        customer: i32,
        permission: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<String>, Unavailable>> + Send;
}

/// A reader API call, recognised from the decoded path (what Console would route on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Me,
    Check { query: Option<String> },
}

impl Call {
    /// The call this target names, or None when the path is not part of the reader API.
    pub fn of(target: &Target) -> Option<Call> {
        // The path first: every other request of the data plane asks this, and is no call.
        match target.path() {
            ME => Some(Call::Me),
            CHECK => Some(Call::Check {
                query: target.query().map(str::to_string),
            }),
            _ => None,
        }
    }
}

/// An answer: status and JSON body, and for the request's span who asked and why it is not a
/// grant (the door writes them: `rbac.admin_id`, `rbac.reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The session's admin, once it was resolved.
    pub asked_by: Option<Arc<Principal>>,
    /// Why: a refusal's error (`method_not_allowed`, `bad_parameter`), `no_session`, an
    /// unavailable part (`identity`, `tickets`), or `missing_role` for a check answered
    /// `allowed: false` (the words of the proxy's span and audit rows); None for a grant or `me`.
    pub reason: Option<&'static str>,
}

impl Answer {
    fn ok(body: Value, reason: Option<&'static str>) -> Answer {
        Answer {
            status: 200,
            body,
            asked_by: None,
            reason,
        }
    }

    fn error(status: u16, error: &'static str, message: &str) -> Answer {
        Answer {
            status,
            body: json!({ "error": error, "message": message }),
            asked_by: None,
            reason: Some(error),
        }
    }

    fn bad_parameter(name: &str, message: &str) -> Answer {
        Answer {
            status: 400,
            body: json!({ "error": "bad_parameter", "parameter": name, "message": message }),
            asked_by: None,
            reason: Some("bad_parameter"),
        }
    }

    fn unavailable(u: Unavailable) -> Answer {
        let message = match u {
            Unavailable::Identity => "the session could not be resolved; try again",
            Unavailable::Tickets => "ticket grants could not be read or re-validated; try again",
            Unavailable::Audit => "try again",
        };
        Answer {
            reason: Some(u.as_str()),
            ..Answer::error(503, "unavailable", message)
        }
    }
}

fn utc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The check's parameters: `permission` (required, non-empty) and `customer_id` (digits, fits
/// an i32). A parameter given twice is refused: the answer would depend on which one is read.
fn check_params(query: Option<&str>) -> Result<(String, Option<i32>), Answer> {
    let mut permission = None;
    let mut customer = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        let (Ok(k), Ok(v)) = (decode(k), decode(v)) else {
            return Err(Answer::bad_parameter(
                "query",
                "the query string is not valid UTF-8 after percent-decoding",
            ));
        };
        let slot = match k.as_str() {
            "permission" => &mut permission,
            "customer_id" => &mut customer,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Answer::bad_parameter(&k, "given more than once"));
        }
        *slot = Some(v);
    }
    let permission = match permission {
        Some(p) if !p.is_empty() => p,
        Some(_) => return Err(Answer::bad_parameter("permission", "is empty")),
        None => return Err(Answer::bad_parameter("permission", "is required")),
    };
    let customer = match customer {
        None => None,
        Some(c) => {
            let parsed = (!c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
                .then(|| c.parse::<i32>().ok())
                .flatten();
            match parsed {
                Some(n) => Some(n),
                None => {
                    return Err(Answer::bad_parameter(
                        "customer_id",
                        "must be a customer id (decimal digits)",
                    ))
                }
            }
        }
    };
    Ok((permission, customer))
}

/// The check's parameters: the permission asked and the customer, if any.
type Params = (String, Option<i32>);

/// What the gateway answers a reader API call, as far as it is known without reading the
/// session's grants, in `serve`'s order (the method and parameters, then the session): the
/// status, the words of `explain`'s decision line (also a `matrix` cell), and a refusal's body.
pub fn outline(call: &Call, method: &str, session: bool) -> (u16, String, Option<Value>) {
    match precheck(call, method) {
        Err(a) => (a.status, format!("{} refused", a.status), Some(a.body)),
        Ok(_) if !session => (401, "401 (no session)".into(), None),
        Ok(_) => (
            200,
            "answered by the gateway from the admin's roles, permissions and ticket grants (never forwarded; 503 while the database cannot be read)".into(),
            None,
        ),
    }
}

/// What a reader API call gets before any session or database is read, in this order: 405 for
/// a method other than GET or HEAD, 400 for bad parameters (a malformed call is the caller's
/// bug whether or not it has a session). Otherwise the check's parameters (None for `me`).
/// `serve` answers through it, and `explain` reports from it.
pub fn precheck(call: &Call, method: &str) -> Result<Option<Params>, Answer> {
    if method != "GET" && method != "HEAD" {
        return Err(Answer::error(
            405,
            "method_not_allowed",
            "only GET is answered here",
        ));
    }
    match call {
        Call::Me => Ok(None),
        Call::Check { query } => check_params(query.as_deref()).map(Some),
    }
}

/// The answer to a reader API call for the session `token`.
pub async fn answer<S: Source>(
    src: &S,
    call: &Call,
    method: &str,
    token: Option<&str>,
    request_id: &str,
) -> Answer {
    let params = match precheck(call, method) {
        Ok(p) => p,
        Err(a) => return a,
    };
    let resolved = match token {
        None => Ok(None),
        Some(t) => src.principal_for_token(t, std::time::Instant::now()).await,
    };
    let principal: Arc<Principal> = match resolved {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Answer {
                reason: Some("no_session"),
                ..Answer::error(401, "unauthenticated", "no valid session: log in first")
            }
        }
        Err(u) => return Answer::unavailable(u),
    };
    let answer = match params {
        None => me(src, &principal).await,
        Some((permission, customer)) => {
            check(src, &principal, &permission, customer, request_id).await
        }
    };
    Answer {
        asked_by: Some(principal),
        ..answer
    }
}

async fn me<S: Source>(src: &S, p: &Principal) -> Answer {
    let grants = if src.ticket_grants_on() {
        match src.ticket_grants(&p.admin_id).await {
            Ok(g) => g,
            Err(u) => return Answer::unavailable(u),
        }
    } else {
        Vec::new()
    };
    let grants: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({
                "ticket_id": g.ticket_id,
                "customer_id": g.customer_id,
                "role": g.role,
                "expires_at_utc": g.expires_at_utc.as_ref().map(utc),
            })
        })
        .collect();
    Answer::ok(
        json!({
            "admin_id": p.admin_id,
            "roles": p.roles(),
            "permissions": p.permissions(),
            "break_glass": p.break_glass_until.as_ref().map(|t| json!({ "expires_at_utc": utc(t) })),
            "ticket_grants": grants,
        }),
        None,
    )
}

async fn check<S: Source>(
    src: &S,
    p: &Principal,
    permission: &str,
    customer: Option<i32>,
    request_id: &str,
) -> Answer {
    let via = if p.has_permission(permission) {
        match src.role_granting(p.roles(), permission).await {
            Ok(Some(role)) => Some(format!("role {role}")),
            // Held, but no role of the current catalogue names it (the catalogue changed since
            // the session's set was resolved): the effective set is what the proxy decides on.
            Ok(None) => Some(format!("permission {permission}")),
            Err(u) => return Answer::unavailable(u),
        }
    } else {
        match customer {
            Some(c) if src.ticket_grants_on() => {
                match src.ticket_granting(p, c, permission, request_id).await {
                    Ok(t) => t.map(|t| format!("ticket {t}")),
                    Err(u) => return Answer::unavailable(u),
                }
            }
            _ => None,
        }
    };
    let reason = via
        .is_none()
        .then_some(crate::policy::verdict::REASON_MISSING_ROLE);
    Answer::ok(
        json!({ "permission": permission, "allowed": via.is_some(), "via": via }),
        reason,
    )
}
