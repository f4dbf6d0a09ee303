//! Behind a connection pooler (issue 44, part 1): Debian's PgBouncer in transaction mode, as
//! Heroku's buildpack and most fleets run it, shares a few server connections between every
//! gateway. A gateway must never act on a statement it did not issue in its own transaction:
//! every session resolves to its own admin, every 403 has its row naming that admin, /readyz
//! stays 200, a revocation reaches every gateway within a second, and the logs say nothing
//! went wrong with the database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

const GATEWAYS: usize = 4;
const ADMINS: usize = 40;
/// Each round, every admin gets a new session, seen by every gateway for the first time.
const ROUNDS: usize = 3;
/// Requests per admin, gateway and round (all sent at once).
const REPEATS: usize = 2;
const REVOCATIONS: usize = 3;
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// How long a session to revoke may take to be allowed (cached) by every gateway.
const PRIME_LIMIT: Duration = Duration::from_secs(3);
/// How long the test waits for a revocation, to say how far off the bound it is.
const REVOKE_LIMIT: Duration = Duration::from_secs(7);
/// Requests in flight at once (the rounds' requests are all sent together, this many at a time).
const IN_FLIGHT: usize = 16;
/// Roles none of which inherits another (a header names exactly the granted ones); the first
/// opens the route the test requests, `/console/customers/<id>`. Admin `i` holds the roles of
/// the bits of `i`: forty distinct role sets, half of them allowed.
const ROLES: [&str; 6] = [
    "console-audit-user",
    "console-user",
    "console-billing-read",
    "console-billing-write",
    "console-flag-admin",
    "console-env-admin",
];

struct Admin {
    id: String,
    roles: Vec<&'static str>,
    allowed: bool,
}

impl Admin {
    fn roles_header(&self) -> String {
        let mut roles = self.roles.clone();
        roles.sort();
        roles.join(",")
    }
}

async fn admins(db: &TestDb) -> (Vec<Admin>, Vec<String>) {
    let mut admins = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..ADMINS {
        let roles: Vec<&'static str> = ROLES
            .iter()
            .enumerate()
            .filter(|(bit, _)| i & (1 << bit) != 0)
            .map(|(_, r)| *r)
            .collect();
        let (id, token) = db.admin_with_roles(&roles).await;
        admins.push(Admin {
            id,
            allowed: roles.contains(&ROLES[0]),
            roles,
        });
        tokens.push(token);
    }
    (admins, tokens)
}

/// One request of a round and its answer.
struct Sent {
    gateway: usize,
    admin: usize,
    path: String,
    answer: std::io::Result<Resp>,
}

/// Every admin's session sent `REPEATS` times to every gateway, [`IN_FLIGHT`] at a time.
async fn round(gws: &[Gateway], tokens: &[String], round: usize) -> Vec<Sent> {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    // Interleaved: every gateway sees each session at about the same time.
    for rep in 0..REPEATS {
        for (a, token) in tokens.iter().enumerate() {
            for (g, gw) in gws.iter().enumerate() {
                let (addr, token, slots) = (gw.addr, token.clone(), slots.clone());
                let path = format!("/console/customers/r{round}-g{g}-a{a}-{rep}");
                tasks.push(tokio::spawn(async move {
                    let _slot = slots.acquire().await.unwrap();
                    let answer = get_at(addr, &path, Some(&token)).await;
                    Sent {
                        gateway: g,
                        admin: a,
                        path,
                        answer,
                    }
                }));
            }
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Runs the whole load against four gateways whose database URL goes through PgBouncer in
/// `mode`; returns every way the gateways fell short, and prints what it measured.
async fn through_pgbouncer(mode: PoolMode, server_connections: u32) -> Vec<String> {
    let started = Instant::now();
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let bouncer = PgBouncer::start(&db.url, mode, server_connections).await;
    let mut gws = Vec::new();
    for g in 0..GATEWAYS {
        let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--cache-ttl")
            .arg("60");
        // Half the gateways LISTEN on a direct connection, as docs/deploy/pgbouncer.md says to
        // configure them; the other half have only the pooler (notifications are lost in it,
        // and the feed's poll must apply a revocation within the bound all the same).
        if g % 2 == 0 {
            opts = opts.arg("--direct-database-url").arg(&db.url);
        }
        opts.database_url = bouncer.url(&db);
        // Readiness is asserted below, with the rest.
        opts.wait_ready = false;
        gws.push(Gateway::start(opts).await);
    }
    let mut problems: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (g, gw) in gws.iter().enumerate() {
        loop {
            let r = gw.admin_get("/readyz").await;
            if r.status == 200 {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!(
                    "gateway {g}: /readyz {} 10 s after start: {}",
                    r.status,
                    r.body_str().trim()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let (admins, first_tokens) = admins(&db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readyz = sample_readyz(gws.iter().map(|g| g.admin).collect(), stop.clone());

    // Uncached lookups: a new session for every admin each round, every gateway seeing it for
    // the first time; from the second round on, every cache is also evicted (a statement on
    // rbac_groups is a catalogue change for the feed) while the round runs.
    let mut sent = Vec::new();
    for r in 0..ROUNDS {
        let tokens = if r == 0 {
            first_tokens.clone()
        } else {
            let mut t = Vec::new();
            for a in &admins {
                t.push(db.session(&a.id).await);
            }
            t
        };
        let (answers, _) = tokio::join!(round(&gws, &tokens, r), async {
            if r > 0 {
                sqlx::query("UPDATE rbac_groups SET name = name WHERE false")
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
        });
        sent.extend(answers);
    }

    let seen: HashMap<String, Seen> = up
        .requests()
        .into_iter()
        .map(|s| (s.target.clone(), s))
        .collect();
    let mut unavailable = vec![0usize; GATEWAYS];
    let mut failed = Vec::new();
    let mut wrong = Vec::new();
    // Request id of every 403 and the admin its row must name.
    let mut denials: HashMap<String, usize> = HashMap::new();
    for s in &sent {
        let admin = &admins[s.admin];
        let resp = match &s.answer {
            Ok(r) => r,
            Err(e) => {
                failed.push(format!("gateway {} {}: {e}", s.gateway, s.path));
                continue;
            }
        };
        match (resp.status, admin.allowed) {
            (503, _) => unavailable[s.gateway] += 1,
            (200, true) => match seen.get(&s.path) {
                None => wrong.push(format!("{}: 200, but Console never saw it", s.path)),
                Some(req) => {
                    let id = req.header("x-rbac-admin-id");
                    let roles: HashSet<&str> = req
                        .header("x-rbac-roles")
                        .unwrap_or("")
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .collect();
                    let want: HashSet<&str> = admin.roles.iter().copied().collect();
                    if id != Some(admin.id.as_str()) || roles != want {
                        wrong.push(format!(
                            "{}: forwarded as admin {id:?} with roles {:?}; the session is admin {}'s, roles {}",
                            s.path,
                            req.header("x-rbac-roles"),
                            admin.id,
                            admin.roles_header()
                        ));
                    }
                }
            },
            (403, false) => {
                denials.insert(resp.request_id(), s.admin);
            }
            (403, true) => {
                wrong.push(format!(
                    "{}: 403 for admin {} who holds {} (request {})",
                    s.path,
                    admin.id,
                    admin.roles_header(),
                    resp.request_id()
                ));
                denials.insert(resp.request_id(), s.admin);
            }
            (200, false) => wrong.push(format!(
                "{}: 200 for admin {} who holds only {:?}; forwarded as {:?}",
                s.path,
                admin.id,
                admin.roles_header(),
                seen.get(&s.path).and_then(|r| r.header("x-rbac-admin-id"))
            )),
            (status, _) => wrong.push(format!("{}: {status}", s.path)),
        }
    }
    let answered_403 = denials.len();

    // Every 403's row, naming the admin whose session it was.
    let ids: Vec<String> = denials.keys().cloned().collect();
    let all_stored = poll_until(Duration::from_secs(10), || async {
        let rows = db.denied_rows(&ids).await;
        let stored: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
        let all = stored.len() == ids.len();
        all.then_some(rows)
    })
    .await;
    // What is stored when the time ran out, for the counts below.
    let rows = match all_stored {
        Some(rows) => rows,
        None => db.denied_rows(&ids).await,
    };
    let mut stored: HashMap<String, Vec<Option<String>>> = HashMap::new();
    for (rid, admin) in rows {
        stored.entry(rid).or_default().push(admin);
    }
    let mut missing = 0;
    for (rid, a) in &denials {
        match stored.get(rid) {
            None => missing += 1,
            Some(named) if named.len() != 1 || named[0].as_deref() != Some(&admins[*a].id) => wrong
                .push(format!(
                    "the row of 403 {rid} names {named:?}; the session is admin {}'s",
                    admins[*a].id
                )),
            Some(_) => {}
        }
    }

    // Revocations: sessions every gateway has cached, revoked one after the other; each
    // measured from its commit until every gateway sends it to the login page.
    let mut cached = Vec::new();
    for (n, admin) in admins
        .iter()
        .filter(|a| a.allowed)
        .take(REVOCATIONS)
        .enumerate()
    {
        let token = db.session(&admin.id).await;
        let path = format!("/console/customers/revoke-{n}");
        let primed = when_each(&gws, &path, &token, 200, Instant::now(), PRIME_LIMIT).await;
        if primed.iter().all(Option::is_some) {
            cached.push((token, path));
        } else {
            problems.push(format!(
                "revocation {n}: the session was not allowed by every gateway within {PRIME_LIMIT:?}: {primed:?}"
            ));
        }
    }
    let mut committed = Vec::new();
    for (token, _) in &cached {
        db.revoke_session(token).await;
        committed.push(Instant::now());
    }
    // Per session and gateway: how long after the commit it was refused (None: not within
    // REVOKE_LIMIT).
    let mut revocations = vec![vec![None::<Duration>; GATEWAYS]; cached.len()];
    let polling = Instant::now();
    while revocations.iter().flatten().any(Option::is_none) && polling.elapsed() < REVOKE_LIMIT {
        for (n, (token, path)) in cached.iter().enumerate() {
            for (g, gw) in gws.iter().enumerate() {
                if revocations[n][g].is_none() && gw.status(path, Some(token)).await == 302 {
                    revocations[n][g] = Some(committed[n].elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let samples = readyz.await.unwrap();

    let refused: Vec<Duration> = revocations.iter().flatten().flatten().copied().collect();
    let worst = if refused.len() == cached.len() * GATEWAYS {
        format!("{:?}", refused.iter().max())
    } else {
        format!(
            "over {REVOKE_LIMIT:?} ({} of {} refused in time)",
            refused.len(),
            cached.len() * GATEWAYS
        )
    };
    println!(
        "pgbouncer {mode:?}: {} requests, 503 per gateway {unavailable:?}, {} wrong, {} of {answered_403} 403s without their row, \
         revocation worst {worst} ({revocations:?}), /readyz non-200 {} of {}, {:.1} s",
        sent.len(),
        wrong.len(),
        missing,
        samples.iter().filter(|s| s.1 != Ok(200)).count(),
        samples.len(),
        started.elapsed().as_secs_f64()
    );

    if !failed.is_empty() {
        problems.push(format!(
            "{} requests failed, e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        ));
    }
    if unavailable.iter().any(|n| *n > 0) {
        problems.push(format!(
            "503s (per gateway) {unavailable:?} of {} requests",
            sent.len()
        ));
    }
    if !wrong.is_empty() {
        problems.push(format!(
            "{} answers for the wrong identity, e.g.:\n    {}",
            wrong.len(),
            wrong[..wrong.len().min(8)].join("\n    ")
        ));
    }
    if missing > 0 {
        problems.push(format!(
            "{missing} of {answered_403} 403s without their access_denied row 10 s later"
        ));
    }
    for (n, took) in revocations.iter().enumerate() {
        if took.iter().any(|t| t.is_none_or(|t| t >= REVOCATION_BOUND)) {
            problems.push(format!(
                "revoked session {n} refused after (per gateway) {took:?} from the commit (bound {REVOCATION_BOUND:?}; None: not within {REVOKE_LIMIT:?})"
            ));
        }
    }
    let not_ready: Vec<_> = samples.iter().filter(|s| s.1 != Ok(200)).collect();
    if !not_ready.is_empty() {
        problems.push(format!(
            "/readyz not 200 in {} of {} samples, e.g. gateway {} {:?}: {}",
            not_ready.len(),
            samples.len(),
            not_ready[0].0,
            not_ready[0].1,
            not_ready[0].2.trim()
        ));
    }
    for (g, gw) in gws.iter().enumerate() {
        // Only a gateway with a session of its own LISTENs: the direct URL's, and all of them
        // when the pooler hands out sessions. A LISTEN left on a pooled server connection
        // breaks other clients' statements (the complaints below would name them too).
        let log = gw.log();
        let listened = log.contains("\"change feed: listening\"");
        let refused = log.contains("served by a transaction pooler");
        let sessions = g % 2 == 0 || mode == PoolMode::Session;
        if listened != sessions || refused == sessions {
            problems.push(format!(
                "gateway {g} ({}) {} LISTEN and {} it was behind a transaction pooler",
                if g % 2 == 0 {
                    "with a direct URL"
                } else {
                    "through the pooler only"
                },
                if listened { "did" } else { "did not" },
                if refused { "said" } else { "did not say" },
            ));
        }
        let lines = database_complaints(&log);
        if !lines.is_empty() {
            problems.push(format!(
                "gateway {g} logged {} warnings or errors, e.g.:\n    {}",
                lines.len(),
                lines[..lines.len().min(4)].join("\n    ")
            ));
        }
    }
    if !problems.is_empty() {
        let log = bouncer.log();
        let lines: Vec<&str> = log.lines().collect();
        problems.push(format!(
            "(pgbouncer's log ends:\n    {})",
            lines[lines.len().saturating_sub(5)..].join("\n    ")
        ));
    }
    problems
}

#[tokio::test]
async fn pgbouncer_transaction_pooling_never_confuses_identities() {
    let _alone = timed_alone().await;
    // Four server connections for four gateways (each would hold about ten if direct).
    let problems = through_pgbouncer(PoolMode::Transaction, 4).await;
    assert!(
        problems.is_empty(),
        "behind PgBouncer in transaction mode:\n- {}",
        problems.join("\n- ")
    );
}

#[tokio::test]
async fn pgbouncer_session_pooling_control() {
    let _alone = timed_alone().await;
    // The same load and checks in session mode, one server connection per client connection
    // (enough for every gateway's pool, listener, sweeper and probes): the harness itself
    // passes, so what fails in transaction mode is the gateway's.
    let problems = through_pgbouncer(PoolMode::Session, 60).await;
    assert!(
        problems.is_empty(),
        "behind PgBouncer in session mode:\n- {}",
        problems.join("\n- ")
    );
}

/// A pooler the probe did not see (issue 51): two gateways told their database URL has sessions
/// (`--db-statements named`) when it is PgBouncer in transaction mode, two server connections
/// shared by both. A named statement then meets a server connection another client prepared
/// the same name on (42P05) or one it was never prepared on (26000): the gateway says so once,
/// answers that request from a simple query, and sends simple queries from then on. Every
/// answer stays right, no lookup is counted twice or as an error.
#[tokio::test]
async fn a_named_statement_behind_a_transaction_pooler_turns_the_gateway_to_simple_queries() {
    const WARNING: &str = "lookups run as one simple query each from now on";
    let _alone = timed_alone().await;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let bouncer = PgBouncer::start(&db.url, PoolMode::Transaction, 2).await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--db-statements")
            .arg("named")
            .arg("--direct-database-url")
            .arg(&db.url);
        opts.database_url = bouncer.url(&db);
        gws.push(Gateway::start(opts).await);
    }
    settle(&[&gws[0], &gws[1]]).await;
    let warned = |gw: &Gateway| gw.log().matches(WARNING).count();
    let mut sent = [0u32; 2];
    let mut after = 0;
    for i in 0..60 {
        let g = i % 2;
        let allowed = i % 3 != 0;
        let roles: &[&str] = if allowed {
            &["console-audit-user"]
        } else {
            &["console-user"]
        };
        let (admin, token) = db.admin_with_roles(roles).await;
        let r = gws[g].get("/console/customers/1", Some(&token)).await;
        sent[g] += 1;
        let want = if allowed { 200 } else { 403 };
        assert_eq!(r.status, want, "request {i}, gateway {g}, admin {admin}");
        if !allowed {
            // Durable before the 403: in the database, or in the spool and replayed from it.
            let id = r.request_id();
            eventually(
                Duration::from_secs(20),
                &format!("request {i}: exactly one row for one denial"),
                || async { db.audit_rows(&id).await.len() == 1 },
            )
            .await;
        }
        if warned(&gws[0]) + warned(&gws[1]) > 0 {
            after += 1;
            if after > 10 {
                break;
            }
        }
    }
    assert!(
        after > 0,
        "no named statement failed behind the pooler in 60 cold requests"
    );
    for (g, gw) in gws.iter().enumerate() {
        assert!(
            warned(gw) <= 1,
            "gateway {g} warned more than once:\n{}",
            gw.log()
        );
        assert_eq!(
            gw.metric("rbac_gateway_db_queries_total").await,
            f64::from(sent[g]),
            "gateway {g}: one lookup counted per cold request"
        );
        assert_eq!(gw.metric("rbac_gateway_db_errors_total").await, 0.0);
    }
}

/// The cockpit's pool behind PgBouncer set up as the README says (`ignore_startup_parameters =
/// options`, issue 66): the pooler accepts the startup option `default_transaction_read_only=on`
/// and drops it, so the pool's transactions must say `READ ONLY` themselves. A write sent by
/// each of the pool's ways to run a statement fails with SQLSTATE 25006 and leaves nothing.
#[tokio::test]
async fn the_cockpits_pool_is_read_only_behind_pgbouncer() {
    use rbac_gateway::stores::db::Db;
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start_ignoring_options(&db.url, PoolMode::Transaction, 2).await;
    let ro = Db::connect_read_only(&bouncer.url(&db), 1, Duration::from_secs(10)).unwrap();
    let show = |name: &'static str| {
        let ro = ro.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .persistent(false)
                .fetch_one(&ro)
                .await
                .unwrap()
        }
    };
    // The scenario: the startup option never reached PostgreSQL.
    assert_eq!(show("default_transaction_read_only").await, "off");
    let code = |e: sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("not a database error: {e}"))
    };
    // Each a write PostgreSQL would commit in a transaction that may write.
    let insert =
        |n: u8| format!("INSERT INTO rbac_groups (id, name) VALUES ('w{n}', 'written {n}')");
    let executor = sqlx::query(&insert(1))
        .persistent(false)
        .execute(&ro)
        .await
        .expect_err("a write through the pool as an executor");
    assert_eq!(code(executor), "25006", "read_only_sql_transaction");
    let simple = ro
        .one_round_trip(&insert(2))
        .await
        .expect_err("a write as one simple query");
    assert_eq!(code(simple), "25006", "read_only_sql_transaction");
    let mut tx = ro.begin().await.unwrap();
    let in_tx = sqlx::query(&insert(3))
        .persistent(false)
        .execute(&mut *tx)
        .await
        .expect_err("a write in a transaction of Db::begin");
    assert_eq!(code(in_tx), "25006", "read_only_sql_transaction");
    drop(tx);
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rbac_groups WHERE name LIKE 'written%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(written, 0, "a write through the cockpit's pool committed");
    assert_eq!(show("transaction_read_only").await, "on");
}

/// `--lookup-database-url` through a transaction-pooling PgBouncer that ignores no startup
/// parameter (its default): the lookup pool sends none, so it connects and a cold lookup is
/// answered, and each of its reads is read-only all the same (the transaction says so itself).
/// With the cockpit's pool's startup option, PgBouncer refused every connection of it.
#[tokio::test]
async fn the_lookup_pool_goes_through_a_default_pgbouncer_read_only() {
    use rbac_gateway::stores::db::Db;
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let bouncer = PgBouncer::start(&db.url, PoolMode::Transaction, 2).await;
    let url = bouncer.url(&db);
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--lookup-database-url")
            .arg(&url),
    )
    .await;
    let (_, token) = db.admin_with_roles(&["console-manager"]).await;
    assert_eq!(gw.status("/ops", Some(&token)).await, 200, "{}", gw.log());
    // The cold lookup went through the lookup pool, which /metrics counts apart.
    let open = gw
        .metric("rbac_gateway_lookup_pool_connections{state=\"open\"}")
        .await;
    assert!(open >= 1.0, "the lookup pool's open connections: {open}");
    let ro = Db::connect_lookups(&url, 1, Duration::from_secs(10)).unwrap();
    let e = ro
        .one_round_trip("INSERT INTO rbac_groups (id, name) VALUES ('w', 'written')")
        .await
        .expect_err("a write through the lookup pool");
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("25006"),
        "{e}"
    );
}
