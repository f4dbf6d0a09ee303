//! Pingora glue: for each request, run the checks of [`crate::target`], match the rule, ask
//! [`crate::identity`] and [`crate::decision`], then forward or answer. All policy lives in
//! those modules; this file only moves bytes and headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::audit::{AuditEvent, EVENT_DENIED, EVENT_DRIFT, EVENT_SHADOW_DENIED};
use crate::decision::{
    authorize, effective_mode, route_step, Step, Verdict, REASON_MISSING_ROLE, REASON_NO_ROUTE,
};
use crate::identity::Principal;
use crate::mapping::{Mapping, Mode, Route};
use crate::state::Gateway;
use crate::target::{self, Refusal, Target};

/// Per-request state.
pub struct Ctx {
    request_id: String,
    /// When the request arrived (decision latency).
    started: Instant,
    /// Set when the request is forwarded on behalf of an admin.
    principal: Option<Arc<Principal>>,
    /// Shadow-mode routes: the row to write if Console's answer disagrees with the gateway.
    drift: Option<AuditEvent>,
    /// When the request was sent upstream.
    upstream_started: Option<Instant>,
}

/// A request id: 32 hex digits, a random per-process prefix and a counter. Unique without a
/// getrandom syscall per request (measured in the load benchmark's profile).
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    format!(
        "{prefix:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drift kinds (stored as the reason of an `rbac_drift` row).
pub const DRIFT_CONSOLE_DENIED: &str = "gateway_allowed_console_denied";
pub const DRIFT_CONSOLE_ALLOWED: &str = "gateway_denied_console_allowed";

/// `next=` keeps only unreserved characters unescaped.
const NEXT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a denial (or a shadow would-be denial) records.
struct Denial<'a> {
    mapping_version: &'a str,
    admin: Option<&'a str>,
    target: &'a Target,
    route: Option<&'a Route>,
    reason: &'static str,
}

pub struct Proxy {
    pub gw: Arc<Gateway>,
}

/// The value of the session cookie, from every `Cookie` header (first occurrence wins, as in
/// Werkzeug).
fn session_cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// All checks that can refuse a request before it is matched.
fn check_request(head: &[u8], req: &RequestHeader) -> std::result::Result<Target, Refusal> {
    let (method, raw_target) = target::split_request_line(head)?;
    target::check_method(method)?;
    if method == b"CONNECT" {
        return Err(Refusal::NotOriginForm);
    }
    let t = target::parse_target(raw_target)?;
    for name in req.headers.keys() {
        target::check_header_name(name.as_str())?;
    }
    target::check_framing(&req.headers, req.version == http::Version::HTTP_11)?;
    Ok(t)
}

/// The upstream (Console) as pingora reaches it: plain HTTP, pooled connections kept 60 s idle;
/// `read_timeout` bounds each read and each write.
pub fn upstream_peer(
    addr: SocketAddr,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(connect_timeout);
    peer.options.read_timeout = Some(read_timeout);
    peer.options.write_timeout = Some(read_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

impl Proxy {
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        status: u16,
        location: Option<String>,
        body: &'static str,
        close: bool,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
        resp.insert_header("Content-Length", body.len().to_string())?;
        resp.insert_header("Cache-Control", "no-store")?;
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        if let Some(loc) = location {
            resp.insert_header("Location", loc)?;
        }
        if close || has_body(session.req_header()) {
            // An unread request body must not be taken for the next request.
            session.set_keepalive(None);
            resp.insert_header("Connection", "close")?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
                .await?;
        }
        Ok(())
    }

    fn audit_event(
        &self,
        session: &Session,
        ctx: &Ctx,
        event_type: &str,
        d: &Denial<'_>,
    ) -> AuditEvent {
        let (admin, t, route, reason) = (d.admin, d.target, d.route, d.reason);
        let req = session.req_header();
        let path = t.original.split('?').next().unwrap_or("").to_string();
        AuditEvent {
            id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type.to_string(),
            admin_id: admin.map(str::to_string),
            method: req.method.as_str().to_string(),
            path,
            route: route.map(Route::label),
            required: route.map(Route::required),
            reason: reason.to_string(),
            request_id: ctx.request_id.clone(),
            client_ip: client_ip(session),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            created_at_utc: chrono::Utc::now(),
            mapping_version: Some(d.mapping_version.to_string()),
        }
    }

    /// Writes the audit row, then the 403. If the row cannot be made durable: 503, no 403.
    async fn deny(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mapping: &Mapping,
        d: Denial<'_>,
    ) -> Result<bool> {
        let event = self.audit_event(session, ctx, EVENT_DENIED, &d);
        let (admin, route, reason) = (d.admin, d.route, d.reason);
        let label = route.map(Route::label).unwrap_or_else(|| "-".into());
        if let Err(e) = self.gw.audit.record(&event).await {
            tracing::error!(request_id = %ctx.request_id, error = %e, "cannot record the denial: answering 503");
            self.outcome(ctx, "unavailable");
            self.respond(session, ctx, 503, None, "Service Unavailable\n", false)
                .await?;
            return Ok(true);
        }
        self.gw
            .metrics
            .denials_by_route
            .with_label_values(&[label.as_str(), reason])
            .inc();
        tracing::info!(
            request_id = %ctx.request_id, admin_id = admin.unwrap_or("-"), method = %event.method,
            path = %event.path, rule = %label, required = event.required.as_deref().unwrap_or("-"),
            reason, mapping_version = %mapping.version, "denied"
        );
        self.outcome(ctx, "denied");
        self.respond(session, ctx, 403, None, "Forbidden\n", false)
            .await?;
        Ok(true)
    }

    /// The principal with its live ticket grants for `customer` (re-validated when configured),
    /// or None when there are none. Err: the database or the ticket validator did not answer.
    async fn ticket_principal(
        &self,
        principal: &Principal,
        customer: i32,
        ctx: &Ctx,
    ) -> std::result::Result<Option<Principal>, ()> {
        let pool = self.gw.identity.pool();
        self.gw.metrics.db_queries.inc();
        let all = crate::ticket::grants(pool, &principal.admin_id, customer, None).await.map_err(|e| {
            tracing::error!(request_id = %ctx.request_id, error = %e, "cannot read ticket grants: answering 503");
        })?;
        if all.tickets.is_empty() {
            return Ok(None);
        }
        let grants = match &self.gw.ticket_validation_url {
            None => all,
            Some(url) => {
                let mut open = Vec::new();
                let mut ids: Vec<&String> = all.tickets.iter().map(|(t, _)| t).collect();
                ids.dedup();
                for t in ids {
                    match crate::ticket::ticket_open(url, t, Duration::from_secs(2)).await {
                        Ok(true) => open.push(t.clone()),
                        Ok(false) => {
                            tracing::info!(request_id = %ctx.request_id, ticket = %t, "ticket closed: its grant is ignored")
                        }
                        Err(e) => {
                            tracing::error!(request_id = %ctx.request_id, ticket = %t, error = %e, "ticket re-validation failed: answering 503 (fail closed)");
                            return Err(());
                        }
                    }
                }
                if open.is_empty() {
                    return Ok(None);
                }
                self.gw.metrics.db_queries.inc();
                crate::ticket::grants(pool, &principal.admin_id, customer, Some(&open)).await.map_err(|e| {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "cannot read ticket grants: answering 503");
                })?
            }
        };
        Ok(Some(
            principal.with_extra(&grants.roles, &grants.permissions),
        ))
    }

    /// Counts the request's outcome and how long it took to reach it.
    fn outcome(&self, ctx: &Ctx, what: &str) {
        let m = &self.gw.metrics;
        m.requests.with_label_values(&[what]).inc();
        m.decision_seconds
            .with_label_values(&[what])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: next_request_id(),
            started: Instant::now(),
            principal: None,
            drift: None,
            upstream_started: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let head = match session.downstream_session.as_ref() {
            HttpSession::H1(s) => s.get_headers_raw_bytes(),
            _ => Bytes::new(),
        };
        let t = match check_request(&head, session.req_header()) {
            Ok(t) => t,
            Err(refusal) => {
                tracing::warn!(request_id = %ctx.request_id, reason = %refusal, client_ip = client_ip(session).as_deref().unwrap_or("-"), "refused");
                self.gw
                    .metrics
                    .refusals
                    .with_label_values(&[refusal.as_str()])
                    .inc();
                self.outcome(ctx, "refused");
                self.respond(session, ctx, 400, None, "Bad Request\n", true)
                    .await?;
                return Ok(true);
            }
        };
        let mapping = self.gw.mapping.load_full();
        let method = session.req_header().method.clone();
        let found = mapping.find(method.as_str(), &t.path);
        let route = found.as_ref().map(|(r, _)| *r);

        let step = route_step(route, self.gw.kill_switch);
        let route = match step {
            Step::NoRoute => {
                let admin = match session_cookie(session.req_header(), &self.gw.cookie) {
                    Some(tok) => self
                        .gw
                        .identity
                        .cached_session(tok)
                        .await
                        .map(|s| s.admin_id.clone()),
                    None => None,
                };
                let d = Denial {
                    mapping_version: &mapping.version,
                    admin: admin.as_deref(),
                    target: &t,
                    route: None,
                    reason: REASON_NO_ROUTE,
                };
                return self.deny(session, ctx, &mapping, d).await;
            }
            Step::Gone => {
                self.outcome(ctx, "gone");
                self.respond(session, ctx, 404, None, "Not Found\n", false)
                    .await?;
                return Ok(true);
            }
            Step::Forward(kind) => {
                self.outcome(ctx, kind.as_str());
                tracing::debug!(request_id = %ctx.request_id, method = %method, path = %t.path, rule = route.map(Route::label).as_deref().unwrap_or("-"), decision = kind.as_str(), mapping_version = %mapping.version, "forward");
                return Ok(false);
            }
            Step::NeedPrincipal => route.expect("NeedPrincipal implies a rule"),
        };

        let redirect = |t: &Target| {
            format!(
                "/auth/login?next={}",
                utf8_percent_encode(&t.original, NEXT)
            )
        };
        let resolved = match session_cookie(session.req_header(), &self.gw.cookie) {
            Some(token) => self.gw.identity.principal_for_token(token).await,
            None => Ok(None),
        };
        let principal = match resolved {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.outcome(ctx, "redirected");
                tracing::debug!(request_id = %ctx.request_id, method = %method, path = %t.path, rule = %route.label(), mapping_version = %mapping.version, "redirected to login: no valid session");
                self.respond(session, ctx, 302, Some(redirect(&t)), "Found\n", false)
                    .await?;
                return Ok(true);
            }
            Err(e) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "cannot resolve the session: answering 503");
                self.outcome(ctx, "unavailable");
                self.respond(session, ctx, 503, None, "Service Unavailable\n", false)
                    .await?;
                return Ok(true);
            }
        };
        let mut verdict = authorize(route, &principal);
        let mut principal = principal;
        if verdict == Verdict::Deny && self.gw.ticket_grants {
            let customer = route.customer_param.as_ref().and_then(|param| {
                let m = &found.as_ref()?.1;
                mapping.value(m, &t.path, param)?.parse::<i32>().ok()
            });
            if let Some(customer) = customer {
                match self.ticket_principal(&principal, customer, ctx).await {
                    Ok(Some(p)) => {
                        verdict = authorize(route, &p);
                        principal = Arc::new(p);
                    }
                    Ok(None) => {}
                    Err(()) => {
                        self.outcome(ctx, "unavailable");
                        self.respond(session, ctx, 503, None, "Service Unavailable\n", false)
                            .await?;
                        return Ok(true);
                    }
                }
            }
        }
        match verdict {
            Verdict::Allow { by } => {
                self.outcome(ctx, "allowed");
                tracing::debug!(request_id = %ctx.request_id, admin_id = %principal.admin_id, method = %method, path = %t.path, rule = %route.label(), granted_by = ?by, mapping_version = %mapping.version, "allowed");
                ctx.principal = Some(principal.clone());
                if effective_mode(route, self.gw.kill_switch) == Mode::Shadow {
                    let d = Denial {
                        mapping_version: &mapping.version,
                        admin: Some(&principal.admin_id),
                        target: &t,
                        route: Some(route),
                        reason: DRIFT_CONSOLE_DENIED,
                    };
                    ctx.drift = Some(self.audit_event(session, ctx, EVENT_DRIFT, &d));
                }
                Ok(false)
            }
            Verdict::Deny => match effective_mode(route, self.gw.kill_switch) {
                Mode::Shadow => {
                    let d = Denial {
                        mapping_version: &mapping.version,
                        admin: Some(&principal.admin_id),
                        target: &t,
                        route: Some(route),
                        reason: REASON_MISSING_ROLE,
                    };
                    let event = self.audit_event(session, ctx, EVENT_SHADOW_DENIED, &d);
                    if let Err(e) = self.gw.audit.record(&event).await {
                        tracing::error!(request_id = %ctx.request_id, error = %e, "cannot record a shadow denial");
                    }
                    self.outcome(ctx, "shadow_denied");
                    tracing::info!(request_id = %ctx.request_id, admin_id = %principal.admin_id, rule = %route.label(), mapping_version = %mapping.version, "shadow: would deny, forwarding");
                    ctx.principal = Some(principal.clone());
                    let mut drift = event;
                    drift.event_type = EVENT_DRIFT.to_string();
                    drift.reason = DRIFT_CONSOLE_ALLOWED.to_string();
                    ctx.drift = Some(drift);
                    Ok(false)
                }
                _ => {
                    self.deny(
                        session,
                        ctx,
                        &mapping,
                        Denial {
                            mapping_version: &mapping.version,
                            admin: Some(&principal.admin_id),
                            target: &t,
                            route: Some(route),
                            reason: REASON_MISSING_ROLE,
                        },
                    )
                    .await
                }
            },
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(upstream_peer(
            self.gw.upstream,
            self.gw.connect_timeout,
            self.gw.read_timeout,
        )))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Identity headers come from the gateway only, whatever spelling the client used.
        let spoofed: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| {
                let k = k.as_str().as_bytes();
                k.len() >= 7
                    && (k[..7].eq_ignore_ascii_case(b"x-rbac-")
                        || k[..7].eq_ignore_ascii_case(b"x_rbac_"))
            })
            .cloned()
            .collect();
        for name in spoofed {
            upstream.remove_header(&name);
        }
        if let Some(p) = &ctx.principal {
            upstream.insert_header("X-Rbac-Admin-Id", p.admin_id.as_str())?;
            upstream.insert_header("X-Rbac-Roles", p.roles_header())?;
        }
        // A would-be denial: its drift row waits for Console's answer.
        if ctx
            .drift
            .as_ref()
            .is_some_and(|d| d.reason == DRIFT_CONSOLE_ALLOWED)
        {
            upstream.insert_header("X-Rbac-Shadow-Decision", "deny")?;
        }
        upstream.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        ctx.upstream_started = Some(Instant::now());
        if let Some(ip) = client_ip(session) {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip,
            };
            upstream.insert_header("X-Forwarded-For", xff)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let Some(t) = ctx.upstream_started {
            let class =
                ["1xx", "2xx", "3xx", "4xx", "5xx"][(status / 100).clamp(1, 5) as usize - 1];
            self.gw
                .metrics
                .upstream_seconds
                .with_label_values(&[class])
                .observe(t.elapsed().as_secs_f64());
        }
        // Drift (002 Phase 4): Console's legacy gate answers 403 when it denies.
        let Some(mut drift) = ctx.drift.take() else {
            return Ok(());
        };
        let disagree = match drift.reason.as_str() {
            DRIFT_CONSOLE_DENIED => status == 403,
            _ => status < 400,
        };
        if disagree {
            let route = drift.route.clone().unwrap_or_default();
            self.gw
                .metrics
                .drift
                .with_label_values(&[route.as_str(), drift.reason.as_str()])
                .inc();
            tracing::warn!(request_id = %ctx.request_id, rule = %route, kind = %drift.reason, console_status = status, "drift: the gateway and Console disagree");
            drift.id = uuid::Uuid::new_v4().to_string();
            let audit = self.gw.audit.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.record(&drift).await {
                    tracing::error!(error = %e, "cannot record a drift event");
                }
            });
        } else if let Some(route) = &drift.route {
            self.gw
                .metrics
                .shadow_agreements
                .with_label_values(&[route.as_str()])
                .inc();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            ConnectTimedout | ReadTimedout | WriteTimedout => 504,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => 502,
                pingora::ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 502,
            },
        };
        if code > 0 {
            tracing::warn!(request_id = %ctx.request_id, status = code, error = %e, "upstream failure");
            let body = match code {
                504 => "Gateway Timeout\n",
                400 => "Bad Request\n",
                _ => "Bad Gateway\n",
            };
            let _ = self.respond(session, ctx, code, None, body, true).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
