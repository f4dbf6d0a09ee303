//! One step from outcome to answer, for every door.
//!
//! [`crate::policy::outcome::decide`] says what should happen to a request; [`carry_out`] makes it
//! happen, once, whatever door the request came through: the denial's row made durable (or
//! 503 when it cannot be), the shadow row written, the request counted under its [`Decision`],
//! the log line, the identity Console is told (checked to be sendable), the request id. What is
//! left is transport: the data plane serialises an [`Answer`] onto the request to Console or
//! onto its own response, forward-auth maps it to a status and headers for the edge. A new door
//! costs only its transport.
//!
//! The shape follows Envoy's `CheckResponse` (an OK answer with headers to set, or a denied
//! answer with a status) and oauth2-proxy, whose `AuthOnly` and `Proxy` share everything but
//! the last step.

use std::sync::Arc;
use std::time::Instant;

use crate::policy::audit_event::AuditEvent;
use crate::policy::outcome::{Forward, Outcome, Unavailable, Via};
pub use crate::policy::principal::Identity;
pub use crate::policy::request_id::RequestId;
pub use crate::policy::verdict::Decision;

/// Where the aftermath writes: the gateway's durable audit writer and its metrics; an
/// in-memory list in tests.
pub trait Records {
    /// Makes `row` durable (for a denial, before the 403 leaves).
    fn record(
        &self,
        row: Arc<AuditEvent>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Counts a durable denial by rule and reason (`rbac_gateway_denials_total`).
    fn denied(&self, rule: &str, reason: &str);
    /// Counts a shadow-mode would-be denial by rule (`rbac_gateway_shadow_denials_total`).
    fn shadow_denied(&self, rule: &str);
    /// Counts a refused request by reason (`rbac_gateway_refusals_total`): a
    /// [`crate::policy::target::Refusal`] label or a [`BodyRefusal`]'s.
    fn refused(&self, reason: &str);
    /// Makes `row` durable without holding up the answer (a drift row: Console has answered).
    fn record_later(&self, row: Arc<AuditEvent>);
    /// Counts Console's answer on a shadow-mode rule: against the gateway's decision
    /// (`drifted`: `rbac_gateway_drift_total` by rule and kind) or with it
    /// (`rbac_gateway_shadow_agreements_total` by rule).
    fn shadowed(&self, rule: &str, drifted: Option<&str>);
}

/// Where a door counts its answers: the data plane keeps per-worker handles of
/// `rbac_gateway_requests_total`, forward-auth counts `rbac_gateway_authz_requests_total`.
/// Returns the time it read (the data plane starts Console's clock there).
pub trait Tally {
    fn count(&self, decision: Decision, started: Instant) -> Instant;
    /// Counts Console's answer to a forwarded request by status class, with the time it took
    /// (`rbac_gateway_upstream_duration_seconds`). A door that does not forward counts none.
    fn console(&self, _status: u16, _seconds: f64) {}
}

/// The gateway's own answer, when Console is not asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 400: the request cannot be decided with certainty.
    Refused,
    /// No valid session: the data plane answers 302, forward-auth 401 (an edge reads only
    /// 2xx/401/403 as decisions), both with this `Location`, ready to write.
    Login { location: http::HeaderValue },
    /// 403, its row durable.
    Denied,
    /// 404: the route was deleted by the cutover.
    Gone,
    /// 503: the decision or its row could not be made.
    Unavailable,
}

impl Reply {
    /// The status of each reply and the plain-text body the data plane sends with it (the
    /// reason phrase and a newline): the one table of every door. Forward-auth answers
    /// [`Reply::Login`] with 401 instead ([`Answer::authz_status`]) and sends no body.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Reply::Refused => (400, "Bad Request\n"),
            Reply::Login { .. } => (302, "Found\n"),
            Reply::Denied => (403, "Forbidden\n"),
            Reply::Gone => (404, "Not Found\n"),
            Reply::Unavailable => (503, "Service Unavailable\n"),
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            Reply::Refused => Decision::Refused,
            Reply::Login { .. } => Decision::Redirected,
            Reply::Denied => Decision::Denied,
            Reply::Gone => Decision::Gone,
            Reply::Unavailable => Decision::Unavailable,
        }
    }
}

/// What a door does with the request, the aftermath of its outcome already carried out.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Let it through to Console, telling it who asks (`identity`; none: every identity header
    /// removed) and, in shadow mode, that the gateway would have denied.
    Forward {
        forward: Forward,
        identity: Option<Identity>,
        shadow: bool,
    },
    /// The gateway answers itself.
    Reply(Reply),
}

impl Answer {
    /// The status the client sees from the data plane, or None when Console answers.
    pub fn proxy_status(&self) -> Option<u16> {
        match self {
            Answer::Forward { .. } => None,
            Answer::Reply(r) => Some(r.status().0),
        }
    }

    /// The status forward-auth gives the edge: 200 to let the request through, 401 for the
    /// login (an edge reads only 2xx/401/403 as decisions), else the reply's own.
    pub fn authz_status(&self) -> u16 {
        match self {
            Answer::Forward { .. } => 200,
            Answer::Reply(Reply::Login { .. }) => 401,
            Answer::Reply(r) => r.status().0,
        }
    }
}

/// Console could not be reached or did not answer in time: the data plane's 502 and 504.
pub const BAD_GATEWAY: (u16, &str) = (502, "Bad Gateway\n");
pub const GATEWAY_TIMEOUT: (u16, &str) = (504, "Gateway Timeout\n");

/// A request body the data plane will not forward, found while reading it after the decision:
/// its status, reason phrase and `rbac_gateway_refusals_total` label, primed at start-up with
/// the other refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Malformed or cut short (chunked framing, a length not met): 400.
    Malformed,
    /// Stopped arriving for `--body-read-timeout-ms`: 408.
    TimedOut,
    /// Over `--max-body-bytes`: 413.
    TooLarge,
    /// The bodies being read hold `--max-buffered-body-bytes`: 503 with `Retry-After`.
    Busy,
}

impl BodyRefusal {
    pub const ALL: [BodyRefusal; 4] = [
        BodyRefusal::Malformed,
        BodyRefusal::TimedOut,
        BodyRefusal::TooLarge,
        BodyRefusal::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BodyRefusal::Malformed => "malformed_body",
            BodyRefusal::TimedOut => "body_timeout",
            BodyRefusal::TooLarge => "body_too_large",
            BodyRefusal::Busy => "body_budget",
        }
    }

    /// Its status and plain-text body, as [`Reply::status`].
    pub fn status(self) -> (u16, &'static str) {
        match self {
            BodyRefusal::Malformed => (400, "Bad Request\n"),
            BodyRefusal::TimedOut => (408, "Request Timeout\n"),
            BodyRefusal::TooLarge => (413, "Payload Too Large\n"),
            BodyRefusal::Busy => (503, "Service Unavailable\n"),
        }
    }
}

/// Carries out `outcome`: its row, its count, its log line; returns the answer the door
/// sends. Errors do not escape: a denial whose row cannot be made durable becomes 503, an
/// identity that cannot be sent becomes 503, a shadow row that cannot be written is logged
/// (the request is forwarded either way: shadow mode never changes what Console sees).
pub async fn carry_out(
    gw: &impl Records,
    tally: &impl Tally,
    outcome: Outcome,
    asked: &Asked<'_>,
) -> Carried {
    let (request_id, started, trace_id) =
        (asked.request_id.as_str(), asked.started, asked.trace_id);
    let decided = outcome.decision();
    if let Some(on) = &asked.decided {
        log_decided(&outcome, on, request_id, trace_id);
    }
    // The aftermath; Some: carrying it out failed, the answer is 503.
    let failed = match &outcome {
        Outcome::Refuse(refusal) => {
            tracing::warn!(request_id, trace_id, reason = %refusal, client_ip = asked.client_ip, "refused");
            gw.refused(refusal.as_str());
            None
        }
        Outcome::Unavailable(why) => Some(*why),
        Outcome::Deny { row } => match gw.record(row.clone()).await {
            Err(e) => {
                tracing::error!(request_id, trace_id, error = %e, "the denial's row is not durable in time: answering 503 (the row waits in memory for the database unless the writer stopped or its queue is full: see the writer's lines)");
                Some(Unavailable::Audit)
            }
            Ok(()) => {
                let rule = row.route.as_deref().unwrap_or("-");
                gw.denied(rule, row.reason.as_str());
                tracing::info!(
                    request_id,
                    trace_id,
                    admin_id = row.admin_id.as_deref().unwrap_or("-"),
                    method = row.method.as_str(),
                    path = row.path.as_str(),
                    rule,
                    required = row.required.as_deref().unwrap_or("-"),
                    reason = row.reason.as_str(),
                    mapping_version = row.mapping_version.as_deref().unwrap_or("-"),
                    "denied"
                );
                None
            }
        },
        Outcome::ShadowDeny { row, .. } => {
            gw.shadow_denied(row.route.as_deref().unwrap_or("-"));
            if let Err(e) = gw.record(row.clone()).await {
                tracing::error!(request_id, error = %e, "cannot record a shadow denial");
            }
            tracing::info!(
                request_id,
                trace_id,
                admin_id = row.admin_id.as_deref().unwrap_or("-"),
                rule = row.route.as_deref().unwrap_or("-"),
                "shadow: would deny, forwarding"
            );
            None
        }
        _ => None,
    };
    let answer = match failed {
        Some(why) => unavailable(request_id, why),
        None => answer(outcome, Some(request_id)),
    };
    // What was decided, unless carrying it out failed (503).
    let decision = match &answer {
        Answer::Reply(r) => r.decision(),
        Answer::Forward { .. } => decided,
    };
    let decided_at = tally.count(decision, started);
    Carried {
        answer,
        decision,
        decided_at,
        request_id: asked.request_id.header(),
    }
}

/// The lines of a request let through or sent to log in (debug), for every door.
fn log_decided(outcome: &Outcome, on: &DecidedOn<'_>, request_id: &str, trace_id: Option<&str>) {
    let (method, path, version) = (on.method, on.path, on.mapping_version);
    match outcome {
        Outcome::Forward(Forward {
            via: Via::Allowed(by),
            principal: Some(p),
            rule,
            ..
        }) => {
            tracing::debug!(request_id, trace_id, admin_id = %p.admin_id, method, path, rule = rule.as_deref().unwrap_or("-"), granted_by = ?by, mapping_version = version, "allowed")
        }
        Outcome::Forward(f) => {
            tracing::debug!(
                request_id,
                trace_id,
                method,
                path,
                rule = f.rule.as_deref().unwrap_or("-"),
                decision = outcome.label(),
                mapping_version = version,
                "forward"
            )
        }
        Outcome::Redirect { rule, .. } => {
            tracing::debug!(
                request_id,
                trace_id,
                method,
                path,
                rule = &**rule,
                mapping_version = version,
                "redirected to login: no valid session"
            )
        }
        _ => {}
    }
}

/// Who asked, as [`carry_out`] logs it: the request's id, the client's address as the door
/// knows it (the peer, the trusted router's, or the edge's report), and when the door started
/// on the request (the decision's clock).
pub struct Asked<'a> {
    pub request_id: &'a RequestId,
    /// The request's trace id when tracing is on: on the decision's log lines, so a denial
    /// joins its trace whatever its request id.
    pub trace_id: Option<&'a str>,
    pub client_ip: &'a str,
    pub started: Instant,
    /// What was decided on, for the allowed and login lines; None: refused before a target was
    /// read.
    pub decided: Option<DecidedOn<'a>>,
}

/// The request a decision was made on, as the log lines name it.
pub struct DecidedOn<'a> {
    pub method: &'a str,
    /// The path decided on (never the query).
    pub path: &'a str,
    pub mapping_version: &'a str,
}

/// An outcome carried out.
pub struct Carried {
    pub answer: Answer,
    /// What it was counted as: the outcome's decision, or `unavailable` when carrying it out
    /// failed.
    pub decision: Decision,
    /// When it was counted (the data plane starts Console's clock there).
    pub decided_at: Instant,
    /// `X-Request-Id`, ready to write on the answer (and, forwarded, to Console).
    pub request_id: http::HeaderValue,
}

/// The answer the doors would carry out for `outcome` when every write succeeds, without
/// writing, counting or logging anything: what `explain` prints.
pub fn answer_of(outcome: &Outcome) -> Answer {
    answer(outcome.clone(), None)
}

/// The answer to `outcome` once its aftermath succeeded. `request_id`: the request being
/// carried out (an identity that cannot be sent is logged); None for a question about an answer
/// (explain, the matrix), which logs nothing.
fn answer(outcome: Outcome, request_id: Option<&str>) -> Answer {
    match outcome {
        Outcome::Refuse(_) => Answer::Reply(Reply::Refused),
        Outcome::Gone => Answer::Reply(Reply::Gone),
        Outcome::Redirect { location, .. } => Answer::Reply(Reply::Login { location }),
        Outcome::Unavailable(_) => Answer::Reply(Reply::Unavailable),
        Outcome::Deny { .. } => Answer::Reply(Reply::Denied),
        Outcome::ShadowDeny { forward, .. } => forward_answer(request_id, forward, true),
        Outcome::Forward(forward) => {
            let shadow = forward.via == Via::ShadowDenied;
            forward_answer(request_id, forward, shadow)
        }
    }
}

fn forward_answer(request_id: Option<&str>, forward: Forward, shadow: bool) -> Answer {
    let identity = match &forward.principal {
        None => None,
        Some(p) => match p.identity() {
            Some(identity) => Some(identity.clone()),
            None => {
                return match request_id {
                    Some(request_id) => {
                        tracing::error!(request_id, admin_id = %p.admin_id, "admin id or role names are not valid header values: answering 503");
                        unavailable(request_id, Unavailable::Identity)
                    }
                    None => Answer::Reply(Reply::Unavailable),
                };
            }
        },
    };
    Answer::Forward {
        forward,
        identity,
        shadow,
    }
}

fn unavailable(request_id: &str, why: Unavailable) -> Answer {
    tracing::warn!(request_id, cause = why.as_str(), "answering 503");
    Answer::Reply(Reply::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::outcome::tests::{block_on, fake, run, Fake};
    use crate::policy::outcome::Switches;
    use std::sync::Mutex;

    /// Rows in memory; `fail` makes every write fail (a database and spool that cannot take it).
    #[derive(Default)]
    struct Rows {
        written: Mutex<Vec<String>>,
        denied: Mutex<Vec<(String, String)>>,
        shadow: Mutex<Vec<String>>,
        refused: Mutex<Vec<String>>,
        fail: bool,
    }

    impl Records for Rows {
        async fn record(&self, row: Arc<AuditEvent>) -> Result<(), String> {
            if self.fail {
                return Err("spool full".into());
            }
            self.written.lock().unwrap().push(row.event_type.clone());
            Ok(())
        }

        fn denied(&self, rule: &str, reason: &str) {
            self.denied
                .lock()
                .unwrap()
                .push((rule.to_string(), reason.to_string()));
        }

        fn shadow_denied(&self, rule: &str) {
            self.shadow.lock().unwrap().push(rule.to_string());
        }

        fn refused(&self, reason: &str) {
            self.refused.lock().unwrap().push(reason.to_string());
        }

        fn shadowed(&self, rule: &str, drifted: Option<&str>) {
            self.shadow
                .lock()
                .unwrap()
                .push(format!("{rule} {}", drifted.unwrap_or("agreed")));
        }

        fn record_later(&self, row: Arc<AuditEvent>) {
            self.written.lock().unwrap().push(row.event_type.clone());
        }
    }

    fn asked() -> Asked<'static> {
        static ID: std::sync::OnceLock<RequestId> = std::sync::OnceLock::new();
        Asked {
            request_id: ID.get_or_init(RequestId::next),
            trace_id: None,
            client_ip: "192.0.2.1",
            started: Instant::now(),
            decided: None,
        }
    }

    #[derive(Default)]
    struct Counts(Mutex<Vec<Decision>>);

    impl Tally for Counts {
        fn count(&self, decision: Decision, _started: Instant) -> Instant {
            self.0.lock().unwrap().push(decision);
            Instant::now()
        }
    }

    /// (decision counted, data-plane status (None: Console answers), forward-auth status, rows
    /// written, identity sent, shadow flag sent)
    type Expect = (
        Decision,
        Option<u16>,
        u16,
        &'static [&'static str],
        bool,
        bool,
    );

    #[test]
    fn every_outcome_is_carried_out_once_for_every_door() {
        let on = Switches {
            kill_switch: false,
            ticket_grants: true,
        };
        let up = fake();
        let down = Fake {
            db_down: true,
            ..fake()
        };
        let ok = Rows::default();
        let failing = Rows {
            fail: true,
            ..Rows::default()
        };
        use Decision::*;
        #[rustfmt::skip]
        let table: Vec<(&Fake, &Rows, &str, &str, &str, Expect)> = vec![
            (&up, &ok, "GET", "/enforced", "reader", (Allowed, None, 200, &[], true, false)),
            (&up, &ok, "GET", "/enforced", "nobody", (Denied, Some(403), 403, &["access_denied"], false, false)),
            (&up, &failing, "GET", "/enforced", "nobody", (Unavailable, Some(503), 503, &[], false, false)),
            (&up, &ok, "GET", "/enforced", "", (Redirected, Some(302), 401, &[], false, false)),
            (&up, &ok, "GET", "/shadowed", "nobody", (ShadowDenied, None, 200, &["access_denied_shadow"], true, true)),
            // A shadow row that cannot be written never changes what Console sees.
            (&up, &failing, "GET", "/shadowed", "nobody", (ShadowDenied, None, 200, &[], true, true)),
            (&up, &ok, "GET", "/shadowed", "reader", (Allowed, None, 200, &[], true, false)),
            (&up, &ok, "GET", "/open", "", (Public, None, 200, &[], false, false)),
            (&up, &ok, "POST", "/hook", "", (Machine, None, 200, &[], false, false)),
            (&up, &ok, "GET", "/offroute", "", (Off, None, 200, &[], false, false)),
            (&up, &ok, "GET", "/removed", "reader", (Gone, Some(404), 404, &[], false, false)),
            (&up, &ok, "GET", "/nowhere", "reader", (Denied, Some(403), 403, &["access_denied"], false, false)),
            (&down, &ok, "GET", "/enforced", "reader", (Unavailable, Some(503), 503, &[], false, false)),
        ];
        for (authority, rows, method, path, token, want) in table {
            let what = format!("{method} {path} as {token:?} (rows fail: {})", rows.fail);
            rows.written.lock().unwrap().clear();
            let counts = Counts::default();
            let outcome = block_on(run(authority, on, method, path, token));
            let carried = block_on(carry_out(rows, &counts, outcome, &asked()));
            let (identity, shadow) = match &carried.answer {
                Answer::Forward {
                    identity, shadow, ..
                } => (identity.is_some(), *shadow),
                Answer::Reply(_) => (false, false),
            };
            let written = rows.written.lock().unwrap().clone();
            let got: Expect = (
                carried.decision,
                carried.answer.proxy_status(),
                carried.answer.authz_status(),
                &[],
                identity,
                shadow,
            );
            assert_eq!(
                (got.0, got.1, got.2, got.4, got.5),
                (want.0, want.1, want.2, want.4, want.5),
                "{what}"
            );
            assert_eq!(written, want.3, "{what}: rows");
            assert_eq!(
                *counts.0.lock().unwrap(),
                vec![want.0],
                "{what}: counted once"
            );
        }
        // Counted by rule and reason only when durable.
        assert_eq!(
            ok.denied.lock().unwrap().len(),
            2,
            "{:?}",
            ok.denied.lock().unwrap()
        );
        assert!(failing.denied.lock().unwrap().is_empty());
        // Would-be denials are counted whether or not their row could be written.
        assert_eq!(ok.shadow.lock().unwrap().len(), 1);
        assert_eq!(failing.shadow.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_login_carries_its_location_to_both_doors() {
        let outcome = block_on(run(
            &fake(),
            Switches {
                kill_switch: false,
                ticket_grants: true,
            },
            "GET",
            "/enforced?a=1",
            "",
        ));
        let carried = block_on(carry_out(
            &Rows::default(),
            &Counts::default(),
            outcome,
            &asked(),
        ));
        match carried.answer {
            Answer::Reply(Reply::Login { location }) => {
                assert_eq!(location, "/auth/login?next=%2Fenforced%3Fa%3D1")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_is_counted_by_its_reason_and_answered_400_by_both_doors() {
        let (rows, counts) = (Rows::default(), Counts::default());
        let refusal = crate::policy::target::Refusal::TargetHeaders(
            "X-Forwarded-Uri without X-Forwarded-Method".into(),
        );
        let carried = block_on(carry_out(
            &rows,
            &counts,
            Outcome::Refuse(refusal),
            &asked(),
        ));
        assert_eq!(carried.decision, Decision::Refused);
        assert_eq!(
            (carried.answer.proxy_status(), carried.answer.authz_status()),
            (Some(400), 400)
        );
        assert_eq!(*rows.refused.lock().unwrap(), vec!["target_headers"]);
        assert!(
            rows.written.lock().unwrap().is_empty(),
            "no row for a refusal"
        );
        assert_eq!(*counts.0.lock().unwrap(), vec![Decision::Refused]);
    }

    #[test]
    fn every_reply_and_body_refusal_has_one_status_and_phrase() {
        let replies = [
            Reply::Refused,
            Reply::Login {
                location: http::HeaderValue::from_static("/auth/login"),
            },
            Reply::Denied,
            Reply::Gone,
            Reply::Unavailable,
        ];
        let statuses: Vec<u16> = replies.iter().map(|r| r.status().0).collect();
        assert_eq!(statuses, [400, 302, 403, 404, 503]);
        for r in &replies {
            let (status, body) = r.status();
            assert_eq!(
                http::StatusCode::from_u16(status)
                    .unwrap()
                    .canonical_reason(),
                body.strip_suffix('\n')
            );
        }
        let mut labels = std::collections::HashSet::new();
        for b in BodyRefusal::ALL {
            let (status, body) = b.status();
            assert_eq!(
                http::StatusCode::from_u16(status)
                    .unwrap()
                    .canonical_reason(),
                body.strip_suffix('\n')
            );
            assert!(labels.insert(b.as_str()), "{} twice", b.as_str());
            assert!(
                !crate::policy::target::Refusal::REASONS.contains(&b.as_str()),
                "{} is a target refusal's label too",
                b.as_str()
            );
        }
    }

    #[test]
    fn decision_labels_are_distinct_and_indexed_in_order() {
        let mut seen = std::collections::HashSet::new();
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
            assert!(seen.insert(d.as_str()), "{d} twice");
        }
    }

    #[test]
    fn request_ids_are_a_process_prefix_and_a_counter_in_hex() {
        let (a, b) = (RequestId::next(), RequestId::next());
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(id
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert_eq!(id.header().as_bytes(), id.as_str().as_bytes());
            assert_eq!(id.to_string(), id.as_str());
        }
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
        let counter = |id: &RequestId| u64::from_str_radix(&id.as_str()[16..], 16).unwrap();
        // Other tests may take ids in between, never the same one.
        assert!(counter(&b) > counter(&a));
        let c = RequestId::next();
        assert_ne!(c.as_str(), b.as_str());
    }

    #[test]
    fn a_trusted_request_id_is_taken_only_when_valid_and_alone() {
        let headers = |vs: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in vs {
                h.append("x-request-id", http::HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let uuid = "f9f4e6d2-0b3e-4c1a-9d55-2f3a1b7c8e90";
        let id = RequestId::trusted(&headers(&[uuid])).expect("a UUID");
        assert_eq!(id.as_str(), uuid);
        assert_eq!(id.header().as_bytes(), uuid.as_bytes());
        let longest = "a".repeat(RequestId::MAX);
        assert_eq!(
            RequestId::trusted(&headers(&[&longest])).unwrap().as_str(),
            longest
        );
        assert!(RequestId::trusted(&headers(&["abc+/=-0123456789XYZ"])).is_some());
        for bad in [
            "short-id".to_string(),
            "a".repeat(RequestId::MAX + 1),
            "has space in it 0123456789".to_string(),
            "quote\"0123456789012345678".to_string(),
            "semi;colon0123456789012345".to_string(),
            "dot.0123456789012345678901".to_string(),
        ] {
            assert!(RequestId::trusted(&headers(&[&bad])).is_none(), "{bad}");
        }
        assert!(RequestId::trusted(&headers(&[])).is_none());
        assert!(
            RequestId::trusted(&headers(&[uuid, uuid])).is_none(),
            "two ids"
        );
    }
}
