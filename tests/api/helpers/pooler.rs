//! Debian's PgBouncer (the real binary, `scripts/setup.sh` installs it) in front of the test
//! PostgreSQL: every database name of that server reached through one loopback port.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Where Debian puts the binary (not on a non-root user's PATH).
fn pgbouncer_bin() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("pgbouncer")
}

pub fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|uid| uid == "0")
}

pub struct PgBouncer {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// How PgBouncer speaks to PostgreSQL: plain text, or TLS required (`server_tls_sslmode =
/// require`: what Heroku's PgBouncer buildpack sets, Heroku Postgres taking TLS only). Clients
/// always reach PgBouncer itself in plain text, on loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTls {
    Disable,
    Require,
}

/// How PgBouncer pools: `transaction` (a server connection per transaction, shared by every
/// client: Heroku's buildpack, most fleets) or `session` (one per client connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PgBouncer {
    /// PgBouncer in `mode`, holding at most `pool_size` server connections per database and
    /// user, in front of the server of `server_url` (any of its databases), in plain text.
    pub async fn start(server_url: &str, mode: PoolMode, pool_size: u32) -> PgBouncer {
        PgBouncer::start_with(server_url, mode, pool_size, ServerTls::Disable).await
    }

    /// [`PgBouncer::start`], speaking to the server with `tls`.
    pub async fn start_with(
        server_url: &str,
        mode: PoolMode,
        pool_size: u32,
        tls: ServerTls,
    ) -> PgBouncer {
        PgBouncer::launch(server_url, mode, pool_size, tls, None).await
    }

    /// [`PgBouncer::start`] with `ignore_startup_parameters = options`, as the README tells an
    /// operator whose cockpit connects through PgBouncer: the startup option is then accepted
    /// and dropped, never reaching PostgreSQL.
    pub async fn start_ignoring_options(
        server_url: &str,
        mode: PoolMode,
        pool_size: u32,
    ) -> PgBouncer {
        PgBouncer::launch(
            server_url,
            mode,
            pool_size,
            ServerTls::Disable,
            Some("options"),
        )
        .await
    }

    async fn launch(
        server_url: &str,
        mode: PoolMode,
        pool_size: u32,
        tls: ServerTls,
        ignore_startup_parameters: Option<&str>,
    ) -> PgBouncer {
        let server = db_host_port(server_url);
        let (host, port) = server.rsplit_once(':').unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Run as root, PgBouncer refuses to start; it switches to `postgres` (-u), which must
        // read its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, "\"postgres\" \"\"\n").unwrap();
        let mode = match mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let tls = match tls {
            ServerTls::Disable => "disable",
            ServerTls::Require => "require",
        };
        // Without ignore_startup_parameters: the gateway sends no startup parameter PgBouncer
        // does not know (issue 44), as docs/deploy/pgbouncer.md promises.
        let ignore = match ignore_startup_parameters {
            Some(p) => format!("ignore_startup_parameters = {p}\n"),
            None => String::new(),
        };
        // PgBouncer cannot bind port 0: a port found free is tried, another one if it was taken
        // in between.
        let mut last_log = String::new();
        for _ in 0..5 {
            let listen = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     * = host={host} port={port}\n\
                     \n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {listen}\n\
                     unix_socket_dir =\n\
                     pidfile =\n\
                     logfile =\n\
                     auth_type = trust\n\
                     auth_file = {userlist}\n\
                     pool_mode = {mode}\n\
                     server_tls_sslmode = {tls}\n\
                     default_pool_size = {pool_size}\n\
                     min_pool_size = 0\n\
                     reserve_pool_size = 0\n\
                     max_client_conn = 500\n\
                     {ignore}\
                     log_connections = 0\n\
                     log_disconnections = 0\n\
                     log_pooler_errors = 1\n",
                    userlist = userlist.display(),
                ),
            )
            .unwrap();
            std::fs::set_permissions(&ini, std::fs::Permissions::from_mode(0o644)).unwrap();
            let log_path = dir.path().join("pgbouncer.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = Command::new(pgbouncer_bin());
            if running_as_root() {
                cmd.arg("-u").arg("postgres");
            }
            let mut child = cmd
                .arg(&ini)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start pgbouncer (scripts/setup.sh installs it)");
            let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if is_listening(addr) {
                    return PgBouncer { child, addr, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "pgbouncer never listened on {addr}; log:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                last_log.contains("in use"),
                "pgbouncer exited; log:\n{last_log}"
            );
        }
        panic!("pgbouncer found no free port; last log:\n{last_log}");
    }

    /// `db`'s URL through PgBouncer (its query, e.g. `?sslmode=require` for the server, left
    /// off: PgBouncer takes plain text from its clients).
    pub fn url(&self, db: &TestDb) -> String {
        let url = db_url_via(&db.url, self.addr);
        match url.split_once('?') {
            Some((base, _)) => base.to_string(),
            None => url,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl PgBouncer {
    /// Points its entry at the server of `server_url` and reloads its configuration (SIGHUP),
    /// as an operator re-pointing it at another server would: client connections open stay
    /// open, and their next transactions reach the new server.
    pub fn repoint(&self, server_url: &str) {
        let server = db_host_port(server_url);
        let (host, port) = server.rsplit_once(':').unwrap();
        let ini = self.dir.path().join("pgbouncer.ini");
        let text = std::fs::read_to_string(&ini).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("* = host="))
            .expect("the ini's entry")
            .to_string();
        std::fs::write(
            &ini,
            text.replace(&line, &format!("* = host={host} port={port}")),
        )
        .unwrap();
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP pgbouncer");
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a gateway's log that say something went wrong with the database (no fault is
/// injected here): a warning or error that carries an error or speaks of the database, and any
/// line about prepared statements or a panic. (Start-up warnings about flags left unset are not
/// about the database: those that would read as such name their `setting`.)
pub fn database_complaints(log: &str) -> Vec<String> {
    const ABOUT_THE_DATABASE: [&str; 9] = [
        "database",
        "statement",
        "connection",
        "sqlx",
        "feed",
        "audit",
        "spool",
        "pool",
        "LISTEN",
    ];
    log.lines()
        .filter(|line| {
            let v = serde_json::from_str::<serde_json::Value>(line).unwrap_or_default();
            let warned = matches!(v["level"].as_str(), Some("WARN" | "ERROR"))
                && v["setting"].is_null()
                && (!v["error"].is_null() || ABOUT_THE_DATABASE.iter().any(|w| line.contains(w)));
            warned
                || line.contains("prepared statement")
                || line.contains("bind message")
                || line.contains("panicked")
        })
        .map(str::to_string)
        .collect()
}
