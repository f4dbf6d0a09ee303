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
        // Its text says whether the migrations were applied, and the cause once (as a chain,
        // sqlx's cause would be repeated at each level).
        migrations::migrate(&pool)
            .await
            .map_err(|e| failure(anyhow::anyhow!("{e}")))?;
        say!("migrations applied");
        Ok(())
    })
}
