//! `rbac-gateway migrate`: applies the embedded migrations.

use std::time::Duration;

use anyhow::Context;

use super::toolbox::{command_pool, failure, runtime, say};
use super::Exit;
use crate::cli::args::MigrateArgs;
use crate::stores::migrations;

pub fn migrate(args: MigrateArgs) -> Result<(), Exit> {
    runtime()?.block_on(async {
        let pool = command_pool(&args.database_url, 1, Duration::from_secs(30)).await?;
        migrations::migrate(&pool)
            .await
            .context("migration failed")
            .map_err(failure)?;
        say!("migrations applied");
        Ok(())
    })
}
