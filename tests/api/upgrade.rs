//! Upgrades that never stall Console (issue 71, docs/design/migrations.md): `migrate` run while
//! Console writes, as a Heroku release phase runs it beside the previous release. No Console
//! write waits for a lock `migrate` holds or queues for longer than the bound, and none is
//! killed by a deadlock. Not timed: Console's own `lock_timeout` turns a wait past the bound
//! into an error, and the test counts errors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;

/// How long a Console write may wait for a lock while `migrate` runs: its own `lock_timeout`.
/// `migrate` waits at most 200 ms for a lock (`stores::migrations::MIGRATE_LOCK_TIMEOUT`) and
/// holds none while it builds an index; the rest is slack for a shared CI machine.
const CONSOLE_LOCK_TIMEOUT: &str = "600ms";

/// Console's write mix on the grants tables, as its ticket grant does it (the grant, then its
/// audit row, in one transaction: the other order from migration 0016's), until `stop`; each
/// transaction with `lock_timeout`. Counts commits and errors (with the first few messages).
async fn console_writes(
    db: &TestDb,
    admin: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let pool = db.pool.clone();
    while !stop.load(Ordering::Relaxed) {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("SET LOCAL lock_timeout = '{CONSOLE_LOCK_TIMEOUT}'"))
                .execute(&mut *tx)
                .await?;
            let id = uuid::Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by) \
                 SELECT $1, $2, id, 'T-load', 7, 'console' FROM rbac_roles WHERE name = 'console-user'",
            )
            .bind(&id)
            .bind(&admin)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, granted_by) \
                 VALUES ($1, 'ticket_grant', $2, 'T-load', 7, 'console')",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&admin)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => errors.lock().unwrap().push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `rbac-gateway migrate` on `db` while four Console writers write the grants tables (and,
/// with `long`, one Console transaction holds a grants-audit write open until `migrate` is seen
/// waiting behind it): `migrate` exits 0, Console committed writes meanwhile and none failed.
async fn migrate_under_writes(db: &TestDb, long: bool) {
    let admin = db.admin("writer@corp.example").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (db, admin, stop, done, errors) = (
            TestDb {
                url: db.url.clone(),
                pool: db.pool.clone(),
            },
            admin.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        writers.push(tokio::spawn(async move {
            console_writes(&db, admin, stop, done, errors).await
        }));
    }
    let holder = long.then(|| {
        let (pool, admin) = (db.pool.clone(), admin.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by) \
                 VALUES ($1, 'grant', $2, 'console')",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&admin)
            .execute(&mut *tx)
            .await
            .unwrap();
            // Held until `migrate` is seen waiting behind it (its concurrent index build waits
            // for the writers in progress), then committed.
            eventually(
                Duration::from_secs(60),
                "migrate waiting behind Console's open write",
                || {
                    let pool = pool.clone();
                    async move {
                        sqlx::query_scalar::<_, bool>(
                            "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                             WHERE NOT l.granted AND a.application_name = 'rbac-gateway' \
                               AND a.datname = current_database())",
                        )
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                    }
                },
            )
            .await;
            tx.commit().await.unwrap();
        })
    });
    eventually(
        Duration::from_secs(10),
        "Console's writes under way",
        || async { done.load(Ordering::Relaxed) >= 20 },
    )
    .await;
    let before = done.load(Ordering::Relaxed);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .args(["migrate", "--database-url", &db.url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("migrate ended within 180 s")
        .unwrap();
    let (code, text) = code_and_output(&out);
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    if let Some(h) = holder {
        h.await.unwrap();
    }
    assert_eq!(code, Some(0), "migrate: {text}");
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} of Console's writes failed while migrate ran (a lock held or queued for past {CONSOLE_LOCK_TIMEOUT}, or a deadlock): {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(during > 0, "no Console write committed while migrate ran");
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let shipped = rbac_gateway::stores::migrations::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    assert_eq!(latest, shipped);
}

/// The indexes migration 0016 builds on Console's grants tables.
const INDEXES_0016: [&str; 4] = [
    "idx_rga_ticket",
    "idx_rga_expires",
    "idx_rtg_ticket",
    "idx_rtg_customer",
];

/// How many of `names` are indexes on `db` whose build ended valid.
async fn valid_indexes(db: &TestDb, names: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = ANY($1) AND i.indisvalid",
    )
    .bind(names)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A database the previous release left at migration 0015, its grants tables a year's size
/// (1,000,000 audit rows, 50,000 ticket grants): `migrate` applies 0016 onwards while Console
/// writes both tables (and one of its transactions holds a write open until migrate waits for it). 0016's indexes
/// were built inside its transaction, holding a lock that made every Console write to both
/// tables wait for the build (and deadlock with its ticket grants); now they are built
/// concurrently first, and every lock is waited for 200 ms at most, then tried again.
#[tokio::test]
async fn migrate_from_the_previous_release_under_consoles_writes_stalls_none() {
    let _alone = timed_alone().await;
    let db = TestDb::at_version(15).await;
    let admin = db.admin("year@corp.example").await;
    sqlx::raw_sql(&format!(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, ticket_id, customer_id, granted_by, expires_at_utc) \
         SELECT 'old-' || i, 'ticket_grant', '{admin}', 'T-' || (i % 20000), i % 500, 'console', now() + (i % 90) * interval '1 day' \
           FROM generate_series(1, 1000000) i; \
         INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by) \
         SELECT 'old-' || i, '{admin}', r.id, 'T-' || i, i % 500, 'console' \
           FROM generate_series(1, 50000) i, rbac_roles r WHERE r.name = 'console-user'; \
         ANALYZE rbac_grants_audit; ANALYZE rbac_ticket_grants;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    migrate_under_writes(&db, true).await;
    assert_eq!(valid_indexes(&db, &INDEXES_0016).await, 4, "0016's indexes");
}

/// A first install in front of a Console in production: Console's tables as migration 0001
/// declares them, without the indexes 0001 and 0016 name, its grants audit two years' size
/// (2,000,000 rows: an index on it takes longer to build than Console's writes wait). `migrate` from an empty database while Console writes (one of its
/// transactions holding a write open until migrate waits for it): 0001's indexes were built
/// inside its transaction, holding a lock that made every Console write to the table wait for
/// the build; now they are built concurrently first (`before_migrations`), as 0016's are.
#[tokio::test]
async fn a_first_install_in_front_of_consoles_tables_stalls_none_of_its_writes() {
    let _alone = timed_alone().await;
    let db = TestDb::at_version(0).await;
    let schema = std::fs::read_to_string(root().join("migrations/0001_schema.sql")).unwrap();
    let (console, _) = schema
        .split_once("CREATE TABLE IF NOT EXISTS access_audit_events")
        .unwrap();
    let console: String = console
        .lines()
        .filter(|l| !l.starts_with("CREATE INDEX"))
        .collect::<Vec<_>>()
        .join("\n");
    sqlx::raw_sql(&console).execute(&db.pool).await.unwrap();
    let admin = db.admin("year@corp.example").await;
    sqlx::raw_sql(&format!(
        "INSERT INTO rbac_grants_audit (id, event_type, target_user_id, granted_by, created_at_utc) \
         SELECT 'old-' || i, 'grant', '{admin}', 'console', now() - i * interval '1 second' \
           FROM generate_series(1, 2000000) i; \
         INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc) \
         SELECT 'old-' || i, '{admin}', md5(i::text), now() + interval '1 hour' FROM generate_series(1, 100000) i; \
         ANALYZE rbac_grants_audit; ANALYZE admin_sessions;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    migrate_under_writes(&db, true).await;
    let on_consoles_tables = [
        "idx_admin_sessions_admin",
        "idx_rga_target",
        "idx_rtg_user",
        "idx_rbg_user",
    ];
    assert_eq!(
        valid_indexes(&db, &on_consoles_tables).await + valid_indexes(&db, &INDEXES_0016).await,
        8,
        "0001's and 0016's indexes"
    );
}

/// A second `migrate` while another holds the migration lock (a release phase run twice, or a
/// rerun while a killed one's server session still builds): it waits, says whom for, and
/// migrates once the lock is let go (before, it failed after 200 ms with "canceling statement
/// due to lock timeout").
#[tokio::test]
async fn a_second_migrate_waits_for_the_first_and_says_so() {
    let db = TestDb::at_version(0).await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET application_name = 'the first migrate'; SELECT pg_advisory_lock(7285402519317433201)",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    // The lock is held until the second `migrate` has said whom it waits for: its own log line,
    // not the server's view of its session (sqlx parses a statement before it runs it, and the
    // session reads as idle with the lookup's text in between).
    let mut second = Migrating::start(&db.url);
    second.said("is running; waiting for it").await;
    sqlx::raw_sql("SELECT pg_advisory_unlock(7285402519317433201)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waited = second.text.clone();
    let (code, text) = second.end().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        waited.contains("another `rbac-gateway migrate` (pid ")
            && waited.contains("(the first migrate, idle since"),
        "{text}"
    );
    assert!(text.contains("migrations applied"), "{text}");
}

/// A database that has run every migration: `migrate` under Console's writes is a no-op that
/// stalls nothing.
#[tokio::test]
async fn migrate_again_under_consoles_writes_is_a_no_op() {
    let db = TestDb::new().await;
    migrate_under_writes(&db, false).await;
}

/// A schema a newer release migrated (a rollback, or Heroku's release phase of the release
/// before): `migrate` finds every migration of its own applied, says so, names the newer ones
/// and changes nothing. Before, sqlx refused ("previously applied but is missing") and the
/// rollback stopped. Where one of its own is not applied, it refuses and says which.
#[tokio::test]
async fn migrate_on_a_schema_a_newer_release_migrated_has_nothing_to_do() {
    let db = TestDb::new().await;
    record_a_newer_release(&db).await;
    let migrate = || {
        code_and_output(
            &crate::cli::bin()
                .args(["migrate", "--database-url", &db.url])
                .output()
                .unwrap(),
        )
    };
    let (code, said) = migrate();
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("every one of this binary's is; the schema also holds migration(s) 9999 of a newer release"),
        "{said}"
    );
    let latest: i64 =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE version < 9999")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(latest)
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, said) = migrate();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("of a newer release, and this binary's are not all applied")
            && said.contains(&format!("migration(s) {latest:04} not applied")),
        "{said}"
    );
}

/// Where `migrate` gives up, it names the open transactions a lock it waited for is likely held
/// by: one of a role whose activity the migrating role may not see is named too (its start and
/// state hidden), by the lock every transaction holds on its own id. Before, a non-superuser's
/// `migrate` said "none now" while Console's transaction held the lock.
#[tokio::test]
async fn migrate_names_a_transaction_it_may_not_see() {
    let db = TestDb::new().await;
    let (_, name) = db.url.rsplit_once('/').unwrap();
    let user = format!("{}_unseeing", name.trim_start_matches("rbacgw_"));
    sqlx::raw_sql(&format!("CREATE ROLE \"{user}\" LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    use sqlx::Connection;
    let mut unseeing = sqlx::PgConnection::connect(&db.url_as(&user))
        .await
        .unwrap();
    let hidden: Option<String> =
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut unseeing)
            .await
            .unwrap();
    assert_eq!(
        hidden, None,
        "the role sees the transaction: nothing to test"
    );
    let named = rbac_gateway::stores::migrations::oldest_transactions(&mut unseeing)
        .await
        .unwrap();
    assert!(
        named.contains(&format!(
            "pid {pid} (role postgres: its transaction is not this role's to see)"
        )),
        "{named:?}"
    );
    holder.rollback().await.unwrap();
}

/// Records migration 9999 as applied by a newer release.
async fn record_a_newer_release(db: &TestDb) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'a newer release', true, '\\x00', 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Erasure by index (I-6, migration 0025): deleting an admin finds the rows that name it in
/// `rbac_gateway_group_changes` and `rbac_gateway_alerts` by their erasure keys' index, not by
/// reading every row (before: a sequential scan of each table per admin, 1.3-1.7 s at 200,000
/// rows). Not timed: PostgreSQL's own counters say no sequential scan of either table ran,
/// with 200,000 rows of other admins in each, and the admin's email is gone from both.
/// `scripts/bench/erasure.sh` measures the time.
#[tokio::test]
async fn the_erasure_finds_its_rows_by_index_without_reading_the_tables() {
    let db = TestDb::new().await;
    let email = "leaving@corp.example";
    let admin = db.admin(email).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('rbac_gateway.actor', $1, true)")
        .bind(email)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rbac_user_groups (user_id, group_id, granted_by) \
         SELECT $1, id, 'test' FROM rbac_groups WHERE name = 'break-glass'",
    )
    .bind(&admin)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    db.break_glass(&admin, 600.0).await;
    sweep_once(&db.url, &[]).await;
    sqlx::raw_sql(
        "INSERT INTO rbac_gateway_group_changes (what, table_name, operation, actor, erasure_keys) \
         SELECT 'admin other-' || i || '@corp.example (other-' || i || ') made a permanent member of the break-glass group', \
                'rbac_user_groups', 'INSERT', 'ops-' || (i % 50) || '@corp.example', \
                ARRAY['other-' || i, 'ops-' || (i % 50) || '@corp.example'] \
           FROM generate_series(1, 200000) i; \
         INSERT INTO rbac_gateway_alerts (key, text, erasure_keys) \
         SELECT 'composition:other-' || i, 'Break-glass group changed: admin other-' || i || '@corp.example (other-' || i \
                || ') made a permanent member of the break-glass group. By database user console, actor ops@corp.example, from -', \
                ARRAY['other-' || i, 'ops@corp.example'] \
           FROM generate_series(1, 200000) i;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // `migrate` builds the erasure's indexes (concurrently, after the migrations).
    let out = crate::cli::bin()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    let (code, text) = code_and_output(&out);
    assert_eq!(code, Some(0), "{text}");
    sqlx::raw_sql("ANALYZE rbac_gateway_group_changes; ANALYZE rbac_gateway_alerts")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let scans = "SELECT coalesce(sum(seq_scan), 0)::int8 FROM pg_stat_user_tables \
                 WHERE relname IN ('rbac_gateway_group_changes', 'rbac_gateway_alerts')";
    let before: i64 = sqlx::query_scalar(scans)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM admins WHERE id = $1")
        .bind(&admin)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar(scans)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        after - before,
        0,
        "the erasure read the gateway's tables from end to end"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM rbac_gateway_group_changes \
                  WHERE strpos(what, $1) > 0 OR actor = $1 OR lower($1) = ANY (erasure_keys)) \
              + (SELECT count(*) FROM rbac_gateway_alerts \
                  WHERE strpos(text, $1) > 0 OR lower($1) = ANY (erasure_keys))",
    )
    .bind(email)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        left, 0,
        "the email survived the erasure (in the text, the actor or the erasure keys)"
    );
}

/// `/readyz` answers `status` with a body holding `said`, within 10 s: each change below is
/// read by the next probe, and a probe that cannot read the schema answers from its last read.
async fn readyz_until(gw: &Gateway, status: u16, said: &str) {
    eventually_explained(
        Duration::from_secs(10),
        &format!("/readyz {status} saying {said:?}"),
        || async {
            let r = gw.admin_get("/readyz").await;
            r.status == status && r.body_str().contains(said)
        },
        || async { gw.admin_get("/readyz").await.body_str().to_string() },
    )
    .await;
}

/// A binary newer than its schema (rolled out before `migrate` ran): `/readyz` answers 503
/// naming the migrations it lacks, even while the schema cannot be read (it answers from the
/// last read), the start-up log and `check --database-url` say so too, and once `migrate` has
/// run it is ready. A migration recorded as failed, or applied with another text, is not ready
/// either. A schema a newer release migrated is named, the status unchanged: an old process of
/// a rolling upgrade serves on.
#[tokio::test]
async fn a_binary_newer_than_its_schema_is_not_ready_until_migrated() {
    let db = TestDb::at_version(33).await;
    let up = Upstream::start().await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.wait_ready = false;
    let gw = Gateway::start(opts).await;
    let behind = "database schema: this binary's migration(s) 0034, 0035, 0036, 0037, 0038 and 6 more not applied";
    readyz_until(&gw, 503, behind).await;
    // Said by the start-up task, which may write after /readyz first answers.
    eventually(
        Duration::from_secs(10),
        "the start-up log naming the migrations not applied",
        || async {
            gw.log().contains(
                "run `rbac-gateway migrate` with this binary: /readyz answers 503 until then",
            )
        },
    )
    .await;

    // The schema's table locked past the probe's limit (a slow database): still 503, from the
    // last read, and the failed read named.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let r = gw.admin_get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.body_str());
    for said in [
        "0034, 0035, 0036, 0037, 0038 and 6 more not applied (its statements need them): run `rbac-gateway migrate` with this binary (as last read)",
        "database schema: its migrations were not read",
    ] {
        assert!(r.body_str().contains(said), "{said:?}: {}", r.body_str());
    }
    hold.rollback().await.unwrap();

    let check = || crate::planted::check(&db);
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("migration(s) 0034, 0035, 0036, 0037, 0038 and 6 more not applied"),
        "{out}"
    );

    // The alert pass looks at the gateway's triggers only on a schema that is this binary's
    // (another release's has other triggers): a trigger disabled now is not alerted before the
    // schema is migrated; `migrate` makes it again, and one disabled after is alerted.
    sqlx::query("ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change")
        .execute(&db.pool)
        .await
        .unwrap();
    let passes = || gw.metric("rbac_gateway_alert_passes_total{result=\"done\"}");
    let from = passes().await;
    eventually(Duration::from_secs(10), "three alert passes", || async {
        passes().await >= from + 3.0
    })
    .await;
    let silent = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT text FROM rbac_gateway_alerts WHERE key LIKE 'silent\\_triggers:%'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(silent().await, Vec::<String>::new());

    let migrated = crate::cli::bin()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(
        String::from_utf8_lossy(&migrated.stderr).contains("are made again"),
        "{migrated:?}"
    );
    readyz_until(&gw, 200, "ready mapping=").await;
    sqlx::query("ALTER TABLE admins DISABLE TRIGGER rbac_gateway_change")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the disabled trigger alerted",
        || async {
            silent()
                .await
                .iter()
                .any(|text| text.contains("rbac_gateway_change on admins"))
        },
    )
    .await;
    sqlx::query("ALTER TABLE admins ENABLE TRIGGER rbac_gateway_change")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("database schema"), "{out}");

    // A migration recorded as failed, or applied with another text than this binary's (another
    // build migrated): not ready, until the row is as this binary has it again.
    let ours = rbac_gateway::stores::migrations::MIGRATOR
        .iter()
        .find(|m| m.version == 35)
        .unwrap();
    for (change, said) in [
        (
            "UPDATE _sqlx_migrations SET success = false WHERE version = 35",
            "migration(s) 0035 recorded as failed",
        ),
        (
            "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 35",
            "migration(s) 0035 applied with another text than this binary's",
        ),
    ] {
        sqlx::query(change).execute(&db.pool).await.unwrap();
        readyz_until(&gw, 503, said).await;
        let (code, out) = check();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(said), "{out}");
        sqlx::query("UPDATE _sqlx_migrations SET success = true, checksum = $1 WHERE version = 35")
            .bind(&ours.checksum[..])
            .execute(&db.pool)
            .await
            .unwrap();
        readyz_until(&gw, 200, "ready mapping=").await;
    }

    // A newer release's migration: named, the status unchanged.
    record_a_newer_release(&db).await;
    let newer = "database schema: migration(s) 9999 applied by a newer release";
    readyz_until(&gw, 200, newer).await;
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("9999 applied by a newer release"), "{out}");
}

/// A gateway that loads its mapping from the database (`--mapping-source database`) on a
/// schema without its migrations: not ready for want of a mapping, and `/readyz` says the
/// schema is behind too (the start-up check, which waits for the mapping, has not run).
#[tokio::test]
async fn a_mapping_from_an_unmigrated_schema_names_the_migrations_too() {
    let db = TestDb::at_version(33).await;
    let up = Upstream::start().await;
    let opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--mapping-source")
        .arg("database");
    let starting = Gateway::start_unready(opts).await;
    eventually(
        Duration::from_secs(10),
        "/readyz naming the missing mapping and the migrations not applied",
        || async {
            matches!(starting.readyz().await, Some((503, body))
                if body.contains("no mapping loaded")
                    && body.contains("this binary's migration(s) 0034, 0035, 0036, 0037, 0038 and 6 more not applied"))
        },
    )
    .await;
}

/// Migration 0033's alert sessions given ahead of it (`stores::migrations::ahead`), outside its
/// transaction, so that its `ACCESS EXCLUSIVE` lock on `rbac_gateway_alerts` is held briefly: a
/// database at 0032 with 12,000 break-glass alerts (more than two batches), 3,000 of another
/// kind and one whose session is gone is migrated; `migrate` says it gave the 12,000 ahead, and
/// every alert holds what 0033's `UPDATE` gives (the session's admin, start, and end at most 4
/// hours after it), the others none.
#[tokio::test]
async fn migration_0033s_alert_sessions_are_given_ahead_of_it_in_batches() {
    let db = TestDb::at_version(32).await;
    sqlx::raw_sql(
        "INSERT INTO admins (id, email) SELECT 'a' || i, 'a' || i || '@x' FROM generate_series(1, 100) i; \
         INSERT INTO rbac_break_glass_sessions (id, user_id, justification, granted_by, granted_at_utc, expires_at_utc) \
           SELECT 's' || i, 'a' || (1 + i % 100), 'a justification long enough', 'a1', \
                  now() - interval '30 days' + i * interval '1 second', \
                  now() - interval '30 days' + (i % 7) * interval '1 hour' \
             FROM generate_series(1, 12000) i; \
         INSERT INTO rbac_gateway_alerts (key, text) SELECT 'break_glass:s' || i, 'alert' FROM generate_series(1, 12000) i; \
         INSERT INTO rbac_gateway_alerts (key, text) SELECT 'deploy_window:' || i, 'alert' FROM generate_series(1, 3000) i; \
         INSERT INTO rbac_gateway_alerts (key, text) VALUES ('break_glass:gone', 'alert')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, said) = crate::planted::migrate(&db);
    assert_eq!(code, Some(0), "{said}");
    let ahead = said
        .lines()
        .find(|l| l.contains("break-glass alerts given their sessions ahead of migration 0033"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(ahead.contains("12000"), "{ahead}");
    let (wrong, given, others): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM rbac_gateway_alerts a JOIN rbac_break_glass_sessions b \
                   ON a.key = 'break_glass:' || b.id \
                 WHERE a.session_user_id IS DISTINCT FROM b.user_id \
                    OR a.session_granted_at_utc IS DISTINCT FROM b.granted_at_utc \
                    OR a.session_ends_at_utc IS DISTINCT FROM least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')), \
                (SELECT count(*) FROM rbac_gateway_alerts WHERE session_user_id IS NOT NULL), \
                (SELECT count(*) FROM rbac_gateway_alerts WHERE key NOT LIKE 'break_glass:s%' AND session_user_id IS NOT NULL)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((wrong, given, others), (0, 12000, 0));
}
