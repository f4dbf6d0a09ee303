//! `stores::pool::server_utf8` in a process of its own (the answer is process-wide, and the API
//! suite's tests share theirs): on a database whose encoding is `SQL_ASCII`, which refuses a
//! `\u` escape beyond `\u007F`, the gateway's SQL text writes a character beyond ASCII as its
//! UTF-8 bytes, and a value holding one comes back as it was; on a UTF-8 database, as its code
//! point (every byte ASCII, whatever `client_encoding` a session was left with:
//! `tests/api/sql_text.rs`). Needs `DATABASE_URL` (scripts/test.sh sets it).

use std::time::Duration;

use rbac_gateway::stores::{db::Db, pool, sql_text};

#[tokio::test]
async fn text_beyond_ascii_comes_back_as_it_was_on_a_sql_ascii_database_and_a_utf8_one() {
    let base =
        std::env::var("DATABASE_URL").expect("DATABASE_URL must be set (scripts/test.sh sets it)");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let name = format!("rbacgw_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!(
        "CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let value = "caf\u{e9} \u{2615} \u{1F600} 'q' \\";
    for (url, utf8) in [(base.clone(), true), (format!("{prefix}/{name}"), false)] {
        // The next connection opened asks the server again (as after a failover).
        pool::mark_broken();
        let db = Db::connect(&url, None, 1, Duration::from_secs(10)).unwrap();
        db.ping().await.unwrap();
        assert_eq!(pool::server_utf8(), utf8, "{url}");
        let quoted = sql_text::text(value).unwrap();
        assert_eq!(quoted.is_ascii(), utf8, "{quoted}");
        let rows = db
            .one_round_trip(&format!("SELECT {quoted}"))
            .await
            .unwrap_or_else(|e| panic!("{url}: {quoted}: {e}"));
        let back: String = sqlx::Row::get(&rows[0], 0);
        assert_eq!(back, value, "{url}");
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}
