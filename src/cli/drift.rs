//! `rbac-gateway drift`: shadow-mode drift per cluster and route (the drift part of `rollout`,
//! kept for the scripts that call it; both read [`crate::stores::rollout::window`]).

use std::time::Duration;

use anyhow::{anyhow, Context};

use super::toolbox::{command_pool, failure, load_mapping, runtime, say, usage};
use super::Exit;
use crate::cli::{args::DriftArgs, EXIT_PROBLEMS};

/// A cluster no rule names would report zero drift: a typo must not pass the go/no-go gate
/// (`drift --cluster`, `rollout --cluster`).
pub(crate) fn known_cluster(
    mapping: &crate::policy::mapping::Mapping,
    file: &std::path::Path,
    w: &str,
) -> Result<(), Exit> {
    let known: std::collections::BTreeSet<&str> = mapping
        .routes
        .iter()
        .filter_map(|r| r.meta.cluster.as_deref())
        .collect();
    if !known.contains(w) {
        let list = known.into_iter().collect::<Vec<_>>().join(", ");
        return Err(usage(anyhow!(
            "--cluster {w}: no rule of {} names this cluster (clusters: {list})",
            file.display()
        )));
    }
    Ok(())
}

/// The drift part of `rollout`'s report, over a window in hours: the same rows
/// ([`crate::stores::rollout::window`]), per cluster and rule; exits 1 on any drift.
pub fn drift(args: DriftArgs) -> Result<(), Exit> {
    let mapping = load_mapping(&args.routes)?;
    if let Some(w) = args.cluster.as_deref() {
        known_cluster(&mapping, &args.routes, w)?;
    }
    let cluster_of = |label: &str| {
        mapping
            .routes
            .iter()
            .find(|r| r.label() == label)
            .and_then(|r| r.meta.cluster.clone())
            .unwrap_or_else(|| "-".to_string())
    };
    let rows: Vec<(Option<String>, String, String, i64)> = runtime()?.block_on(async {
        let pool = command_pool(&args.database_url, 1, Duration::from_secs(10)).await?;
        crate::stores::rollout::window(&pool, i64::from(args.since_hours) * 3600)
            .await
            .context("cannot read drift events")
            .map_err(failure)
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
    if drift_total > 0 {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("{drift_total} drift event(s) in the window"),
        });
    }
    say!("zero drift");
    Ok(())
}
