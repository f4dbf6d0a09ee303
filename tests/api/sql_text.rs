//! Values written into SQL text (`src/stores/sql_text.rs`), proven against the real PostgreSQL:
//! random strings (quotes, backslashes, dollar signs, every character PostgreSQL's text holds)
//! come back unchanged with `standard_conforming_strings` on and off, a NUL is refused before any
//! SQL is built, and a denial whose user agent is full of quotes and backslashes stores it as
//! sent.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use rbac_gateway::stores::sql_text;

use crate::helpers::*;

/// Strings biased to what breaks quoting, and any character but NUL.
fn hostile() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => prop_oneof![
            Just('\''),
            Just('\\'),
            Just('"'),
            Just('$'),
            Just(';'),
            Just('E'),
            Just('\n'),
            Just('\r'),
            Just('\u{7f}'),
            Just('\u{1}'),
        ],
        4 => any::<char>().prop_filter("PostgreSQL's text holds no NUL", |c| *c != '\0'),
    ];
    prop::collection::vec(c, 0..48).prop_map(String::from_iter)
}

#[tokio::test]
async fn quoted_text_round_trips_through_postgresql_whatever_standard_conforming_strings_says() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut runner = TestRunner::deterministic();
    let values: Vec<String> = (0..400)
        .map(|_| hostile().new_tree(&mut runner).unwrap().current())
        .collect();
    for setting in ["on", "off"] {
        sqlx::raw_sql(&format!("SET standard_conforming_strings = {setting}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        for v in &values {
            let sql = format!("SELECT {}", sql_text::text(v).unwrap());
            let back: String =
                sqlx::Row::get(&sqlx::raw_sql(&sql).fetch_one(&mut *conn).await.unwrap(), 0);
            assert_eq!(&back, v, "standard_conforming_strings = {setting}: {sql}");
        }
        // Arrays of them, as the ticket check sends.
        let sql = format!("SELECT {}", sql_text::text_array(&values).unwrap());
        let back: Vec<String> =
            sqlx::Row::get(&sqlx::raw_sql(&sql).fetch_one(&mut *conn).await.unwrap(), 0);
        assert_eq!(back, values, "standard_conforming_strings = {setting}");
    }
    for bad in ["\0", "a\0", "\0'; DROP TABLE admins; --"] {
        assert_eq!(sql_text::text(bad), Err(sql_text::Unquotable::Nul));
    }
}

#[tokio::test]
async fn a_denials_row_keeps_a_hostile_user_agent_as_sent() {
    let env = Env::core().await;
    let token = cached_denied_session(&env.db, &env.gw).await;
    let agent = r#"x'); DELETE FROM access_audit_events; -- \' \\ $$ E'\x41' "q""#;
    let r = send(
        env.gw.addr,
        format!(
            "GET /ops/caf%C3%A9 HTTP/1.1\r\nHost: c\r\nUser-Agent: {agent}\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let rows = env.db.audit_rows(&r.request_id()).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].user_agent.as_deref(), Some(agent));
    assert!(env.db.audit_count().await >= 2, "nothing was deleted");
}

/// A server connection left with another `client_encoding` (Console's code that runs on a read
/// may set one for the session, and a pooled connection keeps it: the server reads each message
/// in that encoding before any statement of it runs) reads the text as written: every byte of
/// it is ASCII, which every client encoding PostgreSQL has reads alike. Before, a character
/// whose UTF-8 bytes end with a Shift-JIS lead byte swallowed the backslash after it, and the
/// rest of the value ran as SQL (a review, 2026-12-02).
#[tokio::test]
async fn quoted_text_means_the_same_whatever_client_encoding_the_connection_was_left_with() {
    use sha2::Digest;
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("SET client_encoding = 'SJIS'; SET backslash_quote = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut runner = TestRunner::deterministic();
    let mut values: Vec<String> = (0..300)
        .map(|_| hostile().new_tree(&mut runner).unwrap().current())
        .collect();
    values.push("\u{101}\\'; SELECT 4242 AS injected --".to_string());
    for v in &values {
        let quoted = sql_text::text(v).unwrap();
        assert!(quoted.is_ascii(), "{quoted}");
        let sql = format!(
            "SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to({quoted}, 'UTF8')), 'hex')"
        );
        let rows = sqlx::raw_sql(&sql).fetch_all(&mut *conn).await.unwrap();
        assert_eq!(rows.len(), 1, "one statement: {sql}");
        let digest: String = sqlx::Row::get(&rows[0], 0);
        assert_eq!(
            digest,
            hex::encode(sha2::Sha256::digest(v.as_bytes())),
            "{sql}"
        );
    }
}
