//! OpenTelemetry (issue 53), tested against the protocol: a collector stand-in receives the
//! gateway's OTLP/HTTP export and decodes it with OpenTelemetry's published protobuf definitions
//! (`opentelemetry-proto`'s generated types). Per door: the span tree, its attributes, the trace
//! continued from an incoming `traceparent` and passed on to Console; nothing secret in any
//! attribute; every metric family `/metrics` serves; a collector that hangs or answers 503
//! changes no answer; spans flushed on SIGTERM; nothing set, nothing exported.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::helpers::*;

/// How the stand-in collector answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Unavailable,
    /// Reads the request, never answers.
    Hang,
}

/// One export request: its path and headers.
type Post = (String, Vec<(String, String)>);

/// A collector stand-in: OTLP/HTTP on port 0, every export decoded and kept.
struct Collector {
    addr: SocketAddr,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    /// Export requests received (answered or not), with their headers.
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Collector {
    async fn start(mode: Mode) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Collector {
            addr,
            traces: Default::default(),
            metrics: Default::default(),
            posts: Default::default(),
        };
        let (traces, metrics, posts) = (c.traces.clone(), c.metrics.clone(), c.posts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (traces, metrics, posts) = (traces.clone(), metrics.clone(), posts.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (traces, metrics, posts) =
                            (traces.clone(), metrics.clone(), posts.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_str().unwrap_or_default().to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            posts.lock().unwrap().push((path.clone(), headers));
                            match mode {
                                Mode::Hang => std::future::pending::<()>().await,
                                Mode::Unavailable => {
                                    let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                    return Ok::<_, Infallible>(r);
                                }
                                Mode::Ok => {}
                            }
                            match path.as_str() {
                                "/v1/traces" => traces.lock().unwrap().push(
                                    ExportTraceServiceRequest::decode(body)
                                        .expect("an OTLP trace export"),
                                ),
                                "/v1/metrics" => metrics.lock().unwrap().push(
                                    ExportMetricsServiceRequest::decode(body)
                                        .expect("an OTLP metrics export"),
                                ),
                                other => panic!("export to an unknown path {other}"),
                            }
                            Ok(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        c
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        self.traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    /// The spans of one trace.
    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    }

    /// Every attribute value received (spans and resources), as text.
    fn every_value(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.traces.lock().unwrap().iter() {
            for rs in &r.resource_spans {
                if let Some(res) = &rs.resource {
                    out.extend(res.attributes.iter().map(text));
                }
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(s.name.clone());
                        out.extend(s.attributes.iter().map(text));
                        for e in &s.events {
                            out.extend(e.attributes.iter().map(text));
                        }
                    }
                }
            }
        }
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => format!("{}={s}", kv.key),
        Some(any_value::Value::IntValue(i)) => format!("{}={i}", kv.key),
        Some(any_value::Value::BoolValue(b)) => format!("{}={b}", kv.key),
        Some(any_value::Value::DoubleValue(d)) => format!("{}={d}", kv.key),
        other => format!("{}={other:?}", kv.key),
    }
}

/// The value of attribute `key` on `span`, as text.
fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(|kv| {
        let t = text(kv);
        t[key.len() + 1..].to_string()
    })
}

/// The opts every traced gateway gets: export to `c` fast.
fn traced(o: GatewayOpts, c: &Collector) -> GatewayOpts {
    o.env("OTEL_EXPORTER_OTLP_ENDPOINT", &c.endpoint())
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k%3Dv")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Waits for the server span of `trace` (and its children) to be exported.
async fn server_span_of(c: &Collector, trace: &str, children: usize) -> (Span, Vec<Span>) {
    eventually(
        Duration::from_secs(10),
        "the request's spans exported",
        || {
            let n = c.trace(trace).len();
            async move { n > children }
        },
    )
    .await;
    let spans = c.trace(trace);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no SERVER span in {spans:#?}"))
        .clone();
    let children = spans
        .into_iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    (server, children)
}

/// Nothing secret in any attribute: not the session token, not the other cookie, not a
/// query-string value.
fn assert_nothing_secret(c: &Collector, secrets: &[&str]) {
    for v in c.every_value() {
        for s in secrets {
            assert!(!v.contains(s), "{s:?} found in an exported attribute: {v}");
        }
    }
}

#[tokio::test]
async fn the_proxy_continues_the_incoming_trace_and_console_receives_its_exchange_span() {
    let c = Collector::start(Mode::Ok).await;
    let env = Env::with(core_routes(), |o| traced(o, &c)).await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let (_, denied) = env.db.admin_with_roles(&[]).await;
    // The feed has applied the setup's rows: no eviction lands between the two requests.
    settle(&[&env.gw]).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = env
        .gw
        .request(
            "GET",
            "/console/customers/42?secret=qvalue-123",
            Some(&token),
            &[("traceparent", &traceparent)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    // Server span, the database lookup (session and principal, one round trip), Console's
    // exchange.
    let (server, children) = server_span_of(&c, TRACE, 2).await;
    assert_eq!(
        hex(&server.parent_span_id),
        PARENT,
        "the edge's span is the parent"
    );
    assert_eq!(server.name, "GET /console/customers/<id>");
    assert_eq!(
        r.request_id(),
        format!("{TRACE}-{}", hex(&server.span_id)),
        "the request id is <trace id>-<span id>"
    );
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/console/customers/42"),
        ("http.route", "/console/customers/<id>"),
        ("rbac.rule", "GET,POST /console/customers/<id>"),
        ("http.response.status_code", "200"),
        ("rbac.decision", "allowed"),
        ("rbac.cache", "miss"),
        ("rbac.cache_hit", "false"),
        ("enduser.id", admin.as_str()),
        ("rbac.admin_id", admin.as_str()),
        ("rbac.granted_by", "console-audit-user"),
    ] {
        assert_eq!(attr(&server, k).as_deref(), Some(v), "{k} on {server:#?}");
    }
    assert!(attr(&server, "rbac.mapping_version").is_some());
    assert!(attr(&server, "url.query").is_none());
    let names: BTreeSet<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["GET", "SELECT session principal"]),
        "{children:#?}"
    );
    for db in children.iter().filter(|s| s.name.starts_with("SELECT")) {
        assert_eq!(db.kind, SpanKind::Client as i32);
        assert_eq!(attr(db, "db.system.name").as_deref(), Some("postgresql"));
    }
    let exchange = children.iter().find(|s| s.name == "GET").unwrap();
    assert_eq!(exchange.kind, SpanKind::Client as i32);
    assert_eq!(
        attr(exchange, "http.response.status_code").as_deref(),
        Some("200")
    );
    // Console continues the trace from the exchange's span, and only from it.
    let seen = env.up.requests();
    let sent = seen.last().unwrap();
    assert_eq!(
        sent.headers_named("traceparent"),
        vec![format!("00-{TRACE}-{}-01", hex(&exchange.span_id))],
        "Console's traceparent names the exchange span"
    );

    // Again: the worker remembers the answer, no database child.
    let again = "0af7651916cd43dd8448eb211c80319c";
    let r = env
        .gw
        .request(
            "GET",
            "/console/customers/43",
            Some(&token),
            &[("traceparent", &format!("00-{again}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let (server, children) = server_span_of(&c, again, 1).await;
    assert_eq!(attr(&server, "rbac.cache").as_deref(), Some("worker"));
    assert_eq!(attr(&server, "rbac.cache_hit").as_deref(), Some("true"));
    assert_eq!(children.len(), 1, "only Console's exchange: {children:#?}");

    // A rule with customer_param: the live ticket grants, read on every request, are a child
    // too, even for a cached principal.
    let (granted, granted_token) = env.db.admin_with_roles(&["console-user"]).await;
    crate::tickets::grant(&env.db, &granted, "raptor-audit-admin", 7, "T-1").await;
    settle(&[&env.gw]).await;
    let ticketed = "22222222222222222222222222222222";
    let r = env
        .gw
        .request(
            "GET",
            "/console/customers/7/audit",
            Some(&granted_token),
            &[("traceparent", &format!("00-{ticketed}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "the ticket grant allows it");
    let (_, children) = server_span_of(&c, ticketed, 3).await;
    let names: BTreeSet<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "GET",
            "SELECT session principal",
            "SELECT live ticket grants"
        ]),
        "{children:#?}"
    );

    // A denial: its audit row's request id and its log line carry the trace id.
    let third = "11111111111111111111111111111111";
    let r = env
        .gw
        .request(
            "GET",
            "/ops?token=qvalue-456",
            Some(&denied),
            &[("traceparent", &format!("00-{third}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 403);
    let (server, _) = server_span_of(&c, third, 0).await;
    assert_eq!(attr(&server, "rbac.decision").as_deref(), Some("denied"));
    assert_eq!(
        attr(&server, "rbac.reason").as_deref(),
        Some("missing_role")
    );
    assert_eq!(
        attr(&server, "http.response.status_code").as_deref(),
        Some("403")
    );
    let rows = env.db.audit_rows(&r.request_id()).await;
    assert_eq!(rows.len(), 1);
    assert!(r.request_id().starts_with(third), "{}", r.request_id());
    let log = env.gw.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "denied")
        .unwrap_or_else(|| panic!("no denied line:\n{log}"));
    assert_eq!(line["trace_id"], third, "{line}");

    // The resource: the default service name, the operator's attributes; the collector got
    // the configured header, percent-decoded.
    let res = c.traces.lock().unwrap()[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    let res: Vec<String> = res.attributes.iter().map(text).collect();
    assert!(
        res.contains(&"service.name=rbac-gateway".to_string()),
        "{res:?}"
    );
    assert!(res.contains(&"deployment.environment.name=test".to_string()));
    let posts = c.posts.lock().unwrap().clone();
    assert!(posts
        .iter()
        .all(|(_, h)| h.iter().any(|(k, v)| k == "x-collector-key" && v == "k=v")));
    assert_nothing_secret(&c, &[&token, &denied, "theme=dark", "qvalue"]);
}

#[tokio::test]
async fn forward_auth_traces_each_question_on_its_own_span() {
    let c = Collector::start(Mode::Ok).await;
    let env = Env::with(core_routes(), |o| {
        traced(o, &c).arg("--authz-listen").arg("127.0.0.1:0")
    })
    .await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let trace = "22222222222222222222222222222222";
    let req = format!(
        "GET /authz HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Original-Method: GET\r\n\
         X-Original-URI: /console/customers/7?q=qvalue-789\r\nCookie: theme=dark; console_session={token}\r\n\
         traceparent: 00-{trace}-{PARENT}-01\r\n\r\n"
    );
    let r = send(env.gw.authz_addr(), req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    let (server, children) = server_span_of(&c, trace, 1).await;
    assert_eq!(hex(&server.parent_span_id), PARENT);
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/authz"),
        ("http.route", "/console/customers/<id>"),
        ("rbac.target.path", "/console/customers/7"),
        ("rbac.decision", "allowed"),
        ("enduser.id", admin.as_str()),
        ("http.response.status_code", "200"),
        ("rbac.cache", "miss"),
    ] {
        assert_eq!(attr(&server, k).as_deref(), Some(v), "{k} on {server:#?}");
    }
    assert_eq!(r.request_id(), format!("{trace}-{}", hex(&server.span_id)));
    let names: BTreeSet<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["SELECT session principal"]));
    assert_nothing_secret(&c, &[&token, "theme=dark", "qvalue"]);
}

#[tokio::test]
async fn the_reader_api_is_traced_on_the_proxys_span() {
    let c = Collector::start(Mode::Ok).await;
    let env = Env::with(core_routes(), |o| traced(o, &c).arg("--rbac-api")).await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let trace = "33333333333333333333333333333333";
    let r = env
        .gw
        .request(
            "GET",
            "/api/rbac/me?x=qvalue-1",
            Some(&token),
            &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let (server, children) = server_span_of(&c, trace, 1).await;
    // Who asked and the mapping live then, as on a decided request's span (issue 66: neither
    // was there).
    let version = rbac_gateway::policy::mapping::version_of(&std::fs::read(core_routes()).unwrap());
    for (k, v) in [
        ("http.route", "/api/rbac/me"),
        ("url.path", "/api/rbac/me"),
        ("rbac.decision", "api"),
        ("http.response.status_code", "200"),
        ("enduser.id", admin.as_str()),
        ("rbac.admin_id", admin.as_str()),
        ("rbac.mapping_version", version.as_str()),
    ] {
        assert_eq!(attr(&server, k).as_deref(), Some(v), "{k} on {server:#?}");
    }
    assert_eq!(
        attr(&server, "rbac.reason"),
        None,
        "an answer, not a refusal"
    );
    assert!(
        children.iter().any(|s| s.name.starts_with("SELECT")),
        "the lookups are children: {children:#?}"
    );
    // Why, when the answer is not a grant: a permission not held, no session, a bad call.
    for (n, path, token, status, reason) in [
        (
            1,
            "/api/rbac/permissions/check?permission=console:flags:write",
            Some(token.as_str()),
            200,
            "missing_role",
        ),
        (2, "/api/rbac/me", None, 401, "no_session"),
        (
            3,
            "/api/rbac/permissions/check?permission=",
            Some(token.as_str()),
            400,
            "bad_parameter",
        ),
    ] {
        let trace = format!("7777777777777777777777777777777{n}");
        let r = env
            .gw
            .request(
                "GET",
                path,
                token,
                &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
                b"",
            )
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.body_str());
        let (server, _) = server_span_of(&c, &trace, 0).await;
        assert_eq!(
            attr(&server, "rbac.reason").as_deref(),
            Some(reason),
            "{path}"
        );
        assert_eq!(
            attr(&server, "rbac.mapping_version").as_deref(),
            Some(version.as_str()),
            "{path}"
        );
        let asked_by = token.map(|_| admin.as_str()).filter(|_| status != 400);
        assert_eq!(
            attr(&server, "rbac.admin_id").as_deref(),
            asked_by,
            "{path}"
        );
    }
    assert!(env.up.requests().is_empty(), "never forwarded");
    assert_nothing_secret(&c, &[&token, "theme=dark", "qvalue"]);
}

/// A request without a session to a rule that needs one (302 to the login page): the rule
/// matched, so its span says which (issue 66: no `http.route` nor `rbac.rule`), named after it
/// as any decided request's span is.
#[tokio::test]
async fn a_redirect_to_the_login_page_names_the_rule_on_its_span() {
    let c = Collector::start(Mode::Ok).await;
    let env = Env::with(core_routes(), |o| traced(o, &c)).await;
    let trace = "66666666666666666666666666666666";
    let r = env
        .gw
        .request(
            "GET",
            "/console/customers/42",
            None,
            &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.body_str());
    let (server, _) = server_span_of(&c, trace, 0).await;
    assert_eq!(server.name, "GET /console/customers/<id>");
    for (k, v) in [
        ("http.route", "/console/customers/<id>"),
        ("rbac.rule", "GET,POST /console/customers/<id>"),
        ("rbac.decision", "redirected"),
        ("rbac.reason", "no_session"),
        ("http.response.status_code", "302"),
    ] {
        assert_eq!(attr(&server, k).as_deref(), Some(v), "{k} on {server:#?}");
    }
    assert_eq!(attr(&server, "rbac.admin_id"), None);
}

#[tokio::test]
async fn every_metric_family_is_exported_with_its_name_and_labels() {
    let c = Collector::start(Mode::Ok).await;
    let env = Env::with(core_routes(), |o| traced(o, &c)).await;
    assert_eq!(env.gw.status("/auth/login", None).await, 200);
    let served = env.gw.admin_get("/metrics").await.body_str();
    let families: BTreeSet<String> = served
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert!(families.len() > 30, "{families:?}");
    let public = || {
        let m = c.metrics.lock().unwrap();
        m.last().and_then(|r| {
            r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == "rbac_gateway_requests_total")
                .and_then(|m| match &m.data {
                    Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
                        assert!(s.is_monotonic);
                        s.data_points
                            .iter()
                            .find(|p| {
                                p.attributes
                                    .iter()
                                    .map(text)
                                    .any(|a| a == "decision=public")
                            })
                            .map(|p| p.value)
                    }
                    other => panic!("requests_total is a sum: {other:?}"),
                })
        })
    };
    eventually(
        Duration::from_secs(10),
        "an export counting the public request",
        || {
            let v = public();
            async move {
                v == Some(Some(
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                        1.0,
                    ),
                ))
            }
        },
    )
    .await;
    let m = c.metrics.lock().unwrap();
    let exported: BTreeSet<String> = m.last().unwrap().resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let missing: Vec<_> = families.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    let hist = m.last().unwrap().resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "rbac_gateway_decision_duration_seconds")
        .unwrap();
    assert!(
        matches!(
            hist.data,
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(_))
        ),
        "{hist:?}"
    );
}

/// A collector that hangs, or answers 503: every answer is the same and none waits on it
/// (the export's timeout is 10 s: a request held by it would take that long); what is lost is
/// counted and told once per interval, not per request.
#[tokio::test]
async fn a_collector_that_hangs_or_refuses_changes_no_answer() {
    let _alone = timed_alone().await;
    for mode in [Mode::Hang, Mode::Unavailable] {
        let c = Collector::start(mode).await;
        let env = Env::with(core_routes(), |o| {
            traced(o, &c)
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
                .env("OTEL_BSP_MAX_QUEUE_SIZE", "8")
                .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
        })
        .await;
        let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
        let (_, denied) = env.db.admin_with_roles(&[]).await;
        let started = Instant::now();
        for i in 0..60 {
            let t = Instant::now();
            let (path, tok, want) = match i % 3 {
                0 => ("/console/customers/1", &token, 200),
                1 => ("/ops", &denied, 403),
                _ => ("/auth/login", &token, 200),
            };
            let r = env.gw.get(path, Some(tok)).await;
            assert_eq!(r.status, want, "request {i}");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "request {i} took {:?} with the collector {}",
                t.elapsed(),
                if mode == Mode::Hang {
                    "hanging"
                } else {
                    "answering 503"
                }
            );
        }
        eventually(Duration::from_secs(15), "lost spans counted", || {
            let gw = &env.gw;
            async move {
                gw.metric("rbac_gateway_telemetry_dropped_total{signal=\"spans\"}")
                    .await
                    > 0.0
            }
        })
        .await;
        eventually(Duration::from_secs(15), "the losses told", || {
            let log = env.gw.log();
            async move { log.contains("telemetry: the collector did not take everything") }
        })
        .await;
        // Once per interval (200 ms): never once per request.
        let told = env
            .gw
            .log()
            .matches("telemetry: the collector did not take everything")
            .count();
        let intervals = started.elapsed().as_millis() / 200 + 2;
        assert!(
            (told as u128) <= intervals,
            "{told} reports in {intervals} intervals"
        );
        assert!(
            !c.posts.lock().unwrap().is_empty(),
            "the collector was asked"
        );
    }
}

#[tokio::test]
async fn sigterm_flushes_what_is_queued() {
    let c = Collector::start(Mode::Ok).await;
    let mut env = Env::with(core_routes(), |o| {
        o.env("OTEL_EXPORTER_OTLP_ENDPOINT", &c.endpoint())
            // Nothing goes out on a timer within the test: only the shutdown's flush.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    })
    .await;
    let trace = "44444444444444444444444444444444";
    let r = env
        .gw
        .request(
            "GET",
            "/auth/login",
            None,
            &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(c.trace(trace).is_empty(), "not exported before the stop");
    env.gw.signal("TERM");
    let status = env.gw.exited(Duration::from_secs(20), "no exit").await;
    assert!(status.success(), "{status}; log:\n{}", env.gw.log());
    // Nothing was left running: the runtime's shutdown did not wait out the grace.
    assert!(!env.gw.log().contains("left behind"), "{}", env.gw.log());
    let (server, _) = server_span_of(&c, trace, 0).await;
    assert_eq!(attr(&server, "rbac.decision").as_deref(), Some("public"));
    assert!(
        !c.metrics.lock().unwrap().is_empty(),
        "the last metrics export went out at the stop"
    );
}

#[tokio::test]
async fn nothing_set_nothing_exported_and_the_request_id_is_the_gateways_own() {
    let env = Env::core().await;
    let r = env
        .gw
        .request(
            "GET",
            "/auth/login",
            None,
            &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.request_id();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // The client's traceparent goes to Console untouched: the gateway is not in the trace.
    let seen = env.up.requests();
    assert_eq!(
        seen.last().unwrap().headers_named("traceparent"),
        vec![format!("00-{TRACE}-{PARENT}-01")]
    );
    assert!(!env.gw.log().contains("telemetry"));
}

#[tokio::test]
async fn what_cannot_be_honoured_is_refused_at_start() {
    let db = TestDb::new().await;
    for (k, v, says) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        (
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "4k",
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        ),
        (
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "-1",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        ),
    ] {
        let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--routes")
            .arg(core_routes())
            .args(["--upstream", "127.0.0.1:9", "--database-url", &db.url])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(k, v)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A value not read would let it start and serve: waited for with a deadline.
        let status = poll_until(Duration::from_secs(20), || {
            let status = out.try_wait().unwrap();
            async move { status }
        })
        .await;
        if status.is_none() {
            // Reason: it may have exited in between; the test fails below either way.
            let _ = out.kill();
            let _ = out.wait();
        }
        let mut err = String::new();
        std::io::Read::read_to_string(&mut out.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(64),
            "{k}={v}: still serving after 20 s, or another status; stderr: {err}"
        );
        assert!(err.contains(says), "{k}={v}: {err}");
    }
}

/// A client's long path is cut to the attribute value limit in the span the collector receives
/// (issue 66: `url.path` was never cut, and a collector that hung let 2,400 spans of 30,000
/// characters take 145 MiB): 4096 characters when no limit is set; the span's own
/// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` over the general `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`.
#[tokio::test]
async fn a_long_path_is_cut_to_the_attribute_value_limit() {
    let path = format!("/{}", "a".repeat(29_999));
    for (limits, kept) in [
        (vec![], 4096),
        (
            vec![
                ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50"),
                ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100"),
            ],
            100,
        ),
        (vec![("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50")], 50),
    ] {
        let c = Collector::start(Mode::Ok).await;
        let env = Env::with(core_routes(), |o| {
            limits.iter().fold(traced(o, &c), |o, (k, v)| o.env(k, v))
        })
        .await;
        let trace = "55555555555555555555555555555555";
        let r = env
            .gw
            .request(
                "GET",
                &path,
                None,
                &[("traceparent", &format!("00-{trace}-{PARENT}-01"))],
                b"",
            )
            .await;
        assert_eq!(r.status, 403, "{limits:?}");
        let (server, _) = server_span_of(&c, trace, 0).await;
        let got = attr(&server, "url.path").unwrap();
        assert_eq!(got.len(), kept, "{limits:?}");
        assert!(path.starts_with(&got), "{limits:?}");
        assert_eq!(attr(&server, "rbac.reason").as_deref(), Some("no_route"));
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib / 1024
}

/// The memory a collector that hangs costs does not grow with the client's paths (issue 66:
/// 2,400 unauthenticated `POST /_alerts/dismiss/<30,000 x 'a'>` took the gateway's RSS from 12
/// to 157 MiB): each path is cut to the attribute value limit, and the queue holds at most its
/// bytes; what does not fit is dropped and counted.
#[tokio::test]
async fn a_hanging_collector_costs_bounded_memory_whatever_the_paths_length() {
    let _alone = timed_alone().await;
    let c = Collector::start(Mode::Hang).await;
    let env = Env::with(root().join("routes.toml"), |o| traced(o, &c)).await;
    let path = format!("/_alerts/dismiss/{}", "a".repeat(30_000));
    let before = rss_mib(env.gw.pid());
    const REQUESTS: usize = 2400;
    const AT_ONCE: usize = 8;
    for _ in 0..REQUESTS / AT_ONCE {
        let answers = futures_util::future::join_all(
            (0..AT_ONCE).map(|_| env.gw.request("POST", &path, None, &[], b"")),
        )
        .await;
        for r in answers {
            assert_eq!(r.status, 302, "{}", r.body_str());
        }
    }
    let after = rss_mib(env.gw.pid());
    eprintln!("RSS with a hanging collector: {before} MiB before, {after} MiB after {REQUESTS} long paths");
    assert!(
        after < before + 40,
        "RSS grew from {before} MiB to {after} MiB"
    );
    assert!(
        env.gw
            .metric("rbac_gateway_telemetry_dropped_total{signal=\"spans\"}")
            .await
            > 0.0,
        "spans past the queue's bound are counted"
    );
}

/// At SIGTERM, a lookup of the collector's host name that never gets an answer (its DNS
/// server silent) does not hold the process past `--shutdown-grace` (issue 66): the lookup runs
/// on a blocking thread (getaddrinfo), which an export's timeout does not stop, and dropping
/// the background runtime waited for it. The gateway runs in a mount namespace of its own whose
/// `/etc/resolv.conf` names a DNS server that reads every question and answers none.
#[tokio::test]
async fn sigterm_exits_within_the_grace_while_the_collectors_name_is_being_looked_up() {
    if !running_as_root() {
        eprintln!(
            "skipped: a mount namespace and a DNS server on port 53 need root (CI runs as root)"
        );
        return;
    }
    let _alone = timed_alone().await;
    // A DNS server that never answers, on an address of its own.
    let dns = std::net::UdpSocket::bind("127.9.9.9:53").expect("bind 127.9.9.9:53");
    dns.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.9.9.9\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let mount = format!(
        "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
        resolv.display()
    );
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    const GRACE: Duration = Duration::from_secs(2);
    let mut gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .launched_by(&[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &mount,
            ])
            .arg("--shutdown-grace")
            .arg(&GRACE.as_secs().to_string())
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector.hung-dns.test:4318",
            )
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    )
    .await;
    assert_eq!(gw.status("/auth/login", None).await, 200);
    // The export asks for the collector's address, and gets no answer.
    eventually(
        Duration::from_secs(10),
        "the collector's name asked",
        || {
            let mut buf = [0u8; 512];
            let asked = dns
                .recv_from(&mut buf)
                .is_ok_and(|(n, _)| buf[..n].windows(7).any(|w| w == b"hung-dn"));
            async move { asked }
        },
    )
    .await;
    let t0 = Instant::now();
    gw.signal("TERM");
    let status = gw
        .exited(
            GRACE + Duration::from_secs(20),
            "the gateway still runs 22 s after SIGTERM",
        )
        .await;
    let took = t0.elapsed();
    eprintln!("exited {took:?} after SIGTERM with a lookup of the collector hung");
    assert!(status.success(), "{status}; log:\n{}", gw.log());
    assert!(
        took < GRACE + Duration::from_secs(1),
        "exited {took:?} after SIGTERM, past the {GRACE:?} grace"
    );
    assert!(
        gw.log()
            .contains("was still running at the end of the grace and is left behind"),
        "said in the log:\n{}",
        gw.log()
    );
}
