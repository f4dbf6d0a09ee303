//! `rbac-gateway migrate`: applies the embedded migrations.

use std::time::Duration;

use super::toolbox::{command_pool, failure, init_logging, runtime, say};
use super::Exit;
use crate::cli::args::MigrateArgs;
use crate::stores::migrations;

pub fn migrate(args: MigrateArgs) -> Result<(), Exit> {
    // What it waits for and builds (a lock held by Console, another migrate, an index built
    // concurrently), on standard error as it happens.
    init_logging("text");
    runtime()?.block_on(async {
        let pool = command_pool(&args.database_url, 1, Duration::from_secs(30)).await?;
        // A schema a newer release migrated: a release before it (a rollback, Heroku's release
        // phase running this binary's `migrate`) finds every migration of its own applied and
        // has nothing to do; its steps after the migrations would make the newer release's
        // objects again as this binary knows them, so none runs. sqlx's own answer was an
        // error ("previously applied but is missing"), which stopped the rollback.
        if let Ok(state) = migrations::schema_state(&pool).await {
            if !state.newer.is_empty() {
                let newer = state
                    .newer
                    .iter()
                    .map(|v| format!("{v:04}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let blocking = state.blocking();
                if !blocking.is_empty() {
                    return Err(failure(anyhow::anyhow!(
                        "the schema holds migration(s) {newer} of a newer release, and this binary's are not all applied as it has them: not migrated (run `migrate` with the newest release's binary); {}",
                        blocking.join("; ")
                    )));
                }
                say!("migrations applied: every one of this binary's is; the schema also holds migration(s) {newer} of a newer release, which this binary leaves as they are (migrations only add: it serves as before)");
                return Ok(());
            }
        }
        // Its text says whether the migrations were applied, and the cause once (as a chain,
        // sqlx's cause would be repeated at each level).
        migrations::migrate(&pool)
            .await
            .map_err(|e| failure(anyhow::anyhow!("{e}")))?;
        say!("migrations applied");
        // What of Console's role's the gateway now refuses to run (its own look is the one just
        // migrated): said at once, not first by Console's write that fires a trigger of the
        // gateway's and fails, or by the next `check`.
        match crate::stores::schema::console_code_anywhere(&pool).await {
            Ok(Some(found)) => {
                for f in &found {
                    say!("warning: {f}");
                }
                if !found.is_empty() {
                    say!("warning: while these stand, the gateway does not read Console's tables where code of another role would run, and Console's writes that fire its triggers (a membership, a permission, an admin's erasure) fail; `rbac-gateway check --database-url` names them again");
                }
            }
            Ok(None) => say!("warning: this role may not run rbac_gateway_console_code: code of another role's on Console's tables is not looked for here (`rbac-gateway check --database-url` as the gateway's role looks)"),
            Err(e) => say!("warning: cannot look for code of another role's on Console's tables: {e}"),
        }
        Ok(())
    })
}
