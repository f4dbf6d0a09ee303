//! A door's request span, the one shape both deciding doors trace through ([`Trace`]): each
//! step of a request is one call, a branch not taken when the request is not traced (tracing
//! off: [`telemetry::server_span`] answers None at its first load, and nothing is built). The
//! recording itself is out of line (`#[cold]`), so the untraced handler stays small (it is
//! inlined into hyper's dispatcher; a larger one is not, and its answer is then copied out of
//! it).

use arc_swap::ArcSwap;

use crate::policy::mapping::Mapping;
use crate::policy::outcome::{Outcome, Via};
use crate::policy::reader;
use crate::policy::request_id::RequestId;
use crate::policy::verdict::Grant;
use crate::runtime::telemetry::{self, InRequest, ServerSpan};

/// The request's SERVER span, when it is traced. It covers the whole answer and ends with the
/// status sent ([`Trace::end`]); the lookups behind the decision are its children
/// ([`Trace::around`]).
pub(crate) struct Trace(Option<ServerSpan>);

impl Trace {
    /// The span of a request, continuing its `traceparent`; none when tracing is off or the
    /// request is not sampled in.
    #[inline]
    pub fn start(method: &str, path: &str, headers: &http::HeaderMap) -> Trace {
        Trace(telemetry::server_span(method, path, headers))
    }

    #[inline]
    pub fn span(&self) -> Option<&ServerSpan> {
        self.0.as_ref()
    }

    /// The trace id as hex, for the decision's log lines.
    #[inline]
    pub fn trace_id(&self) -> Option<&str> {
        self.0.as_ref().map(ServerSpan::trace_id)
    }

    /// The request's id: `trusted` (a trusted router's) if given, else `<trace id>-<span id>`
    /// when traced, else a fresh one; recorded on the span.
    #[inline]
    pub fn request_id(&self, trusted: Option<RequestId>) -> RequestId {
        match (&self.0, trusted) {
            (None, Some(id)) => id,
            (None, None) => RequestId::next(),
            (Some(s), trusted) => traced_request_id(s, trusted),
        }
    }

    /// Polls `fut` with the span as the current one, when traced (the stores' spans become its
    /// children); untraced, polls it as it is.
    #[inline]
    pub fn around<'a, F: std::future::Future>(
        &'a self,
        fut: std::pin::Pin<&'a mut F>,
    ) -> InRequest<'a, F> {
        telemetry::in_request(self.0.as_ref(), fut)
    }

    /// A call of the reader API, answered without a decision.
    #[inline]
    pub fn reader_api(&self, method: &str, path: &str) {
        if let Some(s) = &self.0 {
            reader_api(s, method, path);
        }
    }

    /// The reader API's answer: the mapping live when it was answered, the admin who asked
    /// (`enduser.id`, `rbac.admin_id`), why (`rbac.reason`), as [`Trace::outcome`] writes a
    /// decision.
    #[inline]
    pub fn reader_answer(&self, a: &reader::Answer, mapping: &ArcSwap<Mapping>) {
        if let Some(s) = &self.0 {
            reader_answer(s, a, &mapping.load().version);
        }
    }

    /// What forward-auth was asked about: the method and path only, never the query.
    #[inline]
    pub fn target(&self, method: &str, path: &str) {
        if let Some(s) = &self.0 {
            target(s, method, path);
        }
    }

    /// The decision ([`outcome`]).
    #[inline]
    pub fn outcome(&self, method: &str, decided: &Outcome, version: &str) {
        if let Some(s) = &self.0 {
            outcome(s, method, decided, version);
        }
    }

    /// Why a request was refused before it was decided.
    #[inline]
    pub fn refusal(&self, decided: &Outcome) {
        if let (Outcome::Refuse(r), Some(s)) = (decided, &self.0) {
            set(s, "rbac.reason", r.as_str());
        }
    }

    /// The decision's label as counted.
    #[inline]
    pub fn decision(&self, label: &'static str) {
        if let Some(s) = &self.0 {
            set(s, "rbac.decision", label);
        }
    }

    /// Ends the span with the status sent (once: the span is gone after it).
    #[inline]
    pub fn end(&mut self, status: u16) {
        if let Some(s) = self.0.take() {
            end(s, status);
        }
    }
}

#[cold]
#[inline(never)]
fn traced_request_id(s: &ServerSpan, trusted: Option<RequestId>) -> RequestId {
    let id = trusted.unwrap_or_else(|| {
        let (trace_id, span_id) = s.ids();
        RequestId::of_trace(trace_id, span_id)
    });
    s.set("rbac.request_id", id.as_str());
    id
}

#[cold]
#[inline(never)]
fn reader_api(s: &ServerSpan, method: &str, path: &str) {
    s.route(method, path);
    s.set("rbac.decision", reader::LABEL);
}

#[cold]
#[inline(never)]
fn reader_answer(span: &ServerSpan, a: &reader::Answer, version: &str) {
    span.record(|span| {
        span.set("rbac.mapping_version", version);
        if let Some(p) = &a.asked_by {
            span.set("enduser.id", &p.admin_id);
            span.set("rbac.admin_id", &p.admin_id);
        }
        if let Some(reason) = a.reason {
            span.set("rbac.reason", reason);
        }
    });
}

#[cold]
#[inline(never)]
fn target(s: &ServerSpan, method: &str, path: &str) {
    s.set("rbac.target.method", method);
    s.set("rbac.target.path", path);
}

#[cold]
#[inline(never)]
fn set(s: &ServerSpan, key: &'static str, value: &'static str) {
    s.set(key, value);
}

#[cold]
#[inline(never)]
fn end(s: ServerSpan, status: u16) {
    s.end(status);
}

/// The decision on the request's span: the rule that matched (its path as `http.route`, its
/// label as `rbac.rule`), the admin (`enduser.id`, `rbac.admin_id`), why (`rbac.reason`), the
/// mapping's version. What the cookie held, the query and the headers are never recorded.
#[cold]
#[inline(never)]
fn outcome(span: &ServerSpan, method: &str, outcome: &Outcome, version: &str) {
    // One lock of the span's record for them all.
    span.record(|span| {
        span.set("rbac.mapping_version", version);
        let (rule, admin, reason): (Option<&str>, Option<&str>, Option<&str>) = match outcome {
            Outcome::Forward(f) => {
                if let Via::Allowed(Grant::Role(r) | Grant::Permission(r)) = &f.via {
                    span.set("rbac.granted_by", &**r);
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
