//! `rbac-gateway drift`: shadow-mode drift per cluster and route (the drift part of `rollout`,
//! kept for the scripts that call it; both read [`crate::stores::rollout::window`]).

use std::time::Duration;

use anyhow::{anyhow, Context};

use super::toolbox::{command_pool, failure, load_mapping, runtime, say};
use super::Exit;
use crate::cli::{args::DriftArgs, EXIT_PROBLEMS};

/// The drift part of `rollout`'s report, over a window in hours: the same rows
/// ([`crate::stores::rollout::window`]), per cluster and rule; exits 1 on any drift and, with
/// `--cluster`, where the fleet has not run that cluster in shadow for the whole window (read as
/// `rollout` reads it, so the login needs what `rollout` needs: deploy/mapping-grants.sql).
pub fn drift(args: DriftArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    if let Some(w) = args.cluster.as_deref() {
        super::rollout::known_cluster(&mapping, &args.routes, w)?;
    }
    let cluster_of = |label: &str| {
        mapping
            .routes
            .iter()
            .find(|r| r.label() == label)
            .and_then(|r| r.meta.cluster.clone())
            .unwrap_or_else(|| "-".to_string())
    };
    let window_seconds = i64::from(args.since_hours) * 3600;
    let (rows, soak) = runtime()?.block_on(async {
        let pool = command_pool(&args.database_url, 1, Duration::from_secs(10)).await?;
        let rows = crate::stores::rollout::window(&pool, window_seconds)
            .await
            .context("cannot read drift events")
            .map_err(failure)?;
        // The gate (`--cluster`) also asks how long the fleet ran the cluster in shadow: zero
        // drift over a cluster the fleet never ran in shadow is no soak.
        let soak = match args.cluster.as_deref() {
            Some(w) => super::rollout::fleet(&pool, &mapping, &rows, window_seconds)
                .await?
                .clusters
                .into_iter()
                .find(|c| c.cluster == w),
            None => None,
        };
        Ok::<_, Exit>((rows, soak))
    })?;
    let wanted = |c: &str| args.cluster.as_deref().is_none_or(|w| w == c);
    let mut clusters: std::collections::BTreeMap<String, (usize, i64, i64)> = Default::default();
    for r in mapping
        .routes
        .iter()
        .filter(|r| r.mode == crate::policy::mapping::Mode::Shadow)
    {
        let c = r.meta.cluster.clone().unwrap_or_else(|| "-".into());
        clusters.entry(c).or_default().0 += 1;
    }
    say!(
        "drift report: last {} h, mapping {} ({})",
        args.since_hours,
        args.routes.display(),
        mapping.version
    );
    let mut drift_total = 0;
    let mut lines = Vec::new();
    for (route, event, reason, n) in &rows {
        let label = route.clone().unwrap_or_else(|| "-".into());
        let c = cluster_of(&label);
        if !wanted(&c) {
            continue;
        }
        let entry = clusters.entry(c.clone()).or_default();
        if event == crate::policy::audit_event::EVENT_DRIFT {
            entry.1 += n;
            drift_total += n;
            lines.push(format!("  DRIFT {label} [{c}]: {n} x {reason}"));
        } else {
            entry.2 += n;
        }
    }
    for (c, (rules, drift, would_deny)) in clusters.iter().filter(|(c, _)| wanted(c)) {
        say!("cluster {c}: {rules} shadow rule(s), {drift} drift event(s), {would_deny} would-be denial(s)");
    }
    for l in &lines {
        say!("{l}");
    }
    // As `rollout --cluster` judges it: an enforced cluster passes (it was promoted), one the
    // fleet has not run in shadow for the whole window does not, whatever its drift.
    let mut failed = Vec::new();
    if drift_total > 0 {
        failed.push(format!("{drift_total} drift event(s) in the window"));
    }
    if let (Some(w), Some(c)) = (args.cluster.as_deref(), soak) {
        if c.verdict == crate::policy::cutover::Verdict::Enforced {
            say!("cluster {w}: the fleet enforces every protected rule of it (no drift is counted in enforce)");
        }
        for why in &c.unsoaked {
            say!("cluster {w}: not in shadow for the whole window: {why}");
        }
        if !c.unsoaked.is_empty() {
            failed.push(format!(
                "cluster {w} has not run in shadow in the fleet for the whole window (`rollout --cluster {w}` says since when)"
            ));
        }
    }
    if !failed.is_empty() {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("{}", failed.join("; ")),
        });
    }
    say!("zero drift");
    Ok(())
}
