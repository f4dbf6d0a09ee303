//! `rbac-gateway migrate` run in the background, its standard error read as it comes: a test
//! acts once `migrate` has said it reached a point (a lock it waits for), not on the server's
//! view of its session.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// A running `migrate` and what it has said on standard error so far.
pub struct Migrating {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    /// Standard error up to now, a line each.
    pub text: String,
}

impl Migrating {
    /// `rbac-gateway migrate --database-url url`, started.
    pub fn start(url: &str) -> Migrating {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
            .args(["migrate", "--database-url", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        Migrating {
            child,
            lines,
            text: String::new(),
        }
    }

    /// Reads standard error until a line containing `marker`, within 30 s; fails the test
    /// where `migrate` ends or stays silent first.
    pub async fn said(&mut self, marker: &str) {
        let (lines, text) = (&mut self.lines, &mut self.text);
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                text.push_str(&line);
                text.push('\n');
                if line.contains(marker) {
                    return;
                }
            }
            panic!("migrate ended without saying {marker:?}:\n{text}");
        })
        .await
        .unwrap_or_else(|_| panic!("migrate did not say {marker:?} within 30 s"));
    }

    /// Waits for `migrate` to end, within 120 s: its exit code, and its standard error then
    /// its standard output.
    pub async fn end(mut self) -> (Option<i32>, String) {
        let (lines, text) = (&mut self.lines, &mut self.text);
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                text.push_str(&line);
                text.push('\n');
            }
        })
        .await
        .expect("migrate ended within 120 s");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).await.unwrap();
        }
        let code = self.child.wait().await.unwrap().code();
        (code, format!("{}{stdout}", self.text))
    }
}
