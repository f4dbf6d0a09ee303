//! The per-request policy as one function: the facts of a request in, a typed [`Outcome`] out.
//!
//! [`decide`] knows nothing of HTTP connections: the data plane (the proxy door), `explain`
//! and the benchmark call it with the facts they have, and the I/O it needs (who holds a
//! session, which ticket grants are live) comes in through [`Authority`]. The data plane turns
//! an outcome into an answer in one place ([`crate::policy::answer::carry_out`], for every door); `explain` prints it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::policy::audit_event::{AuditEvent, EVENT_DENIED, EVENT_DRIFT, EVENT_SHADOW_DENIED};
use crate::policy::mapping::{Mapping, Mode, Route};
use crate::policy::principal::Principal;
use crate::policy::target::{Refusal, Target};
use crate::policy::verdict::{
    authorize, effective_mode, route_step, ForwardKind, Grant, Step, Verdict, REASON_MISSING_ROLE,
    REASON_NO_ROUTE,
};

/// How the gateway's shadow decision and Console's own answer disagree (stored as the reason
/// of a drift row, the `kind` label of `rbac_gateway_drift_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// The gateway would allow; Console answered 403.
    ConsoleDenied,
    /// The gateway would deny; Console answered below 400.
    ConsoleAllowed,
}

impl DriftKind {
    pub const ALL: [DriftKind; 2] = [DriftKind::ConsoleDenied, DriftKind::ConsoleAllowed];

    pub const fn as_str(self) -> &'static str {
        match self {
            DriftKind::ConsoleDenied => "gateway_allowed_console_denied",
            DriftKind::ConsoleAllowed => "gateway_denied_console_allowed",
        }
    }

    /// The kind a stored reason names.
    pub fn from_reason(reason: &str) -> Option<DriftKind> {
        DriftKind::ALL.into_iter().find(|k| k.as_str() == reason)
    }

    /// Whether Console's status disagrees with the gateway in this way (002 Phase 4: Console's
    /// legacy gate answers 403 when it denies).
    pub fn disagrees(self, console_status: u16) -> bool {
        match self {
            DriftKind::ConsoleDenied => console_status == 403,
            DriftKind::ConsoleAllowed => console_status < 400,
        }
    }
}

/// What is known of a request once its target passed the checks of [`crate::policy::target`].
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The method, upper case.
    pub method: &'a str,
    pub target: &'a Target,
    /// The session cookie's value, as Console will read it; None when there is none.
    pub token: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    /// The `User-Agent` header's bytes; a row keeps them as Console reads them ([`latin1`]).
    pub user_agent: Option<&'a [u8]>,
    pub request_id: &'a str,
    /// When the request arrived: a remembered session that had ended by then is not used.
    pub at: Instant,
}

/// Why a request could not be decided (answered 503, fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The database did not answer while the session or roles were not cached.
    Identity,
    /// Ticket grants could not be read, or their re-validation did not answer.
    Tickets,
    /// The audit row of a denial could not be made durable.
    Audit,
}

impl Unavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Identity => "identity",
            Unavailable::Tickets => "tickets",
            Unavailable::Audit => "audit",
        }
    }
}

/// The I/O the decision needs. The gateway's shared state (a floor above this one) answers from
/// its caches and the database; tests answer from memory.
pub trait Authority {
    /// Who holds this session cookie at `at`; `Ok(None)` when no session live then has it.
    fn principal_for_token(
        &self,
        token: &str,
        at: Instant,
    ) -> impl Future<Output = Result<Option<Arc<Principal>>, Unavailable>> + Send;

    /// The admin behind a session cookie, only if already known without I/O (names the admin in
    /// a `no_route` row without a query per unmatched path).
    fn known_admin(&self, token: &str) -> impl Future<Output = Option<String>> + Send;

    /// The principal plus its live ticket-scoped grants for `customer` (re-validated when
    /// configured); `Ok(None)` when there are none.
    fn with_ticket_grants(
        &self,
        principal: &Principal,
        customer: i32,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<Principal>, Unavailable>> + Send;
}

/// The settings the decision depends on besides the mapping.
#[derive(Debug, Clone, Copy)]
pub struct Switches {
    /// FLAG_RBAC_V2=0: every route is `off` (I-5).
    pub kill_switch: bool,
    /// FLAG_TICKET_SCOPED_GRANTS: ticket grants count on rules with `customer_param`.
    pub ticket_grants: bool,
}

/// How a forwarded request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Public, machine, or mode off / kill switch: no session needed.
    Open(ForwardKind),
    /// A session holding a required role or permission.
    Allowed(Grant),
    /// Shadow mode, nothing required is held: forwarded, the would-be denial recorded.
    ShadowDenied,
}

/// A request to forward.
#[derive(Debug, Clone)]
pub struct Forward {
    pub via: Via,
    /// The admin the request is forwarded for (`X-Rbac-Admin-Id`, `X-Rbac-Roles`).
    pub principal: Option<Arc<Principal>>,
    /// The rule that matched (label), if any.
    pub rule: Option<Arc<str>>,
    /// Shadow mode: the row to write if Console's answer disagrees with the gateway.
    pub drift: Option<Box<AuditEvent>>,
}

impl Forward {
    /// Console's status disagrees with the gateway's shadow decision (002 Phase 4: Console's
    /// legacy gate answers 403 when it denies).
    pub fn drifts(&self, console_status: u16) -> bool {
        self.drift
            .as_deref()
            .and_then(|d| DriftKind::from_reason(&d.reason))
            .is_some_and(|k| k.disagrees(console_status))
    }
}

/// What the gateway does with a request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 400: the request cannot be decided with certainty.
    Refuse(Refusal),
    /// Forward to Console.
    Forward(Forward),
    /// Shadow mode would deny: write `row` (`access_denied_shadow`), then forward.
    ShadowDeny {
        forward: Forward,
        row: Arc<AuditEvent>,
    },
    /// 302 to the login page; the `Location` value ready to write ([`login_location`]); the
    /// rule that matched (label), which asks for a session.
    Redirect {
        location: http::HeaderValue,
        rule: Arc<str>,
    },
    /// 403, after `row` is durable.
    Deny { row: Arc<AuditEvent> },
    /// 404: the route was removed.
    Gone,
    /// 503: fail closed.
    Unavailable(Unavailable),
}

impl Outcome {
    /// The label of `rbac_gateway_requests_total{decision}`.
    pub fn label(&self) -> &'static str {
        self.decision().as_str()
    }

    /// The decision label this outcome is counted under when every write succeeds.
    pub fn decision(&self) -> crate::policy::verdict::Decision {
        use crate::policy::verdict::Decision;
        match self {
            Outcome::Refuse(_) => Decision::Refused,
            Outcome::Forward(f) => match f.via {
                Via::Open(k) => k.decision(),
                Via::Allowed(_) => Decision::Allowed,
                Via::ShadowDenied => Decision::ShadowDenied,
            },
            Outcome::ShadowDeny { .. } => Decision::ShadowDenied,
            Outcome::Redirect { .. } => Decision::Redirected,
            Outcome::Deny { .. } => Decision::Denied,
            Outcome::Gone => Decision::Gone,
            Outcome::Unavailable(_) => Decision::Unavailable,
        }
    }

    /// One line saying what the gateway answers, in the words the proxy's metrics use
    /// (`explain`'s `decision:` line, a `matrix` cell).
    pub fn describe(&self) -> String {
        match self {
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
            Outcome::Redirect { location, .. } => format!(
                "302 redirect to {}",
                String::from_utf8_lossy(location.as_bytes())
            ),
            Outcome::Deny { row } => format!("403 denied ({})", row.reason),
            Outcome::Gone => "404 gone".to_string(),
            Outcome::Unavailable(u) => format!("503 unavailable ({})", u.as_str()),
        }
    }
}

/// `next=` keeps only unreserved characters unescaped.
const NEXT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The login redirect for a target, as the `Location` header value both doors write.
pub fn login_location(t: &Target) -> http::HeaderValue {
    location_for(t.original())
}

/// `/auth/login?next=` and `original` percent-encoded: nothing but `A-Z a-z 0-9 - . _ ~ %`
/// follows the prefix, so the value is a header value for any `original` (property-tested).
fn location_for(original: &str) -> http::HeaderValue {
    let text = format!("/auth/login?next={}", utf8_percent_encode(original, NEXT));
    http::HeaderValue::try_from(text).expect("percent-encoded: visible ASCII only")
}

/// 16 bytes no other call in this process returns: a random per-process half (the same for
/// every call: `RequestId::next` writes its hex once) and a counter, so
/// request ids and audit row ids cost no getrandom syscall (another process repeating them is as
/// unlikely as two random 64-bit halves being equal).
pub fn unique_id() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&prefix.to_be_bytes());
    bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    bytes
}

/// A unique row id: [`unique_id`] as a version-4 UUID.
pub fn row_id() -> String {
    uuid::Builder::from_random_bytes(unique_id())
        .into_uuid()
        .to_string()
}

/// An audit row for this request.
pub fn audit_row(
    f: &Facts<'_>,
    mapping_version: &str,
    event_type: &str,
    admin: Option<&str>,
    route: Option<&Route>,
    reason: &str,
) -> AuditEvent {
    let path = f.target.raw_path();
    AuditEvent {
        id: row_id(),
        event_type: event_type.to_string(),
        admin_id: admin.map(str::to_string),
        method: f.method.to_string(),
        path: path.to_string(),
        route: route.map(|r| r.label().to_string()),
        required: route.map(Route::required),
        reason: reason.to_string(),
        request_id: f.request_id.to_string(),
        client_ip: f.client_ip.map(str::to_string),
        user_agent: f.user_agent.map(latin1),
        created_at_utc: crate::policy::audit_event::now(),
        mapping_version: Some(mapping_version.to_string()),
        occurrences: 1,
    }
}

/// A header value as Console reads it: gunicorn decodes each header as latin-1 (one character
/// per byte) and Werkzeug hands that string on. So a user agent beyond ASCII is kept in the row
/// as Console's own code would see it, and on a UTF-8 server its bytes are had back with
/// `convert_to(user_agent, 'LATIN1')`; before, such a row's user agent was empty.
pub fn latin1(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        bytes.iter().map(|&b| char::from(b)).collect()
    }
}

/// The decision for one request.
pub async fn decide<A: Authority>(
    authority: &A,
    mapping: &Mapping,
    switches: Switches,
    f: &Facts<'_>,
) -> Outcome {
    let found = mapping.find(f.method, f.target.path());
    let route = found.as_ref().map(|(r, _)| *r);
    let route = match route_step(route, switches.kill_switch) {
        Step::NoRoute => return no_route(authority, mapping, f).await,
        Step::Gone => return Outcome::Gone,
        Step::Forward(kind) => {
            return Outcome::Forward(Forward {
                via: Via::Open(kind),
                principal: None,
                rule: route.map(Route::shared_label),
                drift: None,
            })
        }
        Step::NeedPrincipal => route.expect("NeedPrincipal implies a rule"),
    };

    let resolved = match f.token {
        Some(token) => authority.principal_for_token(token, f.at).await,
        None => Ok(None),
    };
    let mut principal = match resolved {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Outcome::Redirect {
                location: login_location(f.target),
                rule: route.shared_label(),
            }
        }
        Err(u) => return Outcome::Unavailable(u),
    };
    let mut verdict = authorize(route, &principal);
    if verdict == Verdict::Deny && switches.ticket_grants {
        let customer = route.customer_param.as_ref().and_then(|param| {
            let m = &found.as_ref()?.1;
            mapping
                .value(m, f.target.path(), param)?
                .parse::<i32>()
                .ok()
        });
        if let Some(customer) = customer {
            match authority
                .with_ticket_grants(&principal, customer, f.request_id)
                .await
            {
                Ok(Some(p)) => {
                    verdict = authorize(route, &p);
                    principal = Arc::new(p);
                }
                Ok(None) => {}
                Err(u) => return Outcome::Unavailable(u),
            }
        }
    }
    let shadow = effective_mode(route, switches.kill_switch) == Mode::Shadow;
    of_verdict(verdict, shadow, principal, route, mapping, f)
}

/// A request no rule matches: denied, with the admin when the session names one. The admin
/// comes from the cache or else the session's lookup: a denial of a request with a live session
/// always gets its own row (gateway/anonymous.rs counts only those without one); an unknown or
/// expired cookie, or a database that cannot answer, leaves it without an admin.
async fn no_route<A: Authority>(authority: &A, mapping: &Mapping, f: &Facts<'_>) -> Outcome {
    let admin = match f.token {
        Some(t) => match authority.known_admin(t).await {
            Some(admin) => Some(admin),
            None => match authority.principal_for_token(t, f.at).await {
                Ok(Some(p)) => Some(p.admin_id.clone()),
                Ok(None) | Err(_) => None,
            },
        },
        None => None,
    };
    let row = audit_row(
        f,
        &mapping.version,
        EVENT_DENIED,
        admin.as_deref(),
        None,
        REASON_NO_ROUTE,
    );
    Outcome::Deny { row: Arc::new(row) }
}

/// The outcome of a rule's verdict for `principal`: forwarded (with a drift row in shadow mode),
/// shadow-denied (forwarded, with its rows) or denied (with its row).
#[inline(always)]
fn of_verdict(
    verdict: Verdict,
    shadow: bool,
    principal: Arc<Principal>,
    route: &Route,
    mapping: &Mapping,
    f: &Facts<'_>,
) -> Outcome {
    match verdict {
        Verdict::Allow { by } => {
            let drift = shadow.then(|| {
                Box::new(audit_row(
                    f,
                    &mapping.version,
                    EVENT_DRIFT,
                    Some(&principal.admin_id),
                    Some(route),
                    DriftKind::ConsoleDenied.as_str(),
                ))
            });
            Outcome::Forward(Forward {
                via: Via::Allowed(by),
                principal: Some(principal),
                rule: Some(route.shared_label()),
                drift,
            })
        }
        Verdict::Deny if shadow => {
            let row = audit_row(
                f,
                &mapping.version,
                EVENT_SHADOW_DENIED,
                Some(&principal.admin_id),
                Some(route),
                REASON_MISSING_ROLE,
            );
            let mut drift = row.clone();
            drift.id = row_id();
            drift.event_type = EVENT_DRIFT.to_string();
            drift.reason = DriftKind::ConsoleAllowed.as_str().to_string();
            Outcome::ShadowDeny {
                forward: Forward {
                    via: Via::ShadowDenied,
                    principal: Some(principal),
                    rule: Some(route.shared_label()),
                    drift: Some(Box::new(drift)),
                },
                row: Arc::new(row),
            }
        }
        Verdict::Deny => Outcome::Deny {
            row: Arc::new(audit_row(
                f,
                &mapping.version,
                EVENT_DENIED,
                Some(&principal.admin_id),
                Some(route),
                REASON_MISSING_ROLE,
            )),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::mapping::fixture::rules;
    use crate::policy::target::parse_target;
    use std::collections::HashMap;

    proptest::proptest! {
        /// Whatever the target's bytes, the login location is a header value and carries them
        /// back exactly once percent-decoded.
        #[test]
        fn the_login_location_is_a_header_value_for_any_target(original in ".*") {
            let v = super::location_for(&original);
            let text = v.to_str().expect("visible ASCII");
            let next = text.strip_prefix("/auth/login?next=").expect("the prefix");
            proptest::prop_assert!(next.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~%".contains(&c)));
            proptest::prop_assert_eq!(
                percent_encoding::percent_decode_str(next).decode_utf8().unwrap(),
                original.as_str()
            );
        }
    }

    /// An in-memory authority: tokens -> principals, ticket grants per (admin, customer), and
    /// switches for a database or validator that does not answer.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub(crate) sessions: HashMap<String, Arc<Principal>>,
        pub(crate) tickets: HashMap<(String, i32), Vec<String>>,
        pub(crate) db_down: bool,
        pub(crate) tickets_down: bool,
    }

    impl Authority for Fake {
        async fn principal_for_token(
            &self,
            token: &str,
            _at: Instant,
        ) -> Result<Option<Arc<Principal>>, Unavailable> {
            if self.db_down {
                return Err(Unavailable::Identity);
            }
            Ok(self.sessions.get(token).cloned())
        }

        async fn known_admin(&self, token: &str) -> Option<String> {
            self.sessions.get(token).map(|p| p.admin_id.clone())
        }

        async fn with_ticket_grants(
            &self,
            principal: &Principal,
            customer: i32,
            _request_id: &str,
        ) -> Result<Option<Principal>, Unavailable> {
            if self.db_down || self.tickets_down {
                return Err(Unavailable::Tickets);
            }
            Ok(self
                .tickets
                .get(&(principal.admin_id.clone(), customer))
                .map(|roles| principal.with_extra(roles, &[])))
        }
    }

    fn mapping() -> Mapping {
        rules()
            .route("GET", "/enforced")
            .roles(&["reader"])
            .route("GET", "/shadowed")
            .roles(&["reader"])
            .mode("shadow")
            .route("GET", "/offroute")
            .roles(&["reader"])
            .mode("off")
            .route("GET", "/customers/<int:customer_id>/support")
            .roles(&["ticket-support"])
            .customer_param("customer_id")
            .route("GET", "/open")
            .access("public")
            .route("POST", "/hook")
            .access("machine")
            .route("GET", "/removed")
            .access("gone")
            .mapping()
    }

    pub(crate) fn fake() -> Fake {
        let mut f = Fake::default();
        let reader = Principal::for_tests("reader-admin", vec!["reader".into()], vec![]);
        let nobody = Principal::for_tests("nobody-admin", vec![], vec![]);
        f.sessions.insert("reader".into(), Arc::new(reader));
        f.sessions.insert("nobody".into(), Arc::new(nobody));
        f.tickets.insert(
            ("nobody-admin".into(), 7),
            vec!["ticket-support".to_string()],
        );
        f
    }

    pub(crate) async fn run(
        a: &Fake,
        switches: Switches,
        method: &str,
        path: &str,
        token: &str,
    ) -> Outcome {
        let target = parse_target(path.as_bytes()).unwrap();
        let facts = Facts {
            method,
            target: &target,
            token: (!token.is_empty()).then_some(token),
            client_ip: Some("10.0.0.1"),
            user_agent: None,
            request_id: "rid",
            at: Instant::now(),
        };
        decide(a, &mapping(), switches, &facts).await
    }

    /// (label, audit event type written before answering, drift row kind pending).
    type Summary = (&'static str, Option<String>, Option<String>);

    /// One row of the table: authority, switches, method, path, cookie, expected summary.
    type Case<'a> = (&'a Fake, Switches, &'a str, &'a str, &'a str, Summary);

    fn summary(o: &Outcome) -> Summary {
        let (row, drift) = match o {
            Outcome::Deny { row } => (Some(row.event_type.clone()), None),
            Outcome::ShadowDeny { forward, row } => (
                Some(row.event_type.clone()),
                forward.drift.as_ref().map(|d| d.reason.clone()),
            ),
            Outcome::Forward(f) => (None, f.drift.as_ref().map(|d| d.reason.clone())),
            _ => (None, None),
        };
        (o.label(), row, drift)
    }

    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn verdict_mode_kill_switch_ticket_and_database_table() {
        let on = Switches {
            kill_switch: false,
            ticket_grants: true,
        };
        let kill = Switches {
            kill_switch: true,
            ticket_grants: true,
        };
        let no_tickets = Switches {
            kill_switch: false,
            ticket_grants: false,
        };
        let up = fake();
        let down = Fake {
            db_down: true,
            ..fake()
        };
        let tickets_down = Fake {
            tickets_down: true,
            ..fake()
        };
        let denied = Some("access_denied".to_string());
        let shadow_row = Some("access_denied_shadow".to_string());
        let drift_if_denied = Some(DriftKind::ConsoleDenied.as_str().to_string());
        let drift_if_allowed = Some(DriftKind::ConsoleAllowed.as_str().to_string());
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            // enforce
            (&up, on, "GET", "/enforced", "reader", ("allowed", None, None)),
            (&up, on, "GET", "/enforced", "nobody", ("denied", denied.clone(), None)),
            (&up, on, "GET", "/enforced", "", ("redirected", None, None)),
            (&up, on, "GET", "/enforced", "unknown", ("redirected", None, None)),
            (&down, on, "GET", "/enforced", "reader", ("unavailable", None, None)),
            (&up, kill, "GET", "/enforced", "nobody", ("off", None, None)),
            (&down, kill, "GET", "/enforced", "", ("off", None, None)),
            // shadow
            (&up, on, "GET", "/shadowed", "reader", ("allowed", None, drift_if_denied.clone())),
            (&up, on, "GET", "/shadowed", "nobody", ("shadow_denied", shadow_row.clone(), drift_if_allowed.clone())),
            (&up, on, "GET", "/shadowed", "", ("redirected", None, None)),
            (&down, on, "GET", "/shadowed", "nobody", ("unavailable", None, None)),
            (&up, kill, "GET", "/shadowed", "nobody", ("off", None, None)),
            // off
            (&up, on, "GET", "/offroute", "", ("off", None, None)),
            (&down, on, "GET", "/offroute", "nobody", ("off", None, None)),
            // ticket-scoped grants
            (&up, on, "GET", "/customers/7/support", "nobody", ("allowed", None, None)),
            (&up, on, "GET", "/customers/8/support", "nobody", ("denied", denied.clone(), None)),
            (&up, no_tickets, "GET", "/customers/7/support", "nobody", ("denied", denied.clone(), None)),
            (&tickets_down, on, "GET", "/customers/7/support", "nobody", ("unavailable", None, None)),
            (&down, on, "GET", "/customers/7/support", "nobody", ("unavailable", None, None)),
            (&up, kill, "GET", "/customers/7/support", "", ("off", None, None)),
            // public, machine, gone, no route
            (&down, on, "GET", "/open", "", ("public", None, None)),
            (&down, on, "POST", "/hook", "", ("machine", None, None)),
            (&up, on, "GET", "/removed", "reader", ("gone", None, None)),
            (&up, kill, "GET", "/removed", "reader", ("off", None, None)),
            (&up, on, "GET", "/nowhere", "reader", ("denied", denied.clone(), None)),
            (&down, on, "GET", "/nowhere", "", ("denied", denied.clone(), None)),
            (&up, kill, "GET", "/nowhere", "", ("off", None, None)),
            (&up, on, "POST", "/enforced", "reader", ("denied", denied.clone(), None)),
        ];
        for (authority, switches, method, path, token, want) in table {
            let got = block_on(run(authority, switches, method, path, token));
            let want = (want.0, want.1.clone(), want.2.clone());
            assert_eq!(
                summary(&got),
                want,
                "{method} {path} token={token:?} {switches:?} db_down={} tickets_down={}",
                authority.db_down,
                authority.tickets_down
            );
        }
    }

    #[test]
    fn rows_and_forwards_carry_the_facts() {
        let on = Switches {
            kill_switch: false,
            ticket_grants: true,
        };
        let a = fake();
        match block_on(run(&a, on, "GET", "/enforced?x=1", "nobody")) {
            Outcome::Deny { row } => {
                assert_eq!(row.admin_id.as_deref(), Some("nobody-admin"));
                assert_eq!(row.path, "/enforced");
                assert_eq!(row.reason, REASON_MISSING_ROLE);
                assert_eq!(row.route.as_deref(), Some("GET /enforced"));
                assert_eq!(row.client_ip.as_deref(), Some("10.0.0.1"));
                assert_eq!(row.request_id, "rid");
                assert_eq!(row.mapping_version, Some(mapping().version));
            }
            other => panic!("{other:?}"),
        }
        match block_on(run(&a, on, "GET", "/nowhere", "reader")) {
            Outcome::Deny { row } => {
                assert_eq!(row.reason, REASON_NO_ROUTE);
                assert_eq!(row.admin_id.as_deref(), Some("reader-admin"));
            }
            other => panic!("{other:?}"),
        }
        match block_on(run(&a, on, "GET", "/enforced?a=b/c", "")) {
            Outcome::Redirect { location, rule } => {
                assert_eq!(location, "/auth/login?next=%2Fenforced%3Fa%3Db%2Fc");
                assert_eq!(&*rule, "GET /enforced");
            }
            other => panic!("{other:?}"),
        }
        match block_on(run(&a, on, "GET", "/customers/7/support", "nobody")) {
            Outcome::Forward(f) => {
                let p = f.principal.unwrap();
                assert_eq!(p.admin_id, "nobody-admin");
                assert!(p.has_role("ticket-support"));
                assert_eq!(f.via, Via::Allowed(Grant::Role("ticket-support".into())));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn row_ids_are_distinct_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| row_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let u = uuid::Uuid::parse_str(ids.iter().next().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn drift_compares_consoles_status() {
        let on = Switches {
            kill_switch: false,
            ticket_grants: true,
        };
        let a = fake();
        let Outcome::Forward(allowed) = block_on(run(&a, on, "GET", "/shadowed", "reader")) else {
            panic!()
        };
        assert!(allowed.drifts(403) && !allowed.drifts(200) && !allowed.drifts(500));
        let Outcome::ShadowDeny { forward, .. } =
            block_on(run(&a, on, "GET", "/shadowed", "nobody"))
        else {
            panic!()
        };
        assert!(forward.drifts(200) && forward.drifts(302) && !forward.drifts(403));
        let Outcome::Forward(plain) = block_on(run(&a, on, "GET", "/enforced", "reader")) else {
            panic!()
        };
        assert!(!plain.drifts(403));
    }
}
