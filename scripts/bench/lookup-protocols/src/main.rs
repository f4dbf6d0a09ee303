//! One operation of the gateway's, sent N times one way, on one connection, one at a time:
//!
//! - `cold`: the cold lookup of B session hashes (`BATCH_SQL`,
//!   src/stores/session_batch.rs, written in by `Lookup::render`), its rows decoded as `Found::from_row` decodes them;
//! - `audit`: the denial's INSERT of B audit rows (src/stores/audit/mod.rs, `insert_values_sql`).
//!
//! Modes (what a client sends per operation, and the round trips it waits for):
//!
//! - `named` (sqlx, `.persistent(true)`: prepared once per connection, then Bind/Execute/Sync,
//!   1 round trip; `Db::lookup` on the gateway's own sessions, which `SET` the statement timeout
//!   and `search_path` once per connection; direct only). For `audit`: arrays bound to one named
//!   statement (`unnest`).
//! - `named-values` (`audit` only): sqlx, `.persistent(true)`, the `VALUES` list of B x 14
//!   parameters as one named statement (one per batch size), each value bound (direct only).
//! - `simple` (sqlx `raw_sql`: one Query message, 1 round trip, `SET LOCAL statement_timeout`
//!   and `search_path` first in the same message, the values written in with the gateway's own
//!   `sql_text`: `Db::one_round_trip`, today's path behind a pooler, and the audit writer's in
//!   every mode).
//! - `simple-noset`: `simple` without the two `SET LOCAL`s (what they cost the server).
//! - `typed` (tokio-postgres `query_typed`: an unnamed Parse/Bind/Describe/Execute/Sync with the
//!   values bound, 1 round trip, no `SET`: a pooler-safe unnamed statement cannot share its
//!   implicit transaction with a `SET LOCAL`: `typed-tx` below). For `audit`: a `VALUES` list of
//!   B x 14 parameters.
//! - `typed-unnest` (`audit` only): `query_typed` with 14 arrays bound to one statement.
//! - `typed-tx`, `typed-unnest-tx`: the same in a transaction of their own with the `SET LOCAL`s,
//!   `BEGIN; SET LOCAL ...` and `COMMIT` as simple queries pipelined around it: 1 round trip.
//! - `copy` (`audit` only): sqlx `copy_in_raw`, `COPY ... FROM STDIN (FORMAT binary)` as one
//!   simple query, 2 round trips (CopyInResponse, then the data and CopyDone).
//!
//! Prints one tab-separated line: op, mode, batch, n, wall µs per op, this process's CPU µs per
//! op, PostgreSQL's (the postmaster and its children, /proc utime+stime) and PgBouncer's CPU µs
//! per op, around the measured loop only. Under callgrind, `--toggle-collect='*measured_loop*'`
//! counts the loop's instructions alone (connecting, seeding the rows and the warm-up excluded).
//! Writes `LOOP-START` / `LOOP-END` to stderr around the loop (for counting the sends under
//! strace).
//!
//! Usage: lookup-protocols URL OP MODE BATCH N WARMUP PG_PID PGB_PID(0: none) HASHES_FILE TAG

use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

#[allow(dead_code)]
#[path = "../../../../src/stores/sql_text.rs"]
mod sql_text;

/// `BATCH_SQL`'s text up to its arguments (src/stores/session_batch.rs); the named and typed
/// statements here keep a `::text[]` cast the gateway's no longer writes (sqlx sends the type).
const SELECT_PRINCIPALS: &str =
    "SELECT admin_id, seconds_left, roles, permissions, break_glass_seconds, \
     break_glass_until, token_sha256 FROM rbac_gateway_session_principals(";
const TIMEOUT_MS: u64 = 2000;

/// The columns the gateway writes (src/stores/audit/mod.rs).
const COLUMNS: &str =
    "id, event_type, admin_id, method, path, route, required, reason, request_id, \
                       client_ip, user_agent, created_at_utc, mapping_version, occurrences";

struct Ev {
    id: String,
    event_type: String,
    admin_id: Option<String>,
    method: String,
    path: String,
    route: Option<String>,
    required: Option<String>,
    reason: String,
    request_id: String,
    client_ip: Option<String>,
    user_agent: Option<String>,
    created_at_utc: DateTime<Utc>,
    mapping_version: Option<String>,
    occurrences: i64,
}

fn events(tag: &str, count: usize) -> Vec<Ev> {
    (0..count)
        .map(|i| Ev {
            id: format!("{tag}-{i:08}-0190a1b2-c3d4-7e5f"),
            event_type: "access_denied".into(),
            admin_id: Some("instr-norole".into()),
            method: "GET".into(),
            path: "/ops/queue?page=2".into(),
            route: Some("GET /ops/**".into()),
            required: Some("roles any of [raxx-platform-admins]".into()),
            reason: "no_matching_role".into(),
            request_id: format!("{tag}-req-{i:08}"),
            client_ip: Some("127.0.0.1".into()),
            user_agent: Some("wrk/4.2.0 (it's a \\bench\\)".into()),
            created_at_utc: Utc::now(),
            mapping_version: Some("9f2c1e0b7a6d5c4b".into()),
            occurrences: 1,
        })
        .collect()
}

/// The gateway's `settings("SET LOCAL", limit)` (src/stores/db.rs), schema `public`.
fn settings(set: &str) -> String {
    format!("{set} statement_timeout = {TIMEOUT_MS}; {set} search_path = pg_catalog, \"public\"")
}

/// `BATCH_SQL` with its values written in, as `Lookup::render` (src/stores/lookup.rs) writes it.
fn batch_sql(hashes: &[&str], requires_alert: bool) -> Result<String, sql_text::Unquotable> {
    let mut sql = String::with_capacity(200 + hashes.len() * 70);
    sql.push_str(SELECT_PRINCIPALS);
    sql.push_str("ARRAY[");
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql_text::push_text(&mut sql, h)?;
    }
    sql.push_str("]::text[], ");
    sql.push_str(sql_text::boolean(requires_alert));
    sql.push(')');
    Ok(sql)
}

/// `insert_values_sql` (src/stores/audit/mod.rs), fresh rows.
fn insert_values_sql(rows: &[Ev]) -> Result<String, sql_text::Unquotable> {
    use std::fmt::Write;
    let mut sql = String::with_capacity(256 + rows.len() * 320);
    sql.push_str("WITH ins AS (INSERT INTO access_audit_events (");
    sql.push_str(COLUMNS);
    sql.push_str(") VALUES ");
    for (i, r) in rows.iter().enumerate() {
        sql.push_str(if i == 0 { "(" } else { ",(" });
        for text in [&r.id, &r.event_type] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.admin_id.as_deref())?;
        for text in [&r.method, &r.path] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.route.as_deref())?;
        push_opt(&mut sql, r.required.as_deref())?;
        for text in [&r.reason, &r.request_id] {
            sql_text::push_text(&mut sql, text)?;
            sql.push(',');
        }
        push_opt(&mut sql, r.client_ip.as_deref())?;
        push_opt(&mut sql, r.user_agent.as_deref())?;
        sql_text::push_timestamp(&mut sql, &r.created_at_utc);
        sql.push(',');
        push_opt(&mut sql, r.mapping_version.as_deref())?;
        match r.occurrences {
            1 => sql.push_str("1)"),
            n => {
                let _ = write!(sql, "({n}))");
            }
        }
    }
    sql.push_str(" RETURNING 1) SELECT pg_catalog.count(*) FROM ins");
    Ok(sql)
}

fn push_opt(sql: &mut String, s: Option<&str>) -> Result<(), sql_text::Unquotable> {
    match s {
        None => sql.push_str("NULL"),
        Some(s) => sql_text::push_text(sql, s)?,
    }
    sql.push(',');
    Ok(())
}

/// `Found::from_row` (src/stores/session_batch.rs) and the hash (column 6), on either client's
/// rows (both have `try_get(index)`): the rows that decode to a principal.
macro_rules! decode {
    ($rows:expr) => {{
        let mut n = 0usize;
        for row in $rows {
            let _hash: String = row.try_get(6).unwrap();
            let admin: String = row.try_get(0).unwrap();
            let _left: f64 = row.try_get(1).unwrap();
            let roles: Vec<String> = row.try_get(2).unwrap();
            let perms: Vec<String> = row.try_get(3).unwrap();
            let _bg: Option<f64> = row.try_get(4).unwrap();
            let _until: Option<DateTime<Utc>> = row.try_get(5).unwrap();
            n += usize::from(!admin.is_empty() && !roles.is_empty() && !perms.is_empty());
        }
        n
    }};
}

/// [`decode!`] on sqlx's rows.
fn decode_sqlx(rows: &[sqlx::postgres::PgRow]) -> usize {
    use sqlx::Row;
    decode!(rows)
}

/// [`decode!`] on tokio-postgres's rows.
fn decode_tp(rows: &[tokio_postgres::Row]) -> usize {
    decode!(rows)
}

/// utime+stime, in clock ticks, of `pid` and (`children`) every process whose parent it is.
fn cpu_ticks(pid: u32, children: bool) -> u64 {
    let stat = |p: &str| -> Option<(u32, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // After the command: state ppid ... utime (11) stime (12), counted from state (0).
        Some((
            f[1].parse().ok()?,
            f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?,
        ))
    };
    if pid == 0 {
        return 0;
    }
    let mut t = stat(&pid.to_string()).map_or(0, |(_, t)| t);
    if children {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some((ppid, ticks)) = stat(name) {
                if ppid == pid {
                    t += ticks;
                }
            }
        }
    }
    t
}

/// This process's CPU time, in µs (`CLOCK_PROCESS_CPUTIME_ID`: not in ticks).
fn self_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// The loop that is measured (callgrind: `--toggle-collect='*measured_loop*'`).
#[inline(never)]
fn measured_loop<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

enum Client {
    Sqlx(sqlx::PgConnection),
    Tp(tokio_postgres::Client),
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 11 {
        eprintln!(
            "usage: lookup-protocols URL OP MODE BATCH N WARMUP PG_PID PGB_PID HASHES_FILE TAG"
        );
        std::process::exit(2);
    }
    let (url, op, mode) = (a[1].clone(), a[2].as_str(), a[3].as_str());
    let batch: usize = a[4].parse().unwrap();
    let n: usize = a[5].parse().unwrap();
    let warmup: usize = a[6].parse().unwrap();
    let pg_pid: u32 = a[7].parse().unwrap();
    let pgb_pid: u32 = a[8].parse().unwrap();
    let hashes: Vec<String> = std::fs::read_to_string(&a[9])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let tag = a[10].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut client = rt.block_on(async {
        match mode {
            m if m.starts_with("typed") => {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        eprintln!("connection: {e}");
                    }
                });
                Client::Tp(c)
            }
            _ => {
                use sqlx::ConnectOptions;
                use std::str::FromStr;
                let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .unwrap()
                    .application_name("rbac-gateway")
                    .extra_float_digits(None);
                let mut c = opts.connect().await.unwrap();
                if mode.starts_with("named") {
                    // As Db::lookup does once per connection of the gateway's own.
                    sqlx::Executor::execute(&mut c, sqlx::raw_sql(&settings("SET")))
                        .await
                        .unwrap();
                }
                Client::Sqlx(c)
            }
        }
    });

    let rows = if op == "audit" {
        events(&tag, (warmup + n) * batch)
    } else {
        Vec::new()
    };
    let sets = settings("SET LOCAL");
    let values_sql = typed_values_sql(batch);
    // The gateway's named INSERT (`INSERT_ARRAYS_SQL`: the `unnest`s in the select list since
    // 2026-11-28 midday, `ROWS FROM` before), counted here so each mode's rows are checked
    // (the gateway's own answers no rows).
    let unnest_sql = {
        let types = [
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "timestamptz",
            "text",
            "int8",
        ];
        let cols: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("pg_catalog.unnest(${}::{t}[])", i + 1))
            .collect();
        format!(
            "WITH ins AS (INSERT INTO access_audit_events ({COLUMNS}) SELECT {} \
             RETURNING 1) SELECT pg_catalog.count(*) FROM ins",
            cols.join(", ")
        )
    };
    let copy_sql = format!("COPY access_audit_events ({COLUMNS}) FROM STDIN (FORMAT binary)");

    // One operation, the i-th.
    let one = |client: &mut Client, i: usize| {
        let client: *mut Client = client;
        let (sets, values_sql, unnest_sql, copy_sql, rows, hashes) =
            (&sets, &values_sql, &unnest_sql, &copy_sql, &rows, &hashes);
        async move {
            // SAFETY: one operation at a time, awaited before the next.
            let client = unsafe { &mut *client };
            match op {
                "cold" => {
                    let start = (i * batch) % hashes.len();
                    let hs: Vec<&str> = (0..batch)
                        .map(|k| hashes[(start + k) % hashes.len()].as_str())
                        .collect();
                    cold(client, mode, sets, &hs).await
                }
                _ => {
                    let evs = &rows[i * batch..(i + 1) * batch];
                    audit(client, mode, sets, values_sql, unnest_sql, copy_sql, evs).await
                }
            }
        }
    };

    rt.block_on(async {
        for i in 0..warmup {
            one(&mut client, i).await;
        }
    });
    let pg0 = cpu_ticks(pg_pid, true);
    let pgb0 = cpu_ticks(pgb_pid, false);
    let cpu0 = self_cpu_us();
    eprintln!("LOOP-START");
    let t0 = Instant::now();
    let found = measured_loop(&rt, async {
        let mut found = 0;
        for i in warmup..warmup + n {
            found += one(&mut client, i).await;
        }
        found
    });
    let wall = t0.elapsed();
    eprintln!("LOOP-END");
    let cpu = self_cpu_us() - cpu0;
    let pg = cpu_ticks(pg_pid, true) - pg0;
    let pgb = cpu_ticks(pgb_pid, false).saturating_sub(pgb0);
    let expect = n * batch;
    assert_eq!(found, expect, "every operation answers each of its rows");
    let per = |ticks: u64| ticks as f64 * 10_000.0 / n as f64;
    println!(
        "{op}\t{mode}\t{batch}\t{n}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        wall.as_secs_f64() * 1e6 / n as f64,
        cpu / n as f64,
        per(pg),
        per(pgb)
    );
}

/// `INSERT ... VALUES ($1, ..., $14), ...` for `batch` rows, fresh rows.
fn typed_values_sql(batch: usize) -> String {
    let mut sql = format!("WITH ins AS (INSERT INTO access_audit_events ({COLUMNS}) VALUES ");
    for r in 0..batch {
        sql.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..14 {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", r * 14 + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" RETURNING 1) SELECT pg_catalog.count(*) FROM ins");
    sql
}

/// The cold lookup of `hs`, one round trip; the rows decoded. Answers how many rows.
async fn cold(client: &mut Client, mode: &str, sets: &str, hs: &[&str]) -> usize {
    match (client, mode) {
        (Client::Sqlx(c), "named") => {
            let sql = concat!(
                "SELECT admin_id, seconds_left, roles, permissions, break_glass_seconds, \
                 break_glass_until, token_sha256 FROM rbac_gateway_session_principals(",
                "$1::text[], $2)"
            );
            let rows = sqlx::query(sql)
                .persistent(true)
                .bind(hs.to_vec())
                .bind(true)
                .fetch_all(&mut *c)
                .await
                .unwrap();
            decode_sqlx(&rows)
        }
        (Client::Sqlx(c), "simple" | "simple-noset") => {
            let rows = simple(c, mode, sets, batch_sql(hs, true).unwrap()).await;
            decode_sqlx(&rows)
        }
        (Client::Tp(c), "typed" | "typed-tx") => {
            let sql = concat!(
                "SELECT admin_id, seconds_left, roles, permissions, break_glass_seconds, \
                 break_glass_until, token_sha256 FROM rbac_gateway_session_principals(",
                "$1::text[], $2)"
            );
            let params: [(&(dyn ToSql + Sync), Type); 2] =
                [(&hs, Type::TEXT_ARRAY), (&true, Type::BOOL)];
            let rows = typed(c, mode, sets, sql, &params).await;
            decode_tp(&rows)
        }
        _ => panic!("cold: no mode {mode}"),
    }
}

/// `text` as one simple query through sqlx, after the gateway's `SET LOCAL`s in the same message
/// in mode `simple` (as `Db::one_round_trip` sends it), without them in `simple-noset`.
async fn simple(
    c: &mut sqlx::PgConnection,
    mode: &str,
    sets: &str,
    text: String,
) -> Vec<sqlx::postgres::PgRow> {
    let text = if mode == "simple" {
        format!("{sets}; {text}")
    } else {
        text
    };
    sqlx::Executor::fetch_all(c, sqlx::raw_sql(&text))
        .await
        .unwrap()
}

/// One column of the rows `evs`, as an array to bind: a text field, or (`opt`) an optional one.
macro_rules! col {
    ($evs:expr, $f:ident) => {
        $evs.iter().map(|e| e.$f.as_str()).collect::<Vec<&str>>()
    };
    ($evs:expr, opt $f:ident) => {
        $evs.iter()
            .map(|e| e.$f.as_deref())
            .collect::<Vec<Option<&str>>>()
    };
}

/// The INSERT of `evs`; answers how many rows it inserted.
async fn audit(
    client: &mut Client,
    mode: &str,
    sets: &str,
    values_sql: &str,
    unnest_sql: &str,
    copy_sql: &str,
    evs: &[Ev],
) -> usize {
    match (client, mode) {
        (Client::Sqlx(c), "simple" | "simple-noset") => {
            let rows = simple(c, mode, sets, insert_values_sql(evs).unwrap()).await;
            use sqlx::Row;
            let n: i64 = rows.last().unwrap().try_get(0).unwrap();
            n as usize
        }
        (Client::Sqlx(c), "named") => {
            let n: i64 = sqlx::query_scalar(unnest_sql)
                .persistent(true)
                .bind(col!(evs, id))
                .bind(col!(evs, event_type))
                .bind(col!(evs, opt admin_id))
                .bind(col!(evs, method))
                .bind(col!(evs, path))
                .bind(col!(evs, opt route))
                .bind(col!(evs, opt required))
                .bind(col!(evs, reason))
                .bind(col!(evs, request_id))
                .bind(col!(evs, opt client_ip))
                .bind(col!(evs, opt user_agent))
                .bind(evs.iter().map(|e| e.created_at_utc).collect::<Vec<_>>())
                .bind(col!(evs, opt mapping_version))
                .bind(evs.iter().map(|e| e.occurrences).collect::<Vec<_>>())
                .fetch_one(&mut *c)
                .await
                .unwrap();
            n as usize
        }
        (Client::Sqlx(c), "named-values") => {
            let mut q = sqlx::query_scalar::<_, i64>(values_sql).persistent(true);
            for e in evs {
                q = q
                    .bind(e.id.as_str())
                    .bind(e.event_type.as_str())
                    .bind(e.admin_id.as_deref())
                    .bind(e.method.as_str())
                    .bind(e.path.as_str())
                    .bind(e.route.as_deref())
                    .bind(e.required.as_deref())
                    .bind(e.reason.as_str())
                    .bind(e.request_id.as_str())
                    .bind(e.client_ip.as_deref())
                    .bind(e.user_agent.as_deref())
                    .bind(e.created_at_utc)
                    .bind(e.mapping_version.as_deref())
                    .bind(e.occurrences);
            }
            q.fetch_one(&mut *c).await.unwrap() as usize
        }
        (Client::Sqlx(c), "copy") => {
            let mut buf = Vec::with_capacity(19 + evs.len() * 400 + 2);
            buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
            buf.extend_from_slice(&0i32.to_be_bytes());
            buf.extend_from_slice(&0i32.to_be_bytes());
            let text = |buf: &mut Vec<u8>, s: Option<&str>| match s {
                None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    buf.extend_from_slice(s.as_bytes());
                }
            };
            // 2000-01-01T00:00:00Z, PostgreSQL's epoch, in µs since 1970.
            const PG_EPOCH_US: i64 = 946_684_800_000_000;
            for e in evs {
                buf.extend_from_slice(&14i16.to_be_bytes());
                text(&mut buf, Some(&e.id));
                text(&mut buf, Some(&e.event_type));
                text(&mut buf, e.admin_id.as_deref());
                text(&mut buf, Some(&e.method));
                text(&mut buf, Some(&e.path));
                text(&mut buf, e.route.as_deref());
                text(&mut buf, e.required.as_deref());
                text(&mut buf, Some(&e.reason));
                text(&mut buf, Some(&e.request_id));
                text(&mut buf, e.client_ip.as_deref());
                text(&mut buf, e.user_agent.as_deref());
                buf.extend_from_slice(&8i32.to_be_bytes());
                let us = e.created_at_utc.timestamp_micros() - PG_EPOCH_US;
                buf.extend_from_slice(&us.to_be_bytes());
                text(&mut buf, e.mapping_version.as_deref());
                buf.extend_from_slice(&8i32.to_be_bytes());
                buf.extend_from_slice(&e.occurrences.to_be_bytes());
            }
            buf.extend_from_slice(&(-1i16).to_be_bytes());
            let mut copy = c.copy_in_raw(copy_sql).await.unwrap();
            copy.send(buf).await.unwrap();
            copy.finish().await.unwrap() as usize
        }
        (Client::Tp(c), "typed" | "typed-tx") => {
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(evs.len() * 14);
            for e in evs {
                params.push((&e.id, Type::TEXT));
                params.push((&e.event_type, Type::TEXT));
                params.push((&e.admin_id, Type::TEXT));
                params.push((&e.method, Type::TEXT));
                params.push((&e.path, Type::TEXT));
                params.push((&e.route, Type::TEXT));
                params.push((&e.required, Type::TEXT));
                params.push((&e.reason, Type::TEXT));
                params.push((&e.request_id, Type::TEXT));
                params.push((&e.client_ip, Type::TEXT));
                params.push((&e.user_agent, Type::TEXT));
                params.push((&e.created_at_utc, Type::TIMESTAMPTZ));
                params.push((&e.mapping_version, Type::TEXT));
                params.push((&e.occurrences, Type::INT8));
            }
            let rows = typed(c, mode, sets, values_sql, &params).await;
            let n: i64 = rows[0].get(0);
            n as usize
        }
        (Client::Tp(c), "typed-unnest" | "typed-unnest-tx") => {
            let (id, et, ad, me, pa, ro, re, rs, ri, ip, ua, ca, mv, oc) = (
                col!(evs, id),
                col!(evs, event_type),
                col!(evs, opt admin_id),
                col!(evs, method),
                col!(evs, path),
                col!(evs, opt route),
                col!(evs, opt required),
                col!(evs, reason),
                col!(evs, request_id),
                col!(evs, opt client_ip),
                col!(evs, opt user_agent),
                evs.iter().map(|e| e.created_at_utc).collect::<Vec<_>>(),
                col!(evs, opt mapping_version),
                evs.iter().map(|e| e.occurrences).collect::<Vec<_>>(),
            );
            let t = Type::TEXT_ARRAY;
            let params: [(&(dyn ToSql + Sync), Type); 14] = [
                (&id, t.clone()),
                (&et, t.clone()),
                (&ad, t.clone()),
                (&me, t.clone()),
                (&pa, t.clone()),
                (&ro, t.clone()),
                (&re, t.clone()),
                (&rs, t.clone()),
                (&ri, t.clone()),
                (&ip, t.clone()),
                (&ua, t.clone()),
                (&ca, Type::TIMESTAMPTZ_ARRAY),
                (&mv, t),
                (&oc, Type::INT8_ARRAY),
            ];
            let rows = typed(c, mode, sets, unnest_sql, &params).await;
            let n: i64 = rows[0].get(0);
            n as usize
        }
        _ => panic!("audit: no mode {mode}"),
    }
}

/// `query_typed` alone (`typed`, `typed-unnest`), or (`...-tx`) in a transaction of its own that
/// begins with the gateway's `SET LOCAL`s (statement timeout, `search_path`) and ends with
/// `COMMIT`: three requests pipelined (sent before any answer is awaited), one round trip, the
/// statement bound and pooler-safe (a pooler keeps the server connection until the `COMMIT`).
async fn typed(
    c: &tokio_postgres::Client,
    mode: &str,
    sets: &str,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Vec<tokio_postgres::Row> {
    if !mode.ends_with("-tx") {
        return c.query_typed(sql, params).await.unwrap();
    }
    let begin = format!("BEGIN; {sets}");
    let (began, rows, committed) = tokio::join!(
        c.batch_execute(&begin),
        c.query_typed(sql, params),
        c.batch_execute("COMMIT")
    );
    began.unwrap();
    committed.unwrap();
    rows.unwrap()
}
