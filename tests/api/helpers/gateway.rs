//! The gateway process: started from the real binary on port 0, its addresses read from its
//! "listening" line, and ways to talk to it and wait on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// The addresses a gateway reports in its "listening" line (port 0 resolved).
pub struct Bound {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub authz: Option<SocketAddr>,
}

/// Waits (20 s at most) for the gateway's JSON "listening" line in `log` and reads the
/// addresses from it; a gateway that exits first fails the test with its log.
pub async fn listening(child: &mut Child, log: &Path) -> Bound {
    let said = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let bound = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening")
            .map(|v| {
                let addr = |k: &str| {
                    v[k].as_str().map(|a| {
                        a.parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("{k}: {a}: {e}"))
                    })
                };
                Bound {
                    listen: addr("listen").expect("listen in the listening line"),
                    admin: addr("admin_listen").expect("admin_listen in the listening line"),
                    authz: addr("authz_listen"),
                }
            });
        (bound, text)
    };
    let what = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        format!("the gateway never said it was listening; log:\n{text}")
    };
    eventually_some(Duration::from_secs(20), what, || {
        let (bound, text) = said();
        if bound.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the gateway exited ({status}) before listening; log:\n{text}");
            }
        }
        async move { bound }
    })
    .await
}

/// Waits (20 s at most) for the first JSON line in `log` that names the admin listener
/// (`admin_listen`: the "listening" line, or the line of a gateway that waits for its mapping
/// and serves `/readyz` meanwhile) and reads its address; a gateway that exits first fails the
/// test with its log.
pub async fn admin_listening(child: &mut Child, log: &Path) -> SocketAddr {
    let what = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        format!("the gateway never said where its admin listener is; log:\n{text}")
    };
    eventually_some(Duration::from_secs(20), what, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let admin: Option<SocketAddr> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| {
                v["admin_listen"].as_str().map(|a| {
                    a.parse()
                        .unwrap_or_else(|e| panic!("admin_listen: {a}: {e}"))
                })
            });
        if admin.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the gateway exited ({status}) before its admin listener was up; log:\n{text}"
                );
            }
        }
        async move { admin }
    })
    .await
}

/// A gateway started and not waited on ([`Gateway::start_unready`]): its admin listener is up,
/// the rest may still be starting, or waiting for a mapping version.
pub struct Starting {
    child: Option<Child>,
    /// The admin listener (`/readyz` says why the gateway is not ready yet).
    pub admin: SocketAddr,
    dir: Option<tempfile::TempDir>,
    routes: PathBuf,
    wait_ready: bool,
}

impl Starting {
    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        let dir = self.dir.as_ref().expect("a started gateway");
        std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// `/readyz`'s status and body, or None when it cannot be asked.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        admin_get_at(self.admin, "/readyz")
            .await
            .ok()
            .map(|r| (r.status, r.body_str().to_string()))
    }

    /// The gateway once it says it is listening, and is ready (or only alive, as its options
    /// asked).
    pub async fn ready(mut self) -> Gateway {
        let mut child = self.child.take().expect("a started gateway");
        let dir = self.dir.take().expect("a started gateway");
        let bound = listening(&mut child, &dir.path().join("gateway.log")).await;
        let gw = Gateway {
            child,
            addr: bound.listen,
            admin: bound.admin,
            authz: bound.authz,
            dir,
            routes: std::mem::take(&mut self.routes),
        };
        gw.wait(if self.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        })
        .await;
        gw
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
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
    /// A program (and its arguments) that execs the gateway, given its path and arguments
    /// after these (e.g. `unshare` giving it a mount namespace of its own); empty: none.
    pub launcher: Vec<String>,
}

/// I-4's and T-PEN-6's defaults, opted out as the suite's gateways and commands decide (their
/// defaults are tested by tests/api/invariants.rs: [`GatewayOpts::seeds_defaults`]).
pub const SUITE_OPT_OUTS: [(&str, &str); 2] = [
    ("GATEWAY_BREAK_GLASS_REQUIRES_ALERT", "false"),
    ("GATEWAY_TICKET_REVALIDATION_WAIVED", "true"),
];

impl GatewayOpts {
    pub fn new(routes: impl AsRef<Path>, db: &TestDb, upstream: SocketAddr) -> GatewayOpts {
        GatewayOpts {
            routes: routes.as_ref().to_path_buf(),
            database_url: db.url.clone(),
            upstream,
            // A row for every denial, as the suite's tests count them: the window that coalesces
            // denials without a session (on by default) is tested by tests/api/anonymous.rs,
            // whose flag beats this variable.
            // The seeds' safe defaults (I-4: a break-glass session waits for its delivered
            // alert; T-PEN-6: no ticket grant without per-request re-validation) are tested by
            // tests/api/invariants.rs ([`GatewayOpts::seeds_defaults`]); the rest of the suite
            // tests resolution itself, with both opted out as an operator would (flags beat
            // these variables).
            env: [("GATEWAY_ANONYMOUS_DENIAL_WINDOW", "0")]
                .iter()
                .chain(&SUITE_OPT_OUTS)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: vec![],
            wait_ready: true,
            admin_port: None,
            spool: None,
            launcher: vec![],
        }
    }

    /// Exec the gateway through `launcher` ([`GatewayOpts::launcher`]).
    pub fn launched_by(mut self, launcher: &[&str]) -> Self {
        self.launcher = launcher.iter().map(|a| a.to_string()).collect();
        self
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

    /// The gateway as it starts with no flag of I-4's and T-PEN-6's set: the seeds' defaults.
    pub fn seeds_defaults(mut self) -> Self {
        self.env
            .retain(|(k, _)| !SUITE_OPT_OUTS.iter().any(|(opted, _)| k == opted));
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
        Self::start_unready(opts).await.ready().await
    }

    /// The gateway started, its admin listener up, not waited on further: for a test that
    /// watches `/readyz` while the gateway cannot be ready yet ([`Starting::ready`] waits).
    pub async fn start_unready(opts: GatewayOpts) -> Starting {
        let dir = tempfile::tempdir().unwrap();
        // A private copy, so tests may rewrite it.
        let routes = dir.path().join("routes.toml");
        std::fs::copy(&opts.routes, &routes).unwrap();
        Self::start_unready_in(opts, dir, routes).await
    }

    pub async fn start_in(opts: GatewayOpts, dir: tempfile::TempDir, routes: PathBuf) -> Gateway {
        Self::start_unready_in(opts, dir, routes)
            .await
            .ready()
            .await
    }

    async fn start_unready_in(
        opts: GatewayOpts,
        dir: tempfile::TempDir,
        routes: PathBuf,
    ) -> Starting {
        let admin_port = opts.admin_port.unwrap_or(0);
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = match opts.launcher.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_rbac-gateway")),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_rbac-gateway"));
                c
            }
        };
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
            // The host's settings never reach a test's gateway: only the test's (opts.env).
            .env_remove("GATEWAY_ENVIRONMENT")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("GATEWAY_ALERT_WEBHOOK_URL")
            .env_remove("GATEWAY_TICKET_VALIDATION_URL")
            .env("RUST_LOG", "info")
            .env("GATEWAY_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway");
        let admin = admin_listening(&mut child, &log_path).await;
        Starting {
            child: Some(child),
            admin,
            dir: Some(dir),
            routes,
            wait_ready: opts.wait_ready,
        }
    }

    /// The forward-auth listener's address (the gateway must have been started with
    /// `--authz-listen`).
    pub fn authz_addr(&self) -> SocketAddr {
        self.authz
            .expect("the gateway was started without --authz-listen")
    }

    /// An address the gateway reported in a JSON log line's `field` (a listener bound to port
    /// 0, e.g. `freescout_webhook_listen`); the gateway is ready, so the line is there.
    pub fn logged_addr(&self, field: &str) -> SocketAddr {
        let log = self.log();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v[field].as_str().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| panic!("no {field} in the gateway's log:\n{log}"))
    }

    async fn wait(&self, path: &str) {
        eventually_explained(
            Duration::from_secs(20),
            &format!("gateway not ready at {path}"),
            || async {
                admin_get_at(self.admin, path)
                    .await
                    .is_ok_and(|r| r.status == 200)
            },
            || async { format!("; log:\n{}", self.log()) },
        )
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        admin_get_at(self.admin, path).await.unwrap()
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
        send(
            self.addr,
            &request_bytes(method, path, token, headers, body),
        )
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", self.log()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits (`limit` at most) for the process to exit, after a signal; its status. Fails with
    /// `what` and the log when it is still running.
    pub async fn exited(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let log = self.dir.path().join("gateway.log");
        exited_within(&mut self.child, limit, || {
            format!(
                "{what}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .await
    }
}

/// Sends signal `sig` (`TERM`, `HUP`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The bytes of one request as [`Gateway::request`] sends them: `Connection: close`, the
/// session (if any) in Console's cookie beside another cookie.
pub fn request_bytes(
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
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
    bytes
}

/// A GET with a session sent to the data-plane listener at `addr` (a gateway known by its
/// address, from a spawned task): what [`Gateway::get`] sends, the error returned, not a panic.
pub async fn get_at(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<Resp> {
    send(addr, &request_bytes("GET", path, token, &[], b"")).await
}

/// A GET on the admin listener at `admin` (e.g. `/readyz`, from a spawned task).
pub async fn admin_get_at(admin: SocketAddr, path: &str) -> std::io::Result<Resp> {
    send(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// Polls every gateway until each answers `want` for a GET of `path` with `token`; returns the
/// time each took from `since`. Fails the test after `limit`.
pub async fn until_all(
    gws: &[Gateway],
    path: &str,
    token: &str,
    want: u16,
    since: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let done = when_each(gws, path, token, want, since, limit).await;
    assert!(
        done.iter().all(Option::is_some),
        "not all replicas answered {want} within {limit:?}: {done:?}"
    );
    done.into_iter().map(Option::unwrap).collect()
}

/// [`until_all`] that gives up after `limit` without failing: None for a gateway that had not
/// answered `want` by then.
pub async fn when_each(
    gws: &[Gateway],
    path: &str,
    token: &str,
    want: u16,
    since: Instant,
    limit: Duration,
) -> Vec<Option<Duration>> {
    let mut done: Vec<Option<Duration>> = vec![None; gws.len()];
    while done.iter().any(Option::is_none) && since.elapsed() < limit {
        for (i, gw) in gws.iter().enumerate() {
            if done[i].is_none() && gw.get(path, Some(token)).await.status == want {
                done[i] = Some(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// One IPv4 socket as `/proc/net/tcp` reports it.
struct TcpRow {
    local: String,
    remote: String,
    state: String,
    /// Bytes sent and not yet acknowledged by the peer.
    tx_queue: u64,
    /// Bytes received and not yet read by the process that owns the socket.
    rx_queue: u64,
}

/// `/proc/net/tcp`'s address form: the IPv4 address as a little-endian hex word, the port.
fn proc_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr}: only IPv4 sockets are looked up");
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    )
}

/// The kernel's table of IPv4 TCP sockets: how a test sees a listener close, or a peer read
/// what was sent to it, without sending anything itself.
fn tcp_rows() -> Vec<TcpRow> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpRow {
                local: f.get(1)?.to_string(),
                remote: f.get(2)?.to_string(),
                state: f.get(3)?.to_string(),
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Whether a socket is listening on `addr`.
pub fn is_listening(addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let want = proc_addr(addr);
    tcp_rows()
        .iter()
        .any(|r| r.local == want && r.state == LISTEN)
}

/// Whether everything the client socket `client` sent to `server` has been read by the
/// server's process: nothing unacknowledged on the client's side, nothing unread on the
/// server's. False while either socket is not in the table.
pub fn all_read(client: SocketAddr, server: SocketAddr) -> bool {
    let (c, s) = (proc_addr(client), proc_addr(server));
    let rows = tcp_rows();
    let sent = rows
        .iter()
        .any(|r| r.local == c && r.remote == s && r.tx_queue == 0);
    let read = rows
        .iter()
        .any(|r| r.local == s && r.remote == c && r.rx_queue == 0);
    sent && read
}

/// One metric summed over several gateways (replicas sharing a database).
pub async fn metric_sum(gws: &[Gateway], series: &str) -> f64 {
    let mut n = 0.0;
    for gw in gws {
        n += gw.metric(series).await;
    }
    n
}

/// One /readyz answer: the gateway, the status (or why there was none), the body.
pub type ReadySample = (usize, Result<u16, String>, String);

/// Samples every gateway's /readyz until stopped.
pub fn sample_readyz(
    admins: Vec<SocketAddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<ReadySample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for (g, admin) in admins.iter().enumerate() {
                let s = match admin_get_at(*admin, "/readyz").await {
                    Ok(r) => (g, Ok(r.status), r.body_str()),
                    Err(e) => (g, Err(e.to_string()), String::new()),
                };
                samples.push(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    })
}
