//! `&Db` as sqlx's executor (`.fetch_one(&db)`, `.execute(&db)`): each statement in a
//! transaction of its own ([`Db::begin`]: its statement timeout, read-only on the cockpit's
//! pool), unnamed, bounded as a whole, so that it is safe behind a transaction pooler (the
//! Architecture Invariant of [`Db`]).

use super::db::{within, Db};

/// A statement that leaves no prepared statement behind on its server connection.
struct Unnamed<E>(E);

impl<'q, E: sqlx::Execute<'q, sqlx::Postgres>> sqlx::Execute<'q, sqlx::Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&sqlx::postgres::PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

impl<'d> sqlx::Executor<'d> for &'_ Db {
    type Database = sqlx::Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>, sqlx::Error>,
    >
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        use futures_util::{StreamExt, TryStreamExt};
        let db = self.clone();
        // One statement in a transaction of its own, unnamed, bounded as a whole.
        let all = within(self.limit(), async move {
            let mut tx = db.begin().await?;
            let items = sqlx::Executor::fetch_many(&mut *tx, Unnamed(query))
                .try_collect::<Vec<_>>()
                .await?;
            tx.commit().await?;
            Ok(items)
        });
        futures_util::stream::once(all)
            .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::postgres::PgRow>, sqlx::Error>>
    where
        'd: 'e,
        E: 'q + sqlx::Execute<'q, sqlx::Postgres>,
    {
        let db = self.clone();
        Box::pin(within(self.limit(), async move {
            let mut tx = db.begin().await?;
            let row = sqlx::Executor::fetch_optional(&mut *tx, Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        }))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        _sql: &'q str,
        _parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::postgres::PgStatement<'q>, sqlx::Error>>
    where
        'd: 'e,
    {
        // A prepared statement is session state: refused rather than left on a server
        // connection another client may be given (nothing in the gateway prepares one).
        Box::pin(async {
            Err(sqlx::Error::Configuration(
                "rbac-gateway prepares no statement outside a transaction".into(),
            ))
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<sqlx::Postgres>, sqlx::Error>>
    where
        'd: 'e,
    {
        // Used by sqlx's macros only, which the gateway does not use.
        let pool = self.pool().clone();
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let described = sqlx::Executor::describe(&mut *conn, sql).await?;
            conn.done();
            Ok(described)
        })
    }
}
