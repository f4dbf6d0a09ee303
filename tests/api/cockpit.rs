//! `rbac-gateway cockpit` in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver, `fantoccini`), on a database holding Console's mapping (routes.toml
//! at the repository's root) pushed in two versions and a denial a real gateway wrote. Each page
//! must say what its command says: the board's verdicts `rollout --json`'s, the timeline `mapping
//! history --json`, every matrix cell `matrix --format json`'s, a denial's why `explain
//! --request-id`'s; each page's JSON is the command's. A screenshot of each page is kept under
//! target/cockpit-screenshots/ for review.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// The gateway's binary with no setting an environment could give it.
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbac-gateway"));
    for var in [
        "FLAG_RBAC_V2",
        "DATABASE_URL",
        "GATEWAY_ROUTES",
        "FLAG_TICKET_SCOPED_GRANTS",
        "GATEWAY_RBAC_API",
        "GATEWAY_BREAK_GLASS_REQUIRES_ALERT",
        "GATEWAY_TICKET_VALIDATION_URL",
        "GATEWAY_TICKET_REVALIDATION_WAIVED",
        "GATEWAY_ALERT_WEBHOOK_URL",
        "GATEWAY_ENVIRONMENT",
        "OTEL_RESOURCE_ATTRIBUTES",
        "GATEWAY_COCKPIT_LISTEN",
        "GATEWAY_COCKPIT_AUTH_TOKEN_FILE",
    ] {
        c.env_remove(var);
    }
    c
}

/// A command's standard output (whatever its exit status: `rollout` exits 1 while a cluster the
/// version enforces is not ready, and still prints its report).
fn stdout_of(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 1),
        "{args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(args: &[&str]) -> Value {
    let text = stdout_of(args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// A running `rbac-gateway cockpit`, ended when dropped.
struct Cockpit {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Cockpit {
    /// Starts the cockpit on loopback, port 0, and waits (20 s at most) for the address it prints.
    async fn start(db_url: &str) -> Cockpit {
        Self::start_with(db_url, &["--listen", "127.0.0.1:0"]).await
    }

    async fn start_with(db_url: &str, extra: &[&str]) -> Cockpit {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let child = bin()
            .args(["cockpit", "--database-url", db_url])
            .args(extra)
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut c = Cockpit {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            _dir: dir,
        };
        let child = &mut c.child;
        let what = || "the cockpit never listened".to_string();
        let addr = eventually_some(Duration::from_secs(20), what, || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let addr: Option<SocketAddr> = text
                .split("cockpit: http://")
                .nth(1)
                .map(|rest| rest.split('/').next().unwrap().parse().unwrap());
            if addr.is_none() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the cockpit exited ({status}) before listening: {text}");
                }
            }
            async move { addr }
        })
        .await;
        c.addr = addr;
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GET with extra header lines.
    async fn get(&self, path: &str, headers: &str) -> Resp {
        let host = if headers.contains("Host:") {
            String::new()
        } else {
            format!("Host: {}\r\n", self.addr)
        };
        let req = format!("GET {path} HTTP/1.1\r\n{host}{headers}Connection: close\r\n\r\n");
        send(self.addr, req.as_bytes()).await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path, "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Cockpit {
    fn drop(&mut self) {
        // Reason: only ends the process this test started; it may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a port of its own choosing, ended when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(log.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
        let what = || {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            format!("chromedriver never started: {text}")
        };
        let port: u16 = eventually_some(Duration::from_secs(20), what, || {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            let port = text
                .split("started successfully on port ")
                .nth(1)
                .map(|rest| {
                    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .split('.')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                });
            if port.is_none() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("chromedriver exited ({status}): {text}");
                }
            }
            async move { port }
        })
        .await;
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Reason: only ends the process this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> fantoccini::Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session from chromedriver")
}

fn screenshots() -> PathBuf {
    let dir = root().join("target/cockpit-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A screenshot of the whole page: the window is made as large as the document first.
async fn screenshot(c: &fantoccini::Client, name: &str) {
    let size = c
        .execute(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];",
            vec![],
        )
        .await
        .unwrap();
    let w = size[0].as_u64().unwrap().clamp(1000, 4000) as u32;
    let h = size[1].as_u64().unwrap().clamp(600, 16000) as u32;
    c.set_window_size(w + 20, h + 140).await.unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
    c.set_window_size(1400, 1000).await.unwrap();
}

/// Every element matching `css`, each as the listed attributes (read in one script: the page
/// itself runs none).
async fn attrs(c: &fantoccini::Client, css: &str, names: &[&str]) -> Vec<Vec<String>> {
    let v = c
        .execute(
            "const [css, names] = arguments; return Array.from(document.querySelectorAll(css)).map(e => names.map(n => e.getAttribute(n) ?? ''));",
            vec![serde_json::json!(css), serde_json::json!(names)],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Console's mapping, and a second version with cluster S6 (flags) back in shadow.
fn two_versions(dir: &Path) -> (PathBuf, PathBuf) {
    let v1 = root().join("routes.toml");
    let text = std::fs::read_to_string(&v1).unwrap();
    let v2 = dir.join("routes-s6-shadow.toml");
    let changed = text.replacen(
        "title = \"Flags\"\n",
        "title = \"Flags\"\nmode = \"shadow\"\n",
        1,
    );
    assert_ne!(
        changed, text,
        "routes.toml declares cluster S6 with title \"Flags\""
    );
    std::fs::write(&v2, changed).unwrap();
    (v1, v2)
}

fn push(db: &TestDb, file: &Path, actor: &str, message: &str) {
    let out = bin()
        .args(["mapping", "push"])
        .arg(file)
        .args(["--database-url", &db.url, "--actor", actor, "-m", message])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_cockpit_in_a_browser_says_what_the_commands_say() {
    // A browser, a gateway and the cockpit on two cores: the heaviest kind of test.
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions(dir.path());
    push(&db, &v1, "alice", "Console's mapping");

    // A real denial: a gateway serving version 1 denies an admin without the audit role.
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOpts::new(&v1, &db, up.addr)).await;
    let (_admin, session) = db.admin_with_roles(&["console-user"]).await;
    let denied = gw.get("/console/audit", Some(&session)).await;
    assert_eq!(denied.status, 403);
    let request_id = denied.request_id();
    drop(gw);
    push(&db, &v2, "bob", "S6 back to shadow");

    let cockpit = Cockpit::start(&db.url).await;
    let url = db.url.as_str();

    // Each page's JSON is its command's. The board is counted to the database's clock: at a
    // minute's turn a soak time may read one minute more on the second read, so it is read
    // again (both sides) until they agree, within a deadline.
    let last = std::cell::RefCell::new(String::new());
    let what = || format!("board.json differs from rollout --json:\n{}", last.borrow());
    let board = eventually_some(Duration::from_secs(20), what, || async {
        let page = cockpit.json("/board.json").await;
        let command = json_of(&[
            "rollout",
            "--routes",
            "db:active",
            "--database-url",
            url,
            "--json",
        ]);
        if page == command {
            return Some(page);
        }
        *last.borrow_mut() = format!("{page:#}\n{command:#}");
        None
    })
    .await;
    let history = json_of(&["mapping", "history", "--database-url", url, "--json"]);
    assert_eq!(cockpit.json("/timeline.json").await, history);
    let matrix = json_of(&[
        "matrix",
        "--routes",
        "db:active",
        "--database-url",
        url,
        "--format",
        "json",
    ]);
    assert_eq!(cockpit.json("/matrix.json").await, matrix);
    let diff = json_of(&[
        "diff",
        "db:previous",
        "db:active",
        "--database-url",
        url,
        "--json",
    ]);
    assert_eq!(cockpit.json("/diff.json").await, diff);
    let shown = json_of(&["mapping", "show", "active", "--database-url", url, "--json"]);
    assert_eq!(cockpit.json("/version/active.json").await, shown);
    let version_of =
        |p: &Path| rbac_gateway::policy::mapping::version_of(&std::fs::read(p).unwrap());
    assert_eq!(shown["version"], version_of(&v2).as_str());
    let previous = json_of(&[
        "mapping",
        "show",
        "previous",
        "--database-url",
        url,
        "--json",
    ]);
    let v1_version = version_of(&v1);
    assert_eq!(previous["version"], v1_version.as_str());
    assert_eq!(
        cockpit.json(&format!("/version/{v1_version}.json")).await,
        previous
    );
    let unknown = cockpit.get("/version/0123456789ab.json", "").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body_str());
    assert!(
        unknown.body_str().contains("0123456789ab"),
        "{}",
        unknown.body_str()
    );
    let explained: Vec<String> = stdout_of(&[
        "explain",
        "--request-id",
        &request_id,
        "--database-url",
        url,
    ])
    .lines()
    .map(str::to_string)
    .collect();
    assert!(
        explained
            .iter()
            .any(|l| l == "decision: 403 denied (missing_role)"),
        "{explained:#?}"
    );
    let denials = cockpit.json("/denials.json").await;
    let why: Vec<String> = denials["denials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["request_id"] == request_id.as_str())
        .map(|d| serde_json::from_value(d["why"].clone()).unwrap())
        .expect("the denial is listed");
    assert_eq!(why, explained);
    // Content negotiation: the page's own path answers JSON when asked for it.
    let negotiated = cockpit
        .get("/timeline", "Accept: application/json\r\n")
        .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&negotiated.body).unwrap(),
        history
    );

    // The same, read from the pages as Chromium renders them.
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;

    c.goto(&cockpit.url("/")).await.unwrap();
    let shown = attrs(&c, "#board tr[data-cluster]", &["data-cluster"]).await;
    let verdicts = attrs(&c, "#board span[data-verdict]", &["data-verdict"]).await;
    let expected: Vec<(String, String)> = board["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["cluster"].as_str().unwrap().to_string(),
                s["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let got: Vec<(String, String)> = shown
        .into_iter()
        .zip(verdicts)
        .map(|(c, v)| (c[0].clone(), v[0].clone()))
        .collect();
    assert_eq!(
        got, expected,
        "the board's clusters, in order, and verdicts"
    );
    assert!(got.iter().any(|(c, _)| c == "S6"), "{got:?}");
    // The active version's tests, as its push recorded them (issue 70): version 2 was pushed
    // from a directory with no test file beside it.
    assert_eq!(board["tests"]["result"], "none", "{board:#}");
    let tests_line = c
        .find(fantoccini::Locator::Css("#tests"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        tests_line,
        "Its tests at push: none (no test file beside the pushed file)"
    );
    screenshot(&c, "board.png").await;

    c.goto(&cockpit.url("/timeline")).await.unwrap();
    let ids: Vec<String> = attrs(&c, "section.activation", &["data-id"])
        .await
        .into_iter()
        .map(|a| a[0].clone())
        .collect();
    let mut expected: Vec<String> = history["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].to_string())
        .collect();
    expected.reverse();
    assert_eq!(ids, expected, "every activation, newest first");
    let text = c
        .find(fantoccini::Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for a in history["activations"].as_array().unwrap() {
        for field in ["version", "actor", "message", "kind"] {
            let v = a[field].as_str().unwrap();
            assert!(text.contains(v), "the timeline shows {field} {v}");
        }
        for line in a["changed"]["rules"].as_array().unwrap() {
            assert!(
                text.contains(line.as_str().unwrap()),
                "the timeline shows {line}"
            );
        }
    }
    // Each version's tests record: Console's mapping passed routes.test.toml beside it.
    let first = &history["versions"][0];
    assert_eq!(first["tests"]["result"], "passed", "{history:#}");
    let said = format!(
        "passed, {} cases of {}",
        first["tests"]["cases"],
        first["tests"]["files"][0].as_str().unwrap()
    );
    assert!(said.ends_with("routes.test.toml"), "{said}");
    assert!(text.contains(&said), "the timeline shows {said}");
    assert!(
        text.contains("none (no test file beside the pushed file)"),
        "the timeline shows the second version's record"
    );
    screenshot(&c, "timeline.png").await;

    c.goto(&cockpit.url("/matrix")).await.unwrap();
    // Each cell with its principal (its column's header) and its rule (its row's).
    let v = c
        .execute(
            "const out = []; for (const t of document.querySelectorAll('table.matrix')) {\
               const who = Array.from(t.querySelectorAll('thead th')).map(h => h.getAttribute('data-principal'));\
               for (const r of t.querySelectorAll('tbody tr[data-rule]')) {\
                 Array.from(r.children).forEach((d, i) => { if (who[i] !== null) out.push([who[i],\
                   r.getAttribute('data-method'), r.getAttribute('data-rule'), d.getAttribute('data-outcome'),\
                   d.getAttribute('data-reach'), d.getAttribute('data-status'), d.getAttribute('class')]); }); } }\
             return out;",
            vec![],
        )
        .await
        .unwrap();
    let cells: Vec<Vec<String>> = serde_json::from_value(v).unwrap();
    let mut expected = Vec::new();
    for row in matrix["rows"].as_array().unwrap() {
        for (col, cell) in matrix["columns"]
            .as_array()
            .unwrap()
            .iter()
            .zip(row["cells"].as_array().unwrap())
        {
            expected.push(vec![
                row["name"].as_str().unwrap().to_string(),
                col["method"].as_str().unwrap().to_string(),
                col["rule"].as_str().unwrap().to_string(),
                cell["outcome"].as_str().unwrap().to_string(),
                cell["reach"].as_str().unwrap().to_string(),
                cell["status"]
                    .as_u64()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ]);
        }
    }
    let mut got: Vec<Vec<String>> = cells.iter().map(|c| c[..6].to_vec()).collect();
    got.sort();
    expected.sort();
    assert!(expected.len() > 300, "{} cells", expected.len());
    assert_eq!(
        got, expected,
        "every cell of the matrix is matrix --format json's"
    );
    // The cells S6's return to shadow changed are marked, and only those.
    let changed: Vec<&Vec<String>> = cells.iter().filter(|c| c[6].contains("changed")).collect();
    assert!(!changed.is_empty());
    let s6_rules: Vec<&str> = matrix["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cluster"] == "S6")
        .map(|c| c["rule"].as_str().unwrap())
        .collect();
    for cell in &changed {
        assert!(s6_rules.contains(&cell[2].as_str()), "{cell:?} is in S6");
    }
    assert!(
        changed.iter().any(|c| c[3] == "shadow_denied"),
        "a 403 became a shadow denial: {changed:?}"
    );
    screenshot(&c, "matrix.png").await;

    c.goto(&cockpit.url("/denials")).await.unwrap();
    let why_shown = c
        .find(fantoccini::Locator::Css(&format!(
            "section[data-request-id=\"{request_id}\"] pre.why"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(why_shown.lines().collect::<Vec<_>>(), explained);
    screenshot(&c, "denials.png").await;

    c.goto(&cockpit.url("/diff")).await.unwrap();
    screenshot(&c, "diff.png").await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn the_cockpit_changes_nothing() {
    let db = TestDb::new().await;
    // The cockpit's connection: every transaction read-only, whatever code sends a write.
    let ro = rbac_gateway::stores::db::Db::connect_read_only(&db.url, 1, Duration::from_secs(10))
        .unwrap();
    // A write PostgreSQL would commit in a transaction that may write.
    let e = sqlx::query("INSERT INTO rbac_groups (id, name) VALUES ('written', 'written')")
        .persistent(false)
        .execute(&ro)
        .await
        .expect_err("a write through a read-only pool");
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("25006"),
        "read_only_sql_transaction: {e}"
    );
    // The site answers reads only.
    let cockpit = Cockpit::start(&db.url).await;
    let before = db.audit_count().await;
    let post = send(
        cockpit.addr,
        format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            cockpit.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // No version activated yet: the board says why, the others still answer.
    let board = cockpit.get("/", "").await;
    assert_eq!(board.status, 500);
    assert!(
        board
            .body_str()
            .contains("no mapping version was ever activated"),
        "{}",
        board.body_str()
    );
    assert_eq!(cockpit.get("/denials", "").await.status, 200);
    assert_eq!(db.audit_count().await, before);
    // A page loaded from another site through a name that resolves here is not answered.
    let rebound = cockpit.get("/", "Host: attacker.example\r\n").await;
    assert_eq!(rebound.status, 421);
}

#[tokio::test]
async fn a_cockpit_off_loopback_needs_a_token() {
    let db = TestDb::new().await;
    let out = bin()
        .args([
            "cockpit",
            "--database-url",
            &db.url,
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth-token-file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "short\n").unwrap();
    let out = bin()
        .args([
            "cockpit",
            "--database-url",
            &db.url,
            "--listen",
            "0.0.0.0:0",
            "--auth-token-file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "a short token is refused");

    let token = "4f1c8a2e9b7d6035e1a4c9f08b2d7e6a";
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let mut cockpit = Cockpit::start_with(
        &db.url,
        &[
            "--listen",
            "0.0.0.0:0",
            "--auth-token-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    // The address printed is the wildcard's: asked on loopback.
    cockpit.addr = SocketAddr::from(([127, 0, 0, 1], cockpit.addr.port()));
    let none = cockpit.get("/denials", "").await;
    assert_eq!(none.status, 401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic "));
    let wrong = cockpit
        .get("/denials", &format!("Authorization: Bearer {token}0\r\n"))
        .await;
    assert_eq!(wrong.status, 401);
    let bearer = cockpit
        .get("/denials", &format!("Authorization: Bearer {token}\r\n"))
        .await;
    assert_eq!(bearer.status, 200);
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{token}"));
    let browser = cockpit
        .get("/denials", &format!("Authorization: Basic {basic}\r\n"))
        .await;
    assert_eq!(browser.status, 200);
}

/// Found by a review: the cockpit's server had no timer, so hyper's header read timeout was off
/// (hyper said so: "timeout header_read_timeout has default, but no timer set") and a partial
/// request head held a connection for ever; and `?limit=abc` was read as the default, 20.
#[tokio::test]
async fn the_cockpit_closes_a_partial_head_and_refuses_a_limit_that_is_no_number() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let cockpit = Cockpit::start(&db.url).await;

    for path in ["/denials.json?limit=abc", "/denials?limit=abc"] {
        let r = cockpit.get(path, "").await;
        assert_eq!(r.status, 400, "{path}: {}", r.body_str());
        assert!(r.body_str().contains("limit="), "{path}: {}", r.body_str());
    }
    // A number is taken (and clamped), an empty field is the default.
    for path in [
        "/denials.json?limit=5",
        "/denials.json?limit=9999",
        "/denials.json?limit=",
    ] {
        let r = cockpit.get(path, "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
    }

    // A request head that stops halfway, then silence: closed within a few times the timeout.
    let bound = rbac_gateway::cli::COCKPIT_HEADER_READ_TIMEOUT;
    let mut s = tokio::net::TcpStream::connect(cockpit.addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(
        format!(
            "GET /denials HTTP/1.1\r\nHost: {}\r\nAccept: te",
            cockpit.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let limit = 3 * bound;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
    let took = t0.elapsed();
    eprintln!("a partial head: closed {took:?} after it was sent");
    assert!(
        closed.is_ok(),
        "a partial request head still holds the connection after {limit:?}"
    );
    // Closed for the timeout (hyper answers it 408 first), not for anything else.
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= bound.mul_f64(0.9),
        "closed after {took:?}, before the timeout"
    );
    // The site still answers.
    assert_eq!(cockpit.get("/denials.json", "").await.status, 200);
}

/// The links beside the counts of `/denials` (issue 66): the page took the newest rows of every
/// rule first and filtered them after, so a rule whose rows were older than the newest 20 showed
/// "None." beside its count of 2, and `?route=-&reason=no_route` listed the no-route rows among
/// the newest 20 rather than 20 of them. Rows are filtered by the statement, then limited.
#[tokio::test]
async fn the_denials_links_list_their_rules_rows_however_many_newer_rows_others_left() {
    let db = TestDb::new().await;
    // Oldest first: two of GET /secrets, then 215 of another rule with 30 no-route rows among them.
    let row = |route: Option<&'static str>, reason: &'static str, age: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO access_audit_events (id, event_type, admin_id, method, path, route, reason, request_id, created_at_utc) \
                 VALUES (gen_random_uuid()::text, 'access_denied', 'a', 'GET', '/x', $1, $2, gen_random_uuid()::text, \
                 now() - make_interval(secs => $3))",
            )
            .bind(route)
            .bind(reason)
            .bind(age as f64)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let mut age = 1000;
    for _ in 0..2 {
        row(Some("GET /secrets"), "missing_role", age).await;
        age -= 1;
    }
    for i in 0..245 {
        if i % 8 == 0 && i / 8 < 30 {
            row(None, "no_route", age).await;
        } else {
            row(Some("GET /other"), "missing_role", age).await;
        }
        age -= 1;
    }
    let cockpit = Cockpit::start(&db.url).await;
    // The link the page prints beside GET /secrets' count, followed as a browser would.
    let page = cockpit.get("/denials", "").await;
    assert_eq!(page.status, 200);
    let html = page.body_str();
    let link = html
        .split("href=\"")
        .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        .find(|h| h.contains("secrets"))
        .unwrap_or_else(|| panic!("no link for GET /secrets: {html}"));
    assert_eq!(
        link,
        "/denials?route=GET%20%2Fsecrets&reason=missing%5Frole"
    );
    let listed = |v: &Value| -> Vec<(Option<String>, String)> {
        v["denials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["route"].as_str().map(str::to_string),
                    d["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let secrets = listed(
        &cockpit
            .json(&link.replacen("/denials", "/denials.json", 1))
            .await,
    );
    assert_eq!(
        secrets,
        vec![(Some("GET /secrets".to_string()), "missing_role".to_string()); 2]
    );
    let shown = cockpit.get(&link, "").await;
    assert_eq!(
        shown
            .body_str()
            .matches("<section class=\"denial\"")
            .count(),
        2
    );
    // No rule: 20 of the 30, the newest, by default; all 30 under a larger limit.
    let no_route = listed(&cockpit.json("/denials.json?route=-&reason=no_route").await);
    assert_eq!(no_route, vec![(None, "no_route".to_string()); 20]);
    let all = listed(
        &cockpit
            .json("/denials.json?route=-&reason=no_route&limit=200")
            .await,
    );
    assert_eq!(all.len(), 30);
    // One filter alone, and none.
    let missing = listed(
        &cockpit
            .json("/denials.json?reason=missing_role&limit=200")
            .await,
    );
    assert_eq!(missing.len(), 200);
    assert!(missing.iter().all(|(_, r)| r == "missing_role"));
    assert_eq!(
        listed(
            &cockpit
                .json("/denials.json?route=GET%20/other&limit=3")
                .await
        ),
        vec![(Some("GET /other".to_string()), "missing_role".to_string()); 3]
    );
    assert_eq!(listed(&cockpit.json("/denials.json").await).len(), 20);
}

/// A version named in a query that is not stored (issue 66): `/version/V` answered 404, but the
/// diff and the matrix answered 500, where the command exits 64 for the same input. Each is a
/// 404 that names the version; the pages still answer for stored versions.
#[tokio::test]
async fn an_unknown_version_is_not_found_on_every_page() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions(dir.path());
    push(&db, &v1, "alice", "Console's mapping");
    let cockpit = Cockpit::start(&db.url).await;
    // `previous` names none yet: not found, saying why.
    let r = cockpit.get("/diff.json", "").await;
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert!(
        r.body_str().contains("the first version ever activated"),
        "{}",
        r.body_str()
    );
    push(&db, &v2, "bob", "S6 back to shadow");
    const UNKNOWN: &str = "000000000000";
    for path in [
        format!("/version/{UNKNOWN}"),
        format!("/diff?old={UNKNOWN}"),
        format!("/diff.json?new={UNKNOWN}"),
        format!("/diff.json?old=active&new={UNKNOWN}"),
        format!("/matrix?version={UNKNOWN}"),
        format!("/matrix.json?version={UNKNOWN}"),
        format!("/matrix.json?compare={UNKNOWN}"),
        format!("/matrix?compare={UNKNOWN}"),
    ] {
        let r = cockpit.get(&path, "").await;
        assert_eq!(r.status, 404, "{path}: {}", r.body_str());
        assert!(r.body_str().contains(UNKNOWN), "{path}: {}", r.body_str());
        assert!(
            r.body_str().contains("no stored mapping version"),
            "{path}: {}",
            r.body_str()
        );
    }
    // The same input is bad input for the command (64), not a failure.
    let out = bin()
        .args(["diff", &format!("db:{UNKNOWN}"), "db:active"])
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // Stored versions still answer.
    for path in ["/diff.json", "/matrix.json", "/"] {
        let r = cockpit.get(path, "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
    }
}

/// The 404 page's JSON link was the request's path with `.json` (issue 66): `GET
/// //evil.example/x` gave `href="//evil.example/x.json"`, a link to another site. No page links
/// off the site, whatever path was asked for: every link is a path beginning with exactly one `/`.
#[tokio::test]
async fn no_page_links_off_the_site() {
    let db = TestDb::new().await;
    let cockpit = Cockpit::start(&db.url).await;
    for path in [
        "//evil.example/x",
        "//evil.example",
        "///evil.example/x",
        "/\\evil.example/x",
        "/nothing",
        "/denials",
    ] {
        let r = cockpit.get(path, "").await;
        let html = r.body_str();
        let hrefs: Vec<&str> = html
            .split("href=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
            .collect();
        assert!(!hrefs.is_empty() || r.status == 400, "{path}: {html}");
        for h in hrefs {
            let mut c = h.chars();
            assert!(
                c.next() == Some('/') && !matches!(c.next(), Some('/' | '\\')),
                "{path} ({}): a link off the site: {h:?}",
                r.status
            );
        }
    }
}

/// The board shows the invariants section `check` and `rollout` print: here a waived T-PEN-6
/// and I-11 in production without its row.
#[tokio::test]
async fn the_board_shows_the_invariants() {
    let db = TestDb::new().await;
    push(&db, &core_routes(), "ops@example.test", "the invariants");
    let c = Cockpit::start_with(
        &db.url,
        &[
            "--listen",
            "127.0.0.1:0",
            "--ticket-revalidation-waived",
            "--environment",
            "production",
        ],
    )
    .await;
    let board = c.json("/board.json").await;
    let state = |id: &str| {
        board["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {board}"))["state"]
            .clone()
    };
    assert_eq!(state("T-PEN-6"), "not_met");
    assert_eq!(state("I-11"), "not_met");
    assert_eq!(state("I-6"), "met");
    let html = c.get("/", "").await.body_str();
    assert!(
        html.contains(r#"data-invariant="T-PEN-6""#)
            && html.contains("waived (--ticket-revalidation-waived)"),
        "{html}"
    );
    assert!(html.contains(r#"data-state="not_met""#), "{html}");
}
