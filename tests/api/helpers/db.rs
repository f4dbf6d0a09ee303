//! Databases: a fresh migrated one per test, a cuttable TCP link to PostgreSQL, and a private
//! server a test may stop and start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::root;

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A new, migrated database on the server of DATABASE_URL.
    pub async fn new() -> TestDb {
        TestDb::created_with("").await
    }

    /// A new database migrated only up to migration `version` (as the previous release left
    /// it), from a copy of `migrations/` holding those files alone.
    pub async fn at_version(version: i64) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(root().join("migrations")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let n: i64 = name.split('_').next().unwrap().parse().unwrap();
            if n <= version {
                std::fs::copy(&path, dir.path().join(&name)).unwrap();
            }
        }
        let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        TestDb::created_with_migrator("", &migrator).await
    }

    /// [`TestDb::new`], the database created with `options` (`CREATE DATABASE name options`:
    /// a collation provider, a template).
    pub async fn created_with(options: &str) -> TestDb {
        TestDb::created_with_migrator(options, &rbac_gateway::stores::migrations::MIGRATOR).await
    }

    async fn created_with_migrator(options: &str, migrator: &sqlx::migrate::Migrator) -> TestDb {
        let db = TestDb::created_empty(options).await;
        migrator.run(&db.pool).await.unwrap();
        db
    }

    /// A new database, nothing made in it.
    pub async fn created_empty(options: &str) -> TestDb {
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must be set (scripts/test.sh sets it)");
        let name = format!("rbacgw_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&base)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name} {options}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let url = format!("{prefix}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        TestDb { url, pool }
    }

    /// A database as README's Upgrade has it run: Console's tables made by the role that owns
    /// them (not a superuser), then `rbac-gateway migrate` run by a login that is a member of
    /// that role and not a superuser, which so owns the gateway's tables and functions. The
    /// owning login's pool beside it. Roles are cluster-wide: named after the database.
    pub async fn migrated_by_a_login() -> (TestDb, PgPool) {
        let db = TestDb::created_empty("").await;
        let (_, name) = db.url.rsplit_once('/').unwrap();
        let short = name.trim_start_matches("rbacgw_");
        let (console, owner) = (format!("{short}_console"), format!("{short}_owner"));
        let schema = std::fs::read_to_string(root().join("migrations/0001_schema.sql")).unwrap();
        let (consoles, _) = schema
            .split_once("CREATE TABLE IF NOT EXISTS access_audit_events")
            .unwrap();
        sqlx::raw_sql(&format!(
            "CREATE ROLE \"{console}\"; CREATE ROLE \"{owner}\" LOGIN IN ROLE \"{console}\"; \
             GRANT CREATE ON SCHEMA public TO \"{console}\"; SET ROLE \"{console}\"; {consoles}; RESET ROLE"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
        let owner_url = db.url_as(&owner);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args(["migrate", "--database-url", &owner_url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "migrate as {owner}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let superuser: bool = sqlx::query_scalar(
            "SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner \
              WHERE p.proname = 'rbac_gateway_plain'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(!superuser, "the gateway's functions are owned by {owner}");
        let pool = PgPool::connect(&owner_url).await.unwrap();
        (db, pool)
    }

    /// A new login on this database's server holding `role` only, then `extra` run with `USER`
    /// standing for it; its URL. Roles are cluster-wide: the login is named after the database.
    pub async fn login_in_role(&self, role: &str, extra: &str) -> String {
        let (_, name) = self.url.rsplit_once('/').unwrap();
        let user = format!("{}_{role}", name.trim_start_matches("rbacgw_"));
        sqlx::raw_sql(&format!(
            "CREATE ROLE \"{user}\" LOGIN IN ROLE {role}; {}",
            extra.replace("USER", &format!("\"{user}\""))
        ))
        .execute(&self.pool)
        .await
        .unwrap();
        self.url_as(&user)
    }

    /// This database's URL with `user` as the login.
    pub fn url_as(&self, user: &str) -> String {
        let (prefix, name) = self.url.rsplit_once('/').unwrap();
        let (scheme, rest) = prefix.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{user}@{host}/{name}")
    }

    /// The login of a URL this database's [`TestDb::url_as`] made.
    pub fn user_of(url: &str) -> String {
        let (before, _) = url.rsplit_once('@').unwrap();
        before.rsplit_once("//").unwrap().1.to_string()
    }

    /// The gateway's own handle on this database (its statements pooler-safe), for the tests that
    /// call the library directly.
    pub fn gw(&self) -> rbac_gateway::stores::db::Db {
        rbac_gateway::stores::db::Db::connect(
            &self.url,
            None,
            2,
            std::time::Duration::from_secs(10),
        )
        .expect("a lazy pool")
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
            "SELECT event_type, admin_id, method, path, route, required, reason, client_ip, user_agent FROM access_audit_events WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The `access_denied` rows of these requests: request id and the admin each names.
    pub async fn denied_rows(&self, request_ids: &[String]) -> Vec<(String, Option<String>)> {
        sqlx::query_as(
            "SELECT request_id, admin_id FROM access_audit_events WHERE event_type = 'access_denied' AND request_id = ANY($1)",
        )
        .bind(request_ids)
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
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Makes Console's database role, `console_app` (NOLOGIN), unless it exists. Roles are
/// cluster-wide: whichever test comes first makes it; two at once, the second finds it made
/// (PostgreSQL says so with duplicate_object or, in a race, unique_violation).
pub async fn console_app_role(conn: &mut sqlx::PgConnection) {
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE console_app; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
    )
    .execute(conn)
    .await
    .unwrap();
}

/// The `host:port` a database URL (`postgres://user@host:port/db`) points at.
pub fn db_host_port(db_url: &str) -> String {
    let rest = db_url.split('@').nth(1).unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// The same database URL, reached at `addr` instead (a link, a forwarder, a pooler).
pub fn db_url_via(db_url: &str, addr: std::net::SocketAddr) -> String {
    db_url.replacen(&db_host_port(db_url), &addr.to_string(), 1)
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
        let target = db_host_port(db_url);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = db_url_via(db_url, listener.local_addr().unwrap());
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

    /// Restarts the server with `conf` (lines of postgresql.conf) added to its configuration.
    pub fn restart_with(&self, conf: &str) {
        let path = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        text.push_str(conf);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        self.pg("restart");
    }

    /// Stops every process of the server (SIGSTOP): connections stay open and nothing is
    /// answered, and what was sent is acted on once [`PrivatePg::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal_all("STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal_all("CONT");
    }

    fn signal_all(&self, sig: &str) {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap();
        let pid = pid_file.lines().next().unwrap().trim().to_string();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &pid])
            .output()
            .unwrap();
        let mut pids = vec![pid];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .args(&pids)
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pids:?}");
    }

    /// A streaming standby of this server (`scripts/pg.sh standby`: pg_basebackup -R), on a
    /// port of its own, answering once it is consistent.
    pub fn standby(&self) -> PrivatePg {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts/pg.sh"))
            .arg("standby")
            .arg(dir.path().join("pg"))
            .arg(&self.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh standby: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("pg/basebackup.log")).unwrap_or_default()
        );
        let url = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("export STANDBY_URL="))
            .unwrap()
            .to_string();
        PrivatePg { dir, url }
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
        rbac_gateway::stores::migrations::MIGRATOR
            .run(&pool)
            .await
            .unwrap();
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
