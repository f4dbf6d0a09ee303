//! `rbac-gateway cockpit`: the cutover on one read-only site, for the people who steer it.
//!
//! Every page is made by the function that makes the command's report, never by code of its
//! own: the board is [`super::rollout::report`] (`rollout --json`), the timeline
//! [`super::mapping::history_report`] (`mapping history --json`) with [`super::diff::report`]
//! for one activation (`diff --json`) and the stored text (`mapping show`), the matrix
//! [`super::matrix::report`] (`matrix --format json`), its changed cells the shifts of
//! [`super::diff::report`], and each denial's why [`super::explain::why`] (`explain
//! --request-id`). A page is that report rendered as HTML ([`pages`]), or the report itself as
//! JSON at the same path with `.json` (or `Accept: application/json`).
//!
//! What it must not do: change the database. It connects with
//! [`crate::stores::db::Db::connect_read_only`] (every transaction read-only, whatever code
//! asks), answers only `GET` and `HEAD`, and issues no SQL of its own (the stores do).
//! Who may ask: [`auth`].
//!
//! The server is hyper's HTTP/1 on one current-thread runtime: a page is a few database reads
//! and `decide` calls, a few milliseconds for Console's mapping (docs/performance-log.md). A
//! request head must arrive within [`HEADER_READ_TIMEOUT`] (else the connection is closed), and
//! a query parameter a page cannot read (`?limit=abc`) is answered 400, naming it.

mod auth;
mod pages;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use super::toolbox::{
    failure, init_logging, reachable, resolve, runtime, say, usage, NoSuchVersion,
};
use super::Exit;
use crate::cli::args::{CockpitArgs, ExplainArgs};
use crate::stores::db::Db;

/// The newest denials a page lists by default, and at most.
const DENIALS: i64 = 20;
const DENIALS_MAX: i64 = 200;
/// Denials explained at once (the pool's connections, [`POOL`]).
const EXPLAINED_AT_ONCE: usize = 4;
/// The cockpit's connections.
const POOL: u32 = 4;
/// A client must send a whole request head within this time, and a keep-alive connection may
/// idle this long (exceeded: the connection is closed), as on the gateway's side listeners
/// (`crate::dataplane::listen::serve_side`): a partial head does not hold a connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that ended with an error: the client's doing (it left mid-answer, sent a
/// malformed or partial head, or was silent past [`HEADER_READ_TIMEOUT`]) at debug, the site's
/// own at warn.
fn connection_ended(e: &hyper::Error, peer: SocketAddr) {
    if e.is_user() {
        tracing::warn!(error = %e, peer = %peer, "cockpit: connection ended with an error");
    } else {
        tracing::debug!(error = %e, peer = %peer, "cockpit: connection ended with an error");
    }
}

pub fn cockpit(args: CockpitArgs) -> Result<(), Exit> {
    // Warnings, and with RUST_LOG=debug each connection that ended with an error, on stderr.
    init_logging("text");
    let addr = resolve(&args.listen, "--listen")?;
    let token = match &args.auth_token_file {
        Some(p) => Some(auth::Token::read(p).map_err(usage)?),
        None => None,
    };
    auth::check_listen(addr, token.as_ref()).map_err(usage)?;
    let window_seconds = i64::try_from(args.since.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| usage(anyhow!("--since must be a positive duration")))?;
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let db = Db::connect_read_only(&args.database_url, POOL, Duration::from_secs(10))
            .map_err(usage)?;
        let db = reachable(db, Duration::from_secs(10)).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| usage(anyhow!("--listen {addr}: cannot listen: {e}")))?;
        let bound = listener.local_addr().map_err(failure)?;
        say!(
            "cockpit: http://{bound}/ (read-only; {})",
            if token.is_some() {
                "callers present the token of --auth-token-file"
            } else {
                "loopback only"
            }
        );
        let site = Rc::new(Site {
            db,
            args,
            token,
            bound,
            window_seconds,
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(failure)?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        // Out of descriptors, or the peer left before accept: the next one.
                        Err(e) => {
                            tracing::warn!(error = %e, "cockpit: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let site = site.clone();
                    tokio::task::spawn_local(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let site = site.clone();
                            async move { Ok::<_, Infallible>(site.answer(req).await) }
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Some(HEADER_READ_TIMEOUT))
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            connection_ended(&e, peer);
                        }
                    });
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        Ok(())
    })
}

/// What every page reads from.
struct Site {
    db: Db,
    args: CockpitArgs,
    token: Option<auth::Token>,
    bound: SocketAddr,
    window_seconds: i64,
}

/// Why a page is not shown.
enum Problem {
    NotFound(String),
    /// A query parameter the page cannot take (400).
    BadRequest(String),
    /// The report's own error, as the command would print it.
    Failed(Exit),
}

impl From<Exit> for Problem {
    /// A version named that is not stored is not found, as `/version/V` says (the command
    /// exits 64 for it); any other error of a report is the site's own.
    fn from(e: Exit) -> Problem {
        match e.error.downcast_ref::<NoSuchVersion>() {
            Some(missing) => Problem::NotFound(missing.to_string()),
            None => Problem::Failed(e),
        }
    }
}

/// A page's two forms.
struct Page {
    html: maud::Markup,
    json: String,
}

impl Page {
    fn of<T: Serialize>(data: &T, html: maud::Markup) -> Result<Page, Problem> {
        let json = serde_json::to_string_pretty(data).map_err(|e| Problem::Failed(failure(e)))?;
        Ok(Page {
            html,
            json: json + "\n",
        })
    }
}

/// The query string's parameters (the last of a name wins).
fn query(q: Option<&str>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A version named in a query: 12 hex digits, `active` or `previous`.
fn version_param(v: &str) -> Result<String, Problem> {
    let ok = v == "active"
        || v == "previous"
        || (!v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(v.to_string())
    } else {
        Err(Problem::NotFound(format!(
            "{v:?}: a version is 12 hex digits, active or previous"
        )))
    }
}

fn db_ref(version: &str) -> PathBuf {
    PathBuf::from(format!("db:{version}"))
}

impl Site {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let headers = req.headers();
        match &self.token {
            Some(t) => {
                if !t.admits(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
                    let mut r = plain(StatusCode::UNAUTHORIZED, "a token is needed\n");
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Basic realm=\"rbac-gateway cockpit\", charset=\"UTF-8\"",
                        ),
                    );
                    return r;
                }
            }
            None => {
                if !auth::names_us(headers.get(header::HOST).map(|v| v.as_bytes()), self.bound) {
                    return plain(
                        StatusCode::MISDIRECTED_REQUEST,
                        "the cockpit answers only requests for its own address\n",
                    );
                }
            }
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "the cockpit is read-only\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path();
        let accept_json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
        let (page, json) = match path.strip_suffix(".json") {
            Some(p) => (p, true),
            None => (path, accept_json),
        };
        let q = query(req.uri().query());
        let started = std::time::Instant::now();
        let made = match page {
            "/" | "/board" => self.board().await,
            "/timeline" => self.timeline().await,
            "/diff" => self.diff(&q).await,
            "/matrix" => self.matrix(&q).await,
            "/denials" => self.denials(&q).await,
            p => match p.strip_prefix("/version/") {
                Some(v) => self.version(v).await,
                None => Err(Problem::NotFound(format!("{p}: no such page"))),
            },
        };
        let took = started.elapsed();
        let mut r = match (made, json) {
            (Ok(p), true) => body(StatusCode::OK, "application/json", p.json),
            (Ok(p), false) => body(
                StatusCode::OK,
                "text/html; charset=utf-8",
                pages::layout(page, &p.html, took).into_string(),
            ),
            (Err(e), json) => {
                let (status, message) = match e {
                    Problem::NotFound(m) => (StatusCode::NOT_FOUND, m),
                    Problem::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
                    Problem::Failed(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.text()),
                };
                if json {
                    let text = serde_json::json!({ "error": message }).to_string() + "\n";
                    body(status, "application/json", text)
                } else {
                    body(
                        status,
                        "text/html; charset=utf-8",
                        pages::layout(page, &pages::problem(&message), took).into_string(),
                    )
                }
            }
        };
        if let Ok(v) = HeaderValue::from_str(&format!("app;dur={:.1}", took.as_secs_f64() * 1e3)) {
            r.headers_mut().insert("server-timing", v);
        }
        r
    }

    async fn board(&self) -> Result<Page, Problem> {
        let report = super::rollout::report(
            &self.db,
            &db_ref("active"),
            None,
            self.window_seconds,
            None,
            (
                &self.args.decision.settings(),
                &self.args.posture.settings(),
            ),
        )
        .await
        // No version activated yet: the board's own failure, not a page not found.
        .map_err(Problem::Failed)?;
        Page::of(&report, pages::board(&report))
    }

    async fn timeline(&self) -> Result<Page, Problem> {
        let history = super::mapping::history_report(&self.db).await?;
        Page::of(&history, pages::timeline(&history))
    }

    async fn diff(&self, q: &BTreeMap<String, String>) -> Result<Page, Problem> {
        let old = version_param(q.get("old").map_or("previous", String::as_str))?;
        let new = version_param(q.get("new").map_or("active", String::as_str))?;
        let (old, new) = (db_ref(&old), db_ref(&new));
        let report = super::diff::report(
            Some(&self.db),
            [old.as_path(), new.as_path()],
            vec![None, None],
        )
        .await?;
        Page::of(&report, pages::diff(&report))
    }

    async fn version(&self, version: &str) -> Result<Page, Problem> {
        use super::mapping::{shown_version, NotShown};
        let shown = shown_version(&self.db, &version_param(version)?)
            .await
            .map_err(|e| match e {
                NotShown::Missing(why) => Problem::NotFound(why),
                NotShown::Failed(e) => Problem::Failed(e),
            })?;
        Page::of(&shown, pages::version(&shown.version, &shown.text))
    }

    async fn matrix(&self, q: &BTreeMap<String, String>) -> Result<Page, Problem> {
        let version = version_param(q.get("version").map_or("active", String::as_str))?;
        let settings = super::matrix::Settings {
            switches: self.args.decision.switches(),
            rbac_api: self.args.reader.rbac_api,
            break_glass_requires_alert: self.args.decision.break_glass_requires_alert,
        };
        // Changed cells: the shifts `diff` finds between the compared version and this one
        // (by default the version the active one replaced).
        let compare = match q.get("compare").map(String::as_str) {
            Some("") | Some("none") => None,
            Some(v) => Some(version_param(v)?),
            None if version == "active" => Some("previous".to_string()),
            None => None,
        };
        let this = db_ref(&version);
        let that = compare.as_deref().map(db_ref);
        let (m, shifts) = tokio::join!(
            super::matrix::report(Some(&self.db), &this, None, settings),
            async {
                match &that {
                    Some(old) => Some(
                        super::diff::report(
                            Some(&self.db),
                            [old.as_path(), this.as_path()],
                            vec![None, None],
                        )
                        .await,
                    ),
                    None => None,
                }
            }
        );
        let mut m = m?;
        let shifts = match shifts {
            None => None,
            Some(Ok(r)) => Some(r),
            // No previous version yet: nothing to compare with, said on the page.
            Some(Err(_)) if q.get("compare").is_none() => None,
            Some(Err(e)) => return Err(e.into()),
        };
        let filter = pages::MatrixFilter::of(q);
        filter.apply(&mut m);
        let html = pages::matrix(&m, &filter, &version, shifts.as_ref());
        Page::of(&m, html)
    }

    fn explain_args(&self, request_id: &str) -> ExplainArgs {
        ExplainArgs {
            routes: self.args.routes.clone(),
            database_url: Some(self.args.database_url.clone()),
            admin: None,
            method: None,
            path: None,
            request_id: Some(request_id.to_string()),
            mapping_history: self.args.mapping_history.clone(),
            reader: self.args.reader.clone(),
            decision: self.args.decision.clone(),
        }
    }

    async fn denials(&self, q: &BTreeMap<String, String>) -> Result<Page, Problem> {
        use crate::policy::audit_event::EVENT_DENIED;
        use crate::stores::audit;
        let limit = match q.get("limit").filter(|l| !l.is_empty()) {
            None => DENIALS,
            Some(l) => l.parse::<i64>().map_err(|_| {
                Problem::BadRequest(format!(
                    "limit={l:?}: a whole number of denials (at most {DENIALS_MAX})"
                ))
            })?,
        }
        .clamp(1, DENIALS_MAX);
        let read = |e: sqlx::Error| {
            Problem::Failed(failure(anyhow!("cannot read access_audit_events: {e}")))
        };
        let counts = audit::counts(&self.db, EVENT_DENIED, self.window_seconds)
            .await
            .map_err(read)?;
        // `?route=-`: the rows without a rule (`no_route`), as the counts' links name them.
        let filter = audit::RowFilter {
            route: q
                .get("route")
                .filter(|r| !r.is_empty())
                .map(|r| Some(r.as_str()).filter(|r| *r != "-")),
            reason: q
                .get("reason")
                .map(String::as_str)
                .filter(|r| !r.is_empty()),
        };
        let rows = audit::recent(&self.db, EVENT_DENIED, filter, limit)
            .await
            .map_err(read)?;
        // Each explained as `explain --request-id` explains it, a few side by side.
        use futures_util::StreamExt;
        let denials: Vec<Denial> = futures_util::stream::iter(rows)
            .map(|row| async move {
                let args = self.explain_args(&row.request_id);
                let why = super::explain::why(&self.db, &args, &row.request_id).await;
                Denial { row, why }
            })
            .buffered(EXPLAINED_AT_ONCE)
            .collect()
            .await;
        let report = Denials {
            window_seconds: self.window_seconds,
            per_route: counts
                .into_iter()
                .map(|(route, reason, count, last)| PerRoute {
                    route,
                    reason,
                    count,
                    last_at_utc: last,
                })
                .collect(),
            denials,
        };
        let html = pages::denials(&report, limit);
        Page::of(&report, html)
    }
}

/// The denials page: per route and reason in the window, then the newest rows with `explain
/// --request-id`'s lines.
#[derive(Debug, Serialize)]
pub struct Denials {
    pub window_seconds: i64,
    pub per_route: Vec<PerRoute>,
    pub denials: Vec<Denial>,
}

#[derive(Debug, Serialize)]
pub struct PerRoute {
    pub route: Option<String>,
    pub reason: String,
    pub count: i64,
    pub last_at_utc: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize)]
pub struct Denial {
    #[serde(flatten)]
    pub row: crate::stores::audit::StoredRow,
    /// What `explain --request-id` prints for it, line by line.
    pub why: Vec<String>,
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // No script at all: the pages are plain HTML with one inline style sheet.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", text.to_string())
}
