//! `rbac-gateway sweep`: the lifecycle sweep once (ticket auto-revoke, break-glass expiry rows).

use std::time::Duration;

use anyhow::anyhow;

use super::toolbox::{command_pool, failure, runtime, say};
use super::Exit;
use crate::cli::{args::SweepArgs, EXIT_PROBLEMS};
use crate::jobs::{alerts, sweep};

pub fn sweep(args: SweepArgs) -> Result<(), Exit> {
    let (swept, alerts) = runtime()?.block_on(async {
        let limit = Duration::from_secs(10);
        let pool = command_pool(&args.database_url, 2, limit).await?;
        let settings = sweep::SweepSettings {
            validation_url: args.ticket_validation_url.clone(),
            freescout_timeout: Duration::from_millis(args.freescout_timeout_ms.max(1)),
            concurrency: args.freescout_concurrency.max(1),
            limit,
        };
        let swept = sweep::sweep_once(&pool, settings, args.force).await;
        // Run whatever the sweep met: the alerts it records and delivers (break-glass ones
        // among them) do not wait for the sweep (a table of Console's it could not read).
        let alerts = alerts::alerts_once(
            &pool,
            args.alert_webhook_url.as_deref(),
            limit,
            &alerts::Gone::default(),
        )
        .await;
        Ok::<_, Exit>((swept, alerts))
    })?;
    if let Ok(alerts) = &alerts {
        say_alerts(alerts);
    }
    let (report, alerts) = match (swept, alerts) {
        (Ok(report), Ok(alerts)) => (report, alerts),
        (swept, alerts) => {
            let unmigrated = [swept.as_ref().err(), alerts.as_ref().err()]
                .into_iter()
                .flatten()
                .any(super::unmigrated);
            let hint = if unmigrated { super::MIGRATE_HINT } else { "" };
            let failed: Vec<String> = [
                swept.err().map(|e| {
                    format!(
                        "sweep failed (grants it handled stay handled; the rest is retried): {e}"
                    )
                }),
                alerts.err().map(|e| format!("alert pass failed: {e}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            return Err(failure(anyhow!("{}{hint}", failed.join("; "))));
        }
    };
    if report.skipped {
        // The alert pass above ran all the same: its failures still make the exit code.
        say!("another replica holds the sweep's lock (a serving gateway keeps it while it runs and sweeps every --sweep-interval seconds): nothing done; --force sweeps now all the same");
    } else {
        for (grant, ticket, reason) in &report.revoked {
            say!("revoked ticket grant {grant} (ticket {ticket}): {reason}");
        }
        for s in &report.break_glass_expired {
            say!("break-glass session {s} ended: break_glass_expire row written");
        }
        for (t, e) in &report.freescout_failures {
            say!("FreeScout did not answer for ticket {t} ({e}): its grants are kept");
        }
        for (item, e) in &report.failures {
            say!("{item}: its rows could not be written ({e}): nothing of it committed, retried next sweep");
        }
        say!(
            "sweep: {} grant(s) revoked, {} break-glass expiry row(s), {} FreeScout failure(s), {} failed item(s)",
            report.revoked.len(),
            report.break_glass_expired.len(),
            report.freescout_failures.len(),
            report.failures.len()
        );
    }
    if !alerts.failed.is_empty() {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!(
                "the alert webhook failed for {} alert(s)",
                alerts.failed.len()
            ),
        });
    }
    if let crate::stores::alerts::Look::Found(unread) = &alerts.consoles_tables {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!(
                "the database refused the alert pass's read of Console's tables: {}",
                unread.found
            ),
        });
    }
    if !report.failures.is_empty() {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!(
                "{} grant(s) or break-glass session(s) could not be written",
                report.failures.len()
            ),
        });
    }
    if !report.freescout_failures.is_empty() {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!(
                "FreeScout failed for {} ticket(s)",
                report.freescout_failures.len()
            ),
        });
    }
    Ok(())
}

/// What the alert pass found, raised and delivered, one line each.
fn say_alerts(alerts: &alerts::AlertReport) {
    use crate::stores::alerts::Look;
    if alerts.skipped {
        say!("alert pass: another replica's pass is running right now: skipped");
    }
    if let Some(e) = &alerts.waited {
        say!("alert pass: a read of Console's tables waited past the lock timeout or was cancelled ({e}): what it reads is alerted by the next pass");
    }
    if let Look::Found(silent) = &alerts.silent_triggers {
        say!(
            "triggers of the gateway's do not fire as migrate made them: what they record goes unrecorded until they do (alert {}): {}",
            silent.key,
            silent.found
        );
    }
    if let Look::Found(code) = &alerts.console_code {
        say!(
            "Console's tables carry code that would run as the gateway: the alert pass read none of them (alert {}): {}",
            code.key,
            code.found
        );
    }
    if let Look::Found(unread) = &alerts.consoles_tables {
        say!(
            "the database refused the alert pass's read of Console's tables: new break-glass sessions, group changes and deploy windows go unalerted until it answers (alert {}): {}",
            unread.key,
            unread.found
        );
    }
    for k in &alerts.raised {
        say!("alert raised: {k}");
    }
    for k in &alerts.delivered {
        say!("alert delivered: {k}");
    }
    for (k, e) in &alerts.failed {
        say!("alert delivery failed: {k} ({e}); retried later");
    }
}
