//! One round trip per database step (issue 51), counted at the server's side of the wire
//! (`helpers::PgWire`): a cold request's session, admin and roles in one exchange of one round
//! trip; a rule's live ticket grants in one; a batch of audit rows in one. Nothing else a cold
//! request sends names the admin (no second lookup). Both ways the gateway sends its lookups:
//! one simple query with the values written in (`--db-statements simple`, and whenever the
//! database URL may be a pooler), and named prepared statements on the gateway's own sessions
//! (`auto`, once the probe found them): Bind/Execute/Sync, the statement prepared once per
//! connection, on a connection whose session has its statement timeout.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;
use crate::tickets::grant;

/// The log line of a gateway whose lookups turned to named statements.
const NAMED: &str = "lookups run as named statements";

/// What the named statement of a cold lookup says (the text of its Parse).
const PREPARED_LOOKUP: &str = "rbac_gateway_session_principals($1";

/// What the named INSERT of a batch of audit rows says (the text of its Parse): its last column
/// and its first array, which no other statement of the gateway's says (the alert pass's look
/// at the gateway's triggers unnests text arrays too).
const PREPARED_INSERT: &str = "occurrences) SELECT pg_catalog.unnest($1::text[])";

/// What the join inside `rbac_gateway_session_principals` says (as pg_stat_statements keeps it).
const LOOKUP_JOIN: &str = "JOIN public.admin_sessions s ON s.token_sha256 = h";

/// An admin whose only grant for customer 7 is a ticket's, cached by a first request, then
/// allowed on a rule with `customer_param`: what the wire saw for that request, the admin, and
/// the session's token.
async fn ticket_check(db: &TestDb, gw: &Gateway, wire: &PgWire) -> (Vec<Exchange>, String, String) {
    let (granted, token) = db.admin_with_roles(&["console-user"]).await;
    grant(db, &granted, "raptor-audit-admin", 7, "T-1").await;
    assert_eq!(
        gw.get("/ops", Some(&token)).await.status,
        403,
        "primes the cache"
    );
    let from = wire.exchanges().len();
    let r = gw.get("/console/customers/7/audit", Some(&token)).await;
    assert_eq!(r.status, 200, "the ticket grant allows it");
    (wire.exchanges()[from..].to_vec(), granted, token)
}

/// A denied GET /ops with `token`: its row's exchange (the only one naming the request's id,
/// one round trip), once it ended, and its one stored row.
async fn denial(db: &TestDb, gw: &Gateway, wire: &PgWire, token: &str) -> Exchange {
    let r = gw.get("/ops", Some(token)).await;
    assert_eq!(r.status, 403);
    let id = r.request_id();
    eventually(
        Duration::from_secs(5),
        "the row's exchange ended",
        || async { wire.exchanges().iter().any(|e| e.mentions(&id)) },
    )
    .await;
    let rows: Vec<Exchange> = wire
        .exchanges()
        .into_iter()
        .filter(|e| e.mentions(&id))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].round_trips, 1, "{:?}", rows[0]);
    assert_eq!(db.audit_rows(&id).await.len(), 1);
    rows[0].clone()
}

#[tokio::test]
async fn a_cold_request_a_ticket_check_and_an_audit_batch_each_take_one_round_trip() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let wire = PgWire::start(&db.url).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--db-statements")
        .arg("simple");
    opts.database_url = wire.url.clone();
    let gw = Gateway::start(opts).await;
    settle(&[&gw]).await;

    // Allowed, cold: the session and its principal.
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let hash = rbac_gateway::stores::identity::token_hash(&token);
    let from = wire.exchanges().len();
    let r = gw.get("/console/customers/1", Some(&token)).await;
    assert_eq!(r.status, 200);
    let seen: Vec<Exchange> = wire.exchanges()[from..].to_vec();
    let lookups: Vec<&Exchange> = seen.iter().filter(|e| e.mentions(&hash)).collect();
    assert_eq!(lookups.len(), 1, "one exchange reads the session: {seen:?}");
    assert_eq!(lookups[0].round_trips, 1, "{:?}", lookups[0]);
    assert!(
        lookups[0].mentions("SET LOCAL statement_timeout")
            && lookups[0].mentions("rbac_gateway_session_principals(ARRAY["),
        "one simple query, its timeout with it: {:?}",
        lookups[0]
    );
    assert!(
        !seen.iter().any(|e| e.mentions(&admin)),
        "no second lookup names the admin: {seen:?}"
    );

    // A rule with customer_param: the live ticket grants, read on every request.
    let (seen, _, token) = ticket_check(&db, &gw, &wire).await;
    let tickets: Vec<&Exchange> = seen
        .iter()
        .filter(|e| e.mentions("rbac_gateway_ticket_grants"))
        .collect();
    assert_eq!(tickets.len(), 1, "{seen:?}");
    assert_eq!(tickets[0].round_trips, 1, "{:?}", tickets[0]);

    // A denial: its row in one exchange of one round trip.
    denial(&db, &gw, &wire, &token).await;
}

#[tokio::test]
async fn on_its_own_sessions_a_cold_request_is_one_bind_of_a_statement_prepared_once() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let wire = PgWire::start(&db.url).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = wire.url.clone();
    let gw = Gateway::start(opts).await;
    settle(&[&gw]).await;
    eventually(
        Duration::from_secs(10),
        "the probe found sessions of the gateway's own",
        || async { gw.log().contains(NAMED) },
    )
    .await;

    // Cold requests one after another: the most recently used connection serves the next
    // (the pool's idle stack is last in, first out), so most find the statement prepared.
    let mut admins = Vec::new();
    for _ in 0..6 {
        admins.push(db.admin_with_roles(&["console-audit-user"]).await);
    }
    let from = wire.exchanges().len();
    let mut looked_up = Vec::new();
    for (admin, token) in &admins {
        let hash = rbac_gateway::stores::identity::token_hash(token);
        let before = wire.exchanges().len();
        let r = gw.get("/console/customers/1", Some(token)).await;
        assert_eq!(r.status, 200);
        let seen: Vec<Exchange> = wire.exchanges()[before..].to_vec();
        let lookups: Vec<&Exchange> = seen.iter().filter(|e| e.mentions(&hash)).collect();
        assert_eq!(lookups.len(), 1, "one exchange reads the session: {seen:?}");
        let lookup = lookups[0];
        assert_eq!(lookup.round_trips, 1, "{lookup:?}");
        assert_eq!(lookup.sent[0], b'B', "a Bind, nothing parsed: {lookup:?}");
        assert!(
            !lookup.mentions(PREPARED_LOOKUP) && !lookup.mentions("SET"),
            "no statement text, no SET with it: {lookup:?}"
        );
        assert!(
            !seen.iter().any(|e| e.mentions(admin)),
            "no second lookup names the admin: {seen:?}"
        );
        looked_up.push(lookup.conn);
    }
    // Each connection prepared the lookup once, after its session's statement timeout was set.
    let all: Vec<Exchange> = wire.exchanges();
    let mut prepared = HashSet::new();
    for (i, e) in all.iter().enumerate() {
        if !e.mentions(PREPARED_LOOKUP) {
            continue;
        }
        assert!(
            prepared.insert(e.conn),
            "prepared twice on connection {}: {all:?}",
            e.conn
        );
        assert!(
            all[..i]
                .iter()
                .any(|s| s.conn == e.conn && s.mentions("SET statement_timeout = ")),
            "prepared on connection {} before its statement timeout was set: {all:?}",
            e.conn
        );
    }
    for conn in &looked_up {
        assert!(prepared.contains(conn), "looked up on {conn} unprepared");
    }
    let warm = looked_up.len() - prepared.len();
    assert!(
        warm >= 3,
        "most cold requests meet a warm connection: {looked_up:?}, prepared on {prepared:?}"
    );
    // On a warm connection a cold request is one round trip in all: the lookup's.
    let since: Vec<Exchange> = wire.exchanges()[from..].to_vec();
    let parses = since.iter().filter(|e| e.mentions(PREPARED_LOOKUP)).count();
    assert!(parses <= prepared.len(), "{since:?}");

    // A rule with customer_param: the live ticket grants, one Bind too.
    let (seen, granted, _) = ticket_check(&db, &gw, &wire).await;
    let tickets: Vec<&Exchange> = seen.iter().filter(|e| e.mentions(&granted)).collect();
    assert_eq!(tickets.len(), 1, "{seen:?}");
    assert_eq!(tickets[0].round_trips, 1, "{:?}", tickets[0]);
    assert_eq!(tickets[0].sent[0], b'B', "{:?}", tickets[0]);

    // Denials: each batch of rows one Bind of the named INSERT (its columns bound as arrays),
    // prepared once on the writer's kept connection; no row written into a statement's text.
    let (_, plain) = db.admin_with_roles(&["console-user"]).await;
    let mut inserts = Vec::new();
    for _ in 0..4 {
        let insert = denial(&db, &gw, &wire, &plain).await;
        assert!(
            !insert.mentions("E'/ops'") && !insert.mentions("VALUES"),
            "no value written into SQL text: {insert:?}"
        );
        inserts.push(insert);
    }
    let prepared = wire
        .exchanges()
        .into_iter()
        .filter(|e| e.mentions(PREPARED_INSERT))
        .count();
    assert_eq!(
        prepared,
        1,
        "the INSERT prepared once: {:?}",
        wire.exchanges()
    );
    for e in &inserts[1..] {
        assert_eq!(e.sent[0], b'B', "a Bind, nothing parsed: {e:?}");
        assert_eq!(e.conn, inserts[0].conn, "on the writer's kept connection");
    }
    assert!(!gw.log().contains("simple query each"), "{}", gw.log());
}

/// Two gateways on `db` in front of `up`: one whose probe found sessions of its own (named
/// statements, once it says so) and one told its connections may be a pooler's
/// (`--db-statements simple`).
async fn named_and_simple(db: &TestDb, up: &Upstream) -> (Gateway, Gateway) {
    let named = Gateway::start(GatewayOpts::new(core_routes(), db, up.addr)).await;
    let simple = Gateway::start(
        GatewayOpts::new(core_routes(), db, up.addr)
            .arg("--db-statements")
            .arg("simple"),
    )
    .await;
    settle(&[&named, &simple]).await;
    eventually(
        Duration::from_secs(10),
        "the probe found sessions of the gateway's own",
        || async { named.log().contains(NAMED) },
    )
    .await;
    (named, simple)
}

/// A denied request: its path, its session's token, its headers.
type DenialCase<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

/// Every column of a stored denial but its id, request id and time.
type StoredDenial = (
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// A denial's row written by a gateway on its own sessions (the named INSERT, its values bound
/// as arrays) and by one told its connections may be a pooler's (`--db-statements simple`: the
/// values written into the statement's text by `sql_text`) is the same row: every column the
/// gateway writes, for values with quotes, backslashes, non-ASCII text and no value at all.
#[tokio::test]
async fn a_denials_row_bound_and_written_as_text_is_the_same_row() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let (named, simple) = named_and_simple(&db, &up).await;
    let (_, plain) = db.admin_with_roles(&["console-user"]).await;
    let cases: [DenialCase; 3] = [
        (
            "/ops",
            Some(&plain),
            &[("User-Agent", "it's a \\ back\\slash, caf\u{e9}")],
        ),
        ("/ops?q=%27x%5C&y=1", Some(&plain), &[]),
        ("/console/customers/1", Some(&plain), &[("User-Agent", "")]),
    ];
    for (path, token, headers) in cases {
        let mut stored = Vec::new();
        for gw in [&named, &simple] {
            let r = gw.request("GET", path, token, headers, b"").await;
            let id = r.request_id();
            let row: StoredDenial = eventually_some(
                Duration::from_secs(5),
                || format!("the row of {path} is stored"),
                || async {
                    sqlx::query_as(
                        "SELECT event_type, admin_id, method, path, route, required, reason, \
                         client_ip, user_agent, mapping_version, occurrences \
                         FROM access_audit_events WHERE request_id = $1",
                    )
                    .bind(&id)
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap()
                },
            )
            .await;
            stored.push((r.status, row));
        }
        assert_eq!(stored[0], stored[1], "{path}: named, then simple");
    }
    assert!(!simple.log().contains(NAMED), "{}", simple.log());
}

/// The two ways a cold lookup is sent (`stores/session_batch.rs`), the named statement on the
/// gateway's own sessions (binary, the array bound) and the simple query behind a pooler (text,
/// the array written in), both calls of `rbac_gateway_session_principals` (migration 0014), give
/// one answer: for sessions live, revoked, expired and under break-glass, a gateway of each mode
/// gives the same answers, and the expected ones.
#[tokio::test]
async fn the_named_statement_and_the_simple_query_answer_alike() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let (named, simple) = named_and_simple(&db, &up).await;

    let (_, auditor) = db.admin_with_roles(&["console-audit-user"]).await;
    let (_, plain) = db.admin_with_roles(&["console-user"]).await;
    let (_, revoked) = db.admin_with_roles(&["console-audit-user"]).await;
    db.revoke_session(&revoked).await;
    let lapsed_admin = db.admin("lapsed@example.test").await;
    let lapsed = db.session_for(&lapsed_admin, -60).await;
    let (glass_admin, glass) = db.admin_with_roles(&["console-user"]).await;
    db.break_glass(&glass_admin, 600.0).await;
    let cases: [(&str, &str, &str, u16); 7] = [
        (
            "a live session whose role grants the route",
            &auditor,
            "/console/customers/1",
            200,
        ),
        (
            "a live session without the role",
            &plain,
            "/console/customers/1",
            403,
        ),
        ("a live session without the role", &plain, "/ops", 403),
        ("a revoked session", &revoked, "/console/customers/1", 302),
        ("an expired session", &lapsed, "/console/customers/1", 302),
        ("a session under break-glass", &glass, "/ops", 200),
        (
            "a cookie no session has",
            "no-such-session-token",
            "/ops",
            302,
        ),
    ];
    for (what, token, path, want) in cases {
        let a = named.get(path, Some(token)).await;
        let b = simple.get(path, Some(token)).await;
        assert_eq!(
            (a.status, b.status),
            (want, want),
            "{what} on {path}: named {} / simple {}",
            a.status,
            b.status
        );
    }
    assert!(
        !simple.log().contains(NAMED),
        "the simple gateway sent simple queries: {}",
        simple.log()
    );
}

/// Cold lookups that arrive while others are in flight go as one statement
/// (`stores/session_batch.rs`), and each request still gets its own session's answer: 48 cold
/// requests at once, of admins allowed and denied on one route, revoked sessions and cookies no
/// session has, interleaved, through a gateway of 16 connections. Every answer is its own; the
/// wire saw fewer statements than requests, each one round trip, every hash sent once, and no two
/// at once (`session_batch::send_batches`, whatever the pool's size);
/// `rbac_gateway_db_queries_total` counts the statements. Behind a pooler (simple queries) and on
/// the gateway's own sessions (the named statement).
async fn concurrent_cold_lookups_share_statements_and_keep_their_own_answers(named: bool) {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let wire = PgWire::start(&db.url).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr)
        .arg("--db-statements")
        .arg(if named { "named" } else { "simple" })
        .arg("--db-pool-size")
        .arg("16");
    opts.database_url = wire.url.clone();
    let gw = Gateway::start(opts).await;
    settle(&[&gw]).await;

    let mut cases: Vec<(String, u16)> = Vec::new();
    for i in 0..12 {
        cases.push((db.admin_with_roles(&["console-audit-user"]).await.1, 200));
        cases.push((db.admin_with_roles(&["console-user"]).await.1, 403));
        let (_, revoked) = db.admin_with_roles(&["console-audit-user"]).await;
        db.revoke_session(&revoked).await;
        cases.push((revoked, 302));
        cases.push((format!("no-such-session-{i}"), 302));
    }
    let hashes: Vec<String> = cases
        .iter()
        .map(|(t, _)| rbac_gateway::stores::identity::token_hash(t))
        .collect();
    let from = wire.exchanges().len();
    let q0 = gw.metric("rbac_gateway_db_queries_total").await;
    let mut tasks = Vec::new();
    for (token, want) in &cases {
        let (addr, token, want) = (gw.addr, token.clone(), *want);
        tasks.push(tokio::spawn(async move {
            let req = format!("GET /console/customers/1 HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n");
            (send(addr, req.as_bytes()).await.unwrap().status, want, token)
        }));
    }
    for t in tasks {
        let (got, want, token) = t.await.unwrap();
        assert_eq!(got, want, "the session {token}");
    }
    let seen: Vec<Exchange> = wire.exchanges()[from..].to_vec();
    let batches: Vec<&Exchange> = seen
        .iter()
        .filter(|e| hashes.iter().any(|h| e.mentions(h)))
        .collect();
    for (hash, (token, _)) in hashes.iter().zip(&cases) {
        assert_eq!(
            batches.iter().filter(|e| e.mentions(hash)).count(),
            1,
            "the hash of {token} was sent once"
        );
    }
    assert!(
        batches.len() < cases.len(),
        "{} statements for {} cold lookups: none shared",
        batches.len(),
        cases.len()
    );
    for (i, a) in batches.iter().enumerate() {
        let (a0, a1) = (a.began.unwrap(), a.ended.unwrap());
        for b in &batches[i + 1..] {
            let (b0, b1) = (b.began.unwrap(), b.ended.unwrap());
            assert!(
                a1 <= b0 || b1 <= a0,
                "two statements of cold lookups at once: {a:?} and {b:?}"
            );
        }
    }
    for b in &batches {
        assert_eq!(b.round_trips, 1, "{b:?}");
        if named {
            assert_eq!(b.sent[0], b'B', "a Bind of the named statement: {b:?}");
        } else {
            assert!(
                b.mentions("rbac_gateway_session_principals(ARRAY["),
                "{b:?}"
            );
        }
    }
    assert_eq!(
        gw.metric("rbac_gateway_db_queries_total").await - q0,
        batches.len() as f64,
        "one query counted per statement"
    );
}

#[tokio::test]
async fn concurrent_cold_lookups_behind_a_pooler_share_statements_and_keep_their_own_answers() {
    concurrent_cold_lookups_share_statements_and_keep_their_own_answers(false).await;
}

#[tokio::test]
async fn concurrent_cold_lookups_on_its_own_sessions_share_statements_and_keep_their_own_answers() {
    concurrent_cold_lookups_share_statements_and_keep_their_own_answers(true).await;
}

/// The cold lookups' join is planned once per server connection, not on every call (migration
/// 0015: the function's plans generic; PostgreSQL's plan cache otherwise makes custom plans, for
/// some loads on every call): 24 cold requests one after another through a gateway of two
/// connections, and pg_stat_statements, on a server of the test's own that loads it, counts the
/// join's calls and plans. Both ways the gateway sends the lookup.
async fn the_cold_lookups_join_is_planned_once_per_connection(named: bool) {
    // A server of its own, with pg_stat_statements loaded (it counts planning only when loaded
    // at start), counting for this database only.
    let (pg, plain) = PrivatePg::start().await;
    plain.pool.close().await;
    pg.restart_with("shared_preload_libraries = 'pg_stat_statements'");
    let db = TestDb {
        pool: sqlx::PgPool::connect(&plain.url).await.unwrap(),
        url: plain.url,
    };
    let name = db.url.rsplit_once('/').unwrap().1.to_string();
    for sql in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements".to_string(),
        format!("ALTER DATABASE {name} SET pg_stat_statements.track = 'all'"),
        format!("ALTER DATABASE {name} SET pg_stat_statements.track_planning = on"),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let up = Upstream::start().await;
    let gw = Gateway::start(
        GatewayOpts::new(core_routes(), &db, up.addr)
            .arg("--db-statements")
            .arg(if named { "named" } else { "simple" })
            .arg("--db-pool-size")
            .arg("2"),
    )
    .await;
    settle(&[&gw]).await;
    let mut tokens = Vec::new();
    for _ in 0..24 {
        tokens.push(db.admin_with_roles(&["console-audit-user"]).await.1);
    }
    for token in &tokens {
        assert_eq!(
            gw.get("/console/customers/1", Some(token)).await.status,
            200
        );
    }
    let (calls, plans): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(plans), 0)::int8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_statements%'",
    )
    .bind(LOOKUP_JOIN)
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_statements answers");
    assert!(
        calls >= 24,
        "the join ran for each cold request: {calls} calls"
    );
    assert!(
        plans <= 4,
        "the join was planned {plans} times for {calls} calls through two connections"
    );
}

#[tokio::test]
async fn the_cold_lookups_join_is_planned_once_per_connection_behind_a_pooler() {
    the_cold_lookups_join_is_planned_once_per_connection(false).await;
}

#[tokio::test]
async fn the_cold_lookups_join_is_planned_once_per_connection_on_its_own_sessions() {
    the_cold_lookups_join_is_planned_once_per_connection(true).await;
}
