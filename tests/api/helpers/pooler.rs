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

fn running_as_root() -> bool {
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

/// How PgBouncer pools: `transaction` (a server connection per transaction, shared by every
/// client: Heroku's buildpack, most fleets) or `session` (one per client connection).
#[derive(Clone, Copy, Debug)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PgBouncer {
    /// PgBouncer in `mode`, holding at most `pool_size` server connections per database and
    /// user, in front of the server of `server_url` (any of its databases).
    pub async fn start(server_url: &str, mode: PoolMode, pool_size: u32) -> PgBouncer {
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
                     default_pool_size = {pool_size}\n\
                     min_pool_size = 0\n\
                     reserve_pool_size = 0\n\
                     max_client_conn = 500\n\
                     ; No ignore_startup_parameters: the gateway sends no startup parameter\n\
                     ; PgBouncer does not know (issue 44), as the README promises.\n\
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

    /// `db`'s URL through PgBouncer.
    pub fn url(&self, db: &TestDb) -> String {
        db_url_via(&db.url, self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
