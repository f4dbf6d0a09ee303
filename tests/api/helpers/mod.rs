//! Test harness: a fresh database per test, a recording upstream, the real gateway binary, and
//! a raw HTTP client that sends exactly the bytes a test gives it; one file per concern, all
//! re-exported here (`use crate::helpers::*`).

mod db;
mod forwarder;
mod gateway;
mod http;
mod migrating;
mod pgwire;
mod pooler;
mod routes;
mod upstream;
mod wait;

pub use db::*;
pub use forwarder::*;
pub use gateway::*;
pub use http::*;
pub use migrating::*;
pub use pgwire::*;
pub use pooler::*;
pub use routes::*;
pub use upstream::*;
pub use wait::*;

use std::path::PathBuf;

/// A finished command's exit code and its standard output then standard error, as text.
pub fn code_and_output(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `rbac-gateway sweep --once` against `db_url` with `extra` flags, without blocking the
/// test's runtime (stand-ins served on it keep answering), and asserts it exited 0.
pub async fn sweep_once(db_url: &str, extra: &[&str]) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["sweep", "--once", "--database-url", db_url])
        .args(extra)
        .output()
        .await
        .unwrap();
    let (code, text) = code_and_output(&out);
    assert_eq!(code, Some(0), "sweep --once: {text}");
}

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

/// Runs a Python oracle of the differential tests (`tests/<script>`, with `args`) on `input`
/// (JSON lines), and returns its JSON answers, one per line; `expected` answers, or the test
/// fails naming the script.
/// The project's virtual environment of test tools (`.venv/`, made by `scripts/venv.sh`, which
/// `scripts/setup.sh --tests` runs): Flask, gunicorn, Werkzeug, honcho, Caddy, Traefik.
pub fn venv_bin() -> PathBuf {
    root().join(".venv").join("bin")
}

/// A test tool from the project's virtual environment, `python3` included: the oracles and the
/// stand-ins import Werkzeug, gunicorn and Flask from it, never from the system's interpreter.
pub fn tool(name: &str) -> PathBuf {
    let p = venv_bin().join(name);
    assert!(
        p.is_file(),
        "{} is missing: scripts/setup.sh --tests makes the project's virtual environment (.venv/)",
        p.display()
    );
    p
}

/// `PATH` with the virtual environment first, for a tool that starts others by name (honcho
/// runs the Procfile's `gunicorn`).
pub fn tool_path() -> std::ffi::OsString {
    let mut dirs = vec![venv_bin()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

pub fn python_oracle(
    script: &str,
    args: &[&std::ffi::OsStr],
    input: String,
    expected: usize,
) -> Vec<serde_json::Value> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool("python3"))
        .arg(root().join("tests").join(script))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "python3 of .venv/ runs (scripts/setup.sh --tests installs it, gunicorn and werkzeug)",
        );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers.len(),
        expected,
        "one {script} answer per input line"
    );
    answers
}
