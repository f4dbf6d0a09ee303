//! Which server and database a pool reaches, so that `--lookup-database-url` is held to reach
//! what `--database-url` reaches: the primary, and the same database of it. A standby's lag lets
//! a cold lookup cache again what the change feed already dropped (a revoked role, an ended
//! session) until the cache's TTL ends; another cluster or database answers from tables that
//! are not Console's live ones. `serve` logs what [`misplaced`] finds at start-up as an error;
//! `check --lookup-database-url` names it as one.

use crate::stores::db::Db;

/// Where a pool's connection landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Whether the server is in recovery: a standby (a promoted one says false).
    pub standby: bool,
    /// The cluster's `system_identifier` (`pg_control_system()`): a physical standby shares
    /// its primary's, any other cluster has its own. None where the login may not run that
    /// function (a server that revoked it from PUBLIC).
    pub system: Option<String>,
    /// `current_database()` (the server's name of it, whatever alias a pooler gave).
    pub database: String,
}

/// Asks where `pool` reaches (unnamed statements: they run through any pooler). The system
/// identifier is asked only where the login may run `pg_control_system()`: PostgreSQL checks a
/// call's privilege when the statement starts, whatever branch of a `CASE` it is in.
pub async fn reach(pool: &Db) -> Result<Reach, sqlx::Error> {
    let (standby, database, may_ask): (bool, String, bool) = sqlx::query_as(
        "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_database()::text, \
                pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')",
    )
    .persistent(false)
    .fetch_one(pool)
    .await?;
    let system = match may_ask {
        true => Some(
            sqlx::query_scalar("SELECT (pg_catalog.pg_control_system()).system_identifier::text")
                .persistent(false)
                .fetch_one(pool)
                .await?,
        ),
        false => None,
    };
    Ok(Reach {
        standby,
        system,
        database,
    })
}

/// What is wrong with the lookup pool's reach `lookups` beside the main pool's `main` (where it
/// is known): one sentence each, empty when it reaches the primary's same database.
pub fn misplaced(main: Option<&Reach>, lookups: &Reach) -> Vec<String> {
    let mut wrong = Vec::new();
    if lookups.standby {
        wrong.push(
            "--lookup-database-url reaches a standby (a server in recovery): its lag lets a cold lookup cache again what the change feed already dropped (a revoked role, an ended session); give the primary's URL".to_string(),
        );
    }
    let Some(main) = main else {
        return wrong;
    };
    let clusters = match (&lookups.system, &main.system) {
        (Some(theirs), Some(ours)) if theirs != ours => Some((theirs, ours)),
        _ => None,
    };
    if let Some((theirs, ours)) = clusters {
        wrong.push(format!(
            "--lookup-database-url reaches another PostgreSQL cluster than --database-url (system identifier {theirs} against {ours}): cold lookups would read tables that are not Console's live ones"
        ));
    } else if lookups.database != main.database {
        wrong.push(format!(
            "--lookup-database-url reaches database {:?}, --database-url database {:?}: cold lookups would read tables that are not Console's live ones",
            lookups.database, main.database
        ));
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(standby: bool, system: &str, database: &str) -> Reach {
        Reach {
            standby,
            system: (!system.is_empty()).then(|| system.into()),
            database: database.into(),
        }
    }

    #[test]
    fn the_same_primarys_database_is_fit_and_anything_else_is_named() {
        let main = at(false, "7", "console");
        assert!(misplaced(Some(&main), &main).is_empty());
        assert!(misplaced(None, &main).is_empty());
        let standby = misplaced(Some(&main), &at(true, "7", "console"));
        assert_eq!(standby.len(), 1);
        assert!(standby[0].contains("standby"), "{standby:?}");
        assert!(misplaced(None, &at(true, "7", "console"))[0].contains("standby"));
        let other = misplaced(Some(&main), &at(false, "8", "console"));
        assert!(
            other[0].contains("system identifier 8 against 7"),
            "{other:?}"
        );
        let db = misplaced(Some(&main), &at(false, "7", "staging"));
        assert!(db[0].contains("\"staging\""), "{db:?}");
        assert_eq!(misplaced(Some(&main), &at(true, "8", "x")).len(), 2);
        // A system identifier not asked (the function revoked) compares the database alone.
        assert!(misplaced(Some(&main), &at(false, "", "console")).is_empty());
        assert!(
            misplaced(Some(&at(false, "", "console")), &at(false, "8", "x"))[0].contains("\"x\"")
        );
    }
}
