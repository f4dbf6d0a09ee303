//! Test harness: a fresh database per test, a recording upstream, the real gateway binary, and
//! a raw HTTP client that sends exactly the bytes a test gives it.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port that refuses connections for as long as the returned socket lives: bound
/// (so it is not handed to another test, as a port from [`free_port`] can be once closed) but
/// not listening.
pub fn closed_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    (sock, port)
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Database

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A new, migrated database on the server of DATABASE_URL.
    pub async fn new() -> TestDb {
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must be set (scripts/test.sh sets it)");
        let name = format!("rbacgw_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&base)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let url = format!("{prefix}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        rbac_gateway::stores::db::migrate(&pool).await.unwrap();
        TestDb { url, pool }
    }

    pub async fn admin(&self, email: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query("INSERT INTO admins (id, email) VALUES ($1, $2)")
            .bind(&id)
            .bind(email)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    /// A session expiring in `secs` seconds; returns the cookie value.
    pub async fn session_for(&self, admin: &str, secs: i64) -> String {
        let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(admin)
        .bind(rbac_gateway::stores::identity::token_hash(&token))
        .bind(secs as f64)
        .execute(&self.pool)
        .await
        .unwrap();
        token
    }

    pub async fn session(&self, admin: &str) -> String {
        self.session_for(admin, 3600).await
    }

    pub async fn revoke_session(&self, token: &str) {
        sqlx::query("UPDATE admin_sessions SET revoked_at_utc = now() WHERE token_sha256 = $1")
            .bind(rbac_gateway::stores::identity::token_hash(token))
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn join_group(&self, admin: &str, group: &str) {
        let n = sqlx::query(
            "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) SELECT $1, id, 'test' FROM rbac_groups WHERE name = $2",
        )
        .bind(admin)
        .bind(group)
        .execute(&self.pool)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(n, 1, "group {group} exists");
    }

    pub async fn leave_group(&self, admin: &str, group: &str) {
        sqlx::query("DELETE FROM rbac_user_groups WHERE user_id = $1 AND group_id = (SELECT id FROM rbac_groups WHERE name = $2)")
            .bind(admin)
            .bind(group)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// A new group holding exactly these roles (never the legacy table).
    pub async fn group_with_roles(&self, roles: &[&str]) -> String {
        let name = format!("test-group-{}", uuid::Uuid::new_v4().simple());
        sqlx::query("INSERT INTO rbac_groups (id, name) VALUES (gen_random_uuid()::text, $1)")
            .bind(&name)
            .execute(&self.pool)
            .await
            .unwrap();
        for role in roles {
            let n = sqlx::query(
                "INSERT INTO rbac_group_roles (group_id, role_id) SELECT g.id, r.id FROM rbac_groups g, rbac_roles r WHERE g.name = $1 AND r.name = $2",
            )
            .bind(&name)
            .bind(role)
            .execute(&self.pool)
            .await
            .unwrap()
            .rows_affected();
            assert_eq!(n, 1, "role {role} exists in the catalogue");
        }
        name
    }

    /// An admin with a live session, member of a new group holding exactly `roles`.
    pub async fn admin_with_roles(&self, roles: &[&str]) -> (String, String) {
        let admin = self
            .admin(&format!("{}@example.test", uuid::Uuid::new_v4().simple()))
            .await;
        if !roles.is_empty() {
            let group = self.group_with_roles(roles).await;
            self.join_group(&admin, &group).await;
        }
        let token = self.session(&admin).await;
        (admin, token)
    }

    pub async fn break_glass(&self, admin: &str, secs: f64) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO rbac_break_glass_sessions (id, user_id, justification, granted_by, expires_at_utc) VALUES ($1, $2, 'incident 42: database failover', 'test', now() + make_interval(secs => $3))",
        )
        .bind(&id)
        .bind(admin)
        .bind(secs)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    pub async fn audit_rows(&self, request_id: &str) -> Vec<AuditRow> {
        sqlx::query_as(
            "SELECT event_type, admin_id, method, path, route, required, reason, request_id, client_ip, user_agent FROM access_audit_events WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn audit_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM access_audit_events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub event_type: String,
    pub admin_id: Option<String>,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub required: Option<String>,
    pub reason: String,
    pub request_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Upstream

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 server that records every request and answers 200 (or `status`), after
/// `delay` for paths starting with /slow (5 s), or the milliseconds an `X-Test-Delay-Ms`
/// request header asks for.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub status: Arc<Mutex<u16>>,
    /// TCP connections accepted (keep-alive pooling keeps this low).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, st2, c2) = (seen.clone(), status.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (seen, status) = (s2.clone(), st2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, status) = (seen.clone(), status.clone());
                        async move {
                            let method = req.method().to_string();
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            if target.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            // A test can ask for a shorter delay of its own.
                            let delay_ms = headers
                                .iter()
                                .find(|(k, _)| k == "x-test-delay-ms")
                                .and_then(|(_, v)| v.parse::<u64>().ok());
                            if let Some(ms) = delay_ms {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let n = body.len();
                            seen.lock().unwrap().push(Seen {
                                method,
                                target,
                                headers,
                                body,
                            });
                            let code = *status.lock().unwrap();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from(format!(
                                        "upstream ok, body {n} bytes\n"
                                    ))))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            status,
            connections,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// The addresses a gateway reports in its "listening" line (port 0 resolved).
pub struct Bound {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub authz: Option<SocketAddr>,
}

/// Waits (20 s at most) for the gateway's JSON "listening" line in `log` and reads the
/// addresses from it; a gateway that exits first fails the test with its log.
pub async fn listening(child: &mut Child, log: &Path) -> Bound {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] != "listening" {
                continue;
            }
            let addr = |k: &str| {
                v[k].as_str().map(|a| {
                    a.parse::<SocketAddr>()
                        .unwrap_or_else(|e| panic!("{k}: {a}: {e}"))
                })
            };
            return Bound {
                listen: addr("listen").expect("listen in the listening line"),
                admin: addr("admin_listen").expect("admin_listen in the listening line"),
                authz: addr("authz_listen"),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited ({status}) before listening; log:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never said it was listening; log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The forward-auth listener, when started with `--authz-listen`.
    pub authz: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub routes: PathBuf,
}

pub struct GatewayOpts {
    pub routes: PathBuf,
    pub database_url: String,
    pub upstream: SocketAddr,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Wait for /readyz (true) or only /healthz (database deliberately unreachable).
    pub wait_ready: bool,
    /// The admin port (default: 0, the one bound is read from the gateway's "listening" line).
    pub admin_port: Option<u16>,
    /// The audit spool (default: `audit.spool` in the gateway's directory).
    pub spool: Option<PathBuf>,
}

impl GatewayOpts {
    pub fn new(routes: impl AsRef<Path>, db: &TestDb, upstream: SocketAddr) -> GatewayOpts {
        GatewayOpts {
            routes: routes.as_ref().to_path_buf(),
            database_url: db.url.clone(),
            upstream,
            env: vec![],
            args: vec![],
            wait_ready: true,
            admin_port: None,
            spool: None,
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Reach the database through a cuttable link.
    pub fn via(mut self, link: &PgLink) -> Self {
        self.database_url = link.url.clone();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

pub fn core_routes() -> PathBuf {
    root().join("tests/fixtures/core.toml")
}

impl Gateway {
    pub async fn start(opts: GatewayOpts) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        // A private copy, so tests may rewrite it.
        let routes = dir.path().join("routes.toml");
        std::fs::copy(&opts.routes, &routes).unwrap();
        Self::start_in(opts, dir, routes).await
    }

    pub async fn start_in(opts: GatewayOpts, dir: tempfile::TempDir, routes: PathBuf) -> Gateway {
        let admin_port = opts.admin_port.unwrap_or(0);
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--upstream")
            .arg(opts.upstream.to_string())
            .arg("--routes")
            .arg(&routes)
            .arg("--database-url")
            .arg(&opts.database_url)
            .arg("--audit-spool")
            .arg(
                opts.spool
                    .clone()
                    .unwrap_or_else(|| dir.path().join("audit.spool")),
            )
            .arg("--threads")
            .arg("1")
            .arg("--upstream-read-timeout-ms")
            .arg("1500")
            .args(&opts.args)
            .env_remove("FLAG_RBAC_V2")
            .env("RUST_LOG", "info")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway");
        let bound = listening(&mut child, &log_path).await;
        let gw = Gateway {
            child,
            addr: bound.listen,
            admin: bound.admin,
            authz: bound.authz,
            dir,
            routes,
        };
        gw.wait(if opts.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        })
        .await;
        gw
    }

    /// The forward-auth listener's address (the gateway must have been started with
    /// `--authz-listen`).
    pub fn authz_addr(&self) -> SocketAddr {
        self.authz
            .expect("the gateway was started without --authz-listen")
    }

    async fn wait(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = send(
                self.admin,
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready at {path}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        send(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap()
    }

    /// The value of one metric line, e.g. `rbac_gateway_db_queries_total`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(self.admin, series).await
    }

    /// The status of a GET.
    pub async fn status(&self, path: &str, token: Option<&str>) -> u16 {
        self.get(path, token).await.status
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request("GET", path, token, &[], b"").await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: console.test\r\nConnection: close\r\nUser-Agent: rbac-gateway-tests\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Cookie: theme=dark; console_session={t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        send(self.addr, &bytes)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", self.log()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw client

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("x-request-id on every gateway answer")
            .to_string()
    }
}

/// Sends raw bytes and reads one response (until the server closes or the body is complete).
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    read_response(&mut s).await
}

pub async fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Duration::from_secs(15);
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(deadline, s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    loop {
        if let Some(len) = len {
            if body.len() >= len {
                body.truncate(len);
                break;
            }
        }
        if chunked && body.windows(5).any(|w| w == b"0\r\n\r\n") {
            body = dechunk(&body);
            break;
        }
        let n = match tokio::time::timeout(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..p]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + size]);
        b = &b[p + 2 + size + 2..];
    }
    out
}

/// Everything a test needs for the core mapping: database, upstream, gateway.
pub struct Env {
    pub db: TestDb,
    pub up: Upstream,
    pub gw: Gateway,
}

impl Env {
    pub async fn core() -> Env {
        Self::with(core_routes(), |o| o).await
    }

    pub async fn with(routes: PathBuf, f: impl FnOnce(GatewayOpts) -> GatewayOpts) -> Env {
        let db = TestDb::new().await;
        let up = Upstream::start().await;
        let gw = Gateway::start(f(GatewayOpts::new(routes, &db, up.addr))).await;
        Env { db, up, gw }
    }
}

// ---------------------------------------------------------------------------------------------
// A cuttable TCP path to PostgreSQL (a real network fault: connections reset, new ones refused).

pub struct PgLink {
    pub url: String,
    down: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// True: connections stay open and carry nothing (a partition, a hung PgBouncer).
    stalled: tokio::sync::watch::Sender<bool>,
    /// One answer from the server held back on its way to the gateway (a slow query).
    hold: tokio::sync::watch::Sender<Hold>,
    /// Connections accepted so far (each is numbered in order).
    opened: Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered below this carry nothing from now on; newer ones work.
    silenced: tokio::sync::watch::Sender<u64>,
}

/// [`PgLink::hold_next`]'s state.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    Off,
    /// The next bytes from the server containing these are held.
    Armed(Vec<u8>),
    /// They are being held, until [`PgLink::release`].
    Holding,
}

/// Copies the server's bytes to the gateway, holding the ones [`PgLink::hold_next`] armed for.
async fn copy_answers(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    hold: tokio::sync::watch::Sender<Hold>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let caught = hold.send_if_modified(|h| match h {
            Hold::Armed(m) if chunk.windows(m.len()).any(|w| w == m.as_slice()) => {
                *h = Hold::Holding;
                true
            }
            _ => false,
        });
        if caught {
            let mut seen = hold.subscribe();
            if seen.wait_for(|h| *h != Hold::Holding).await.is_err() {
                return;
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

impl PgLink {
    pub async fn new(db_url: &str) -> PgLink {
        let target: String = {
            let rest = db_url.split("@").nth(1).unwrap();
            rest.split('/').next().unwrap().to_string()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = db_url.replacen(&target, &format!("127.0.0.1:{port}"), 1);
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (d2, c2) = (down.clone(), conns.clone());
        let stalled = tokio::sync::watch::Sender::new(false);
        let s2 = stalled.clone();
        let hold = tokio::sync::watch::Sender::new(Hold::Off);
        let h2 = hold.clone();
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let silenced = tokio::sync::watch::Sender::new(0u64);
        let (o2, si2) = (opened.clone(), silenced.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut stall = s2.subscribe();
                let hold = h2.clone();
                let number = o2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut silence = si2.subscribe();
                let h = tokio::spawn(async move {
                    let stalled_now = *stall.borrow();
                    if stalled_now {
                        // Accepted, never answered; closed when the stall ends.
                        let _held = inbound;
                        let _ended = stall.wait_for(|s| !*s).await.is_ok();
                        return;
                    }
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let (mut asked, mut answered) = inbound.into_split();
                        let (answers, mut to_server) = outbound.into_split();
                        // Either side closing ends both (PostgreSQL's peers never half-close).
                        let carry = async {
                            tokio::select! {
                                _ = tokio::io::copy(&mut asked, &mut to_server) => {}
                                _ = copy_answers(answers, &mut answered, hold) => {}
                            }
                        };
                        tokio::select! {
                            _ = carry => {}
                            // The copy stops (its future is dropped before this runs); both
                            // ends stay open, carrying nothing, until the stall ends (then they
                            // close, as peers reset after a partition).
                            _ = async { stall.wait_for(|s| *s).await.is_ok() } => {
                                let _ended = stall.wait_for(|s| !*s).await.is_ok();
                            }
                            // Silenced for good: open and carrying nothing until the link is
                            // cut or the test ends (the kernel would give up after minutes).
                            _ = async { silence.wait_for(|below| number < *below).await.is_ok() } => {
                                std::future::pending::<()>().await;
                            }
                        }
                        // Closed here, after the copies stopped, not while they are stopped.
                        drop((asked, answered, to_server));
                    }
                });
                c2.lock().unwrap().push(h.abort_handle());
            }
        });
        PgLink {
            url,
            down,
            conns,
            stalled,
            hold,
            opened,
            silenced,
        }
    }

    /// Every connection open now stays open and carries nothing from here on, as after a NAT or
    /// firewall dropped its state without telling either peer; connections made after this
    /// work.
    pub fn silence_open(&self) {
        let next = self.opened.load(std::sync::atomic::Ordering::SeqCst);
        self.silenced.send_replace(next);
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
        self.stalled.send_replace(false);
        self.release();
    }

    /// Holds back the next bytes from the server that contain `marker` (an answer to one
    /// query, as if it ran long) until [`PgLink::release`]; everything else still flows.
    pub fn hold_next(&self, marker: &[u8]) {
        self.hold.send_replace(Hold::Armed(marker.to_vec()));
    }

    /// Waits until the answer [`PgLink::hold_next`] armed for is being held.
    pub async fn held(&self) {
        let mut seen = self.hold.subscribe();
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            seen.wait_for(|h| *h == Hold::Holding),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "no answer with the marker was held"
        );
    }

    /// Lets a held answer through.
    pub fn release(&self) {
        self.hold.send_replace(Hold::Off);
    }

    /// Every connection, open or new, stays open and carries nothing until [`PgLink::restore`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

/// A gateway that reaches its database through a cuttable link, caching for 60 s, with
/// `extra` flags (e.g. a database timeout).
pub struct LinkedEnv {
    pub db: TestDb,
    pub up: Upstream,
    pub link: PgLink,
    pub gw: Gateway,
}

impl LinkedEnv {
    pub async fn start(extra: &[&str]) -> LinkedEnv {
        let db = TestDb::new().await;
        let up = Upstream::start().await;
        let link = PgLink::new(&db.url).await;
        let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--cache-ttl")
            .arg("60")
            .via(&link);
        for a in extra {
            opts = opts.arg(a);
        }
        let gw = Gateway::start(opts).await;
        LinkedEnv { db, up, link, gw }
    }
}

/// Waits until each gateway's change feed has applied the rows the test just wrote: two more
/// completed reads of the log (the second started after the write). A feed eviction that lands
/// after the test primed a cache would otherwise turn "cached" into "uncached".
pub async fn settle(gws: &[&Gateway]) {
    let admins: Vec<SocketAddr> = gws.iter().map(|g| g.admin).collect();
    settle_at(&admins).await;
}

/// [`settle`] for gateways known by their admin addresses.
pub async fn settle_at(admins: &[SocketAddr]) {
    let reads = "rbac_gateway_feed_reads_total";
    for admin in admins {
        let from = metric_at(*admin, reads).await;
        eventually(
            Duration::from_secs(10),
            "the change feed read the log twice",
            || async { metric_at(*admin, reads).await >= from + 2.0 },
        )
        .await;
    }
}

/// One metric line's value from the admin listener at `admin` (0 when absent).
pub async fn metric_at(admin: SocketAddr, series: &str) -> f64 {
    let body = send(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap()
    .body_str();
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `ready` until it holds, failing the test with `what` after `limit`: the one way tests
/// wait (on a metric, `/readyz`, a row), never a fixed sleep.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The token of a new admin holding only `console-user`, denied `/ops`, whose session and roles
/// `gw` has cached (its denials need no database read).
pub async fn cached_denied_session(db: &TestDb, gw: &Gateway) -> String {
    let (_, token) = db.admin_with_roles(&["console-user"]).await;
    settle(&[gw]).await;
    assert_eq!(
        gw.get("/ops", Some(&token)).await.status,
        403,
        "primes the cache"
    );
    token
}

// ---------------------------------------------------------------------------------------------
/// A private PostgreSQL that a test may stop and start.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    pub url: String,
}

impl PrivatePg {
    /// The server's data directory (owned by the postgres user).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("pg/data")
    }

    pub fn pg(&self, cmd: &str) {
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts/pg.sh"))
            .arg(cmd)
            .arg(self.dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn start() -> (PrivatePg, TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts/pg.sh"))
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("export DATABASE_URL="))
            .unwrap()
            .to_string();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        rbac_gateway::stores::db::migrate(&pool).await.unwrap();
        (
            PrivatePg {
                dir,
                url: url.clone(),
            },
            TestDb { url, pool },
        )
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(root().join("scripts/pg.sh"))
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}

/// splitmix64: tiny, seeded, reproducible (the differential tests' case generator).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn bytes(&mut self, xs: &[&'static [u8]]) -> &'static [u8] {
        xs[self.below(xs.len())]
    }
}
