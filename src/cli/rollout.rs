//! `rbac-gateway rollout`: per cluster of the mapping (003 §6, S1-S8), its rules and modes,
//! since when the fleet runs each in its mode, shadow denials and drift rows in the window,
//! blockers, and a verdict ([`crate::policy::cutover::assess`]). Exit codes for a CI gate: 1 when the
//! file promotes (enforces) a cluster that is not ready, or `--cluster` names one that is
//! neither ready nor enforced; 0 otherwise; 64 on bad usage.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;

use std::collections::HashMap;
use std::path::Path;

use super::toolbox::{
    command_pool, failure, load_mapping, load_stored_ref, runtime, say, stored_ref, usage,
};
use super::Exit;
use crate::cli::{args::RolloutArgs, EXIT_PROBLEMS};
use crate::gateway::reload::{load_stored, Unloadable};
use crate::policy::cutover::{
    assess, human, routes_of, timeline, Activation, ClusterStatus, LoadedRoute, Verdict,
};
use crate::policy::mapping::Mapping;
use crate::stores::mapping_store;
use crate::stores::rollout::{history, window};

/// What `rollout --json` prints, and the cockpit's board shows.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mapping: String,
    pub version: String,
    /// The version the fleet runs (its latest recorded load), when any is recorded.
    pub fleet_version: Option<String>,
    pub fleet_since: Option<chrono::DateTime<chrono::Utc>>,
    pub fleet_kill_switch: Option<bool>,
    /// Where the fleet's history comes from: "activations" (rbac_mapping_activations, when any
    /// were written) or "gateway loads" (rbac_gateway_mapping_versions).
    pub soak_from: &'static str,
    /// Activations of a version that does not load with this binary (not counted: the gateways
    /// stayed on the version before).
    pub unloadable_activations: Vec<String>,
    pub window_seconds: i64,
    pub clusters: Vec<ClusterStatus>,
    /// Clusters that fail the gate, and why.
    pub failing: Vec<String>,
    /// The database's clock when the report was made (soak times are counted to it).
    #[serde(skip)]
    pub now: chrono::DateTime<chrono::Utc>,
    /// A stored version (`--routes db:...`): what its tests gave at its push (`mapping push`,
    /// migration 0030); absent for a file, or a version pushed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<crate::stores::mapping_store::TestsRecord>,
    /// The seeds' invariants as the gateway's settings (this command's environment) and the
    /// database hold them; I-11 not met blocks every cluster.
    pub invariants: Vec<super::invariants::Invariant>,
}

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

pub fn rollout(args: RolloutArgs) -> Result<(), Exit> {
    let file = match stored_ref(&args.routes) {
        Some(_) => None,
        None => Some(load_mapping(&args.routes)?),
    };
    if let (Some(m), Some(c)) = (&file, &args.cluster) {
        known_cluster(m, &args.routes, c)?;
    }
    let window_seconds = i64::try_from(args.since.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| usage(anyhow!("--since must be a positive duration")))?;
    let report = runtime()?.block_on(async {
        let pool = command_pool(&args.database_url, 2, Duration::from_secs(10)).await?;
        report(
            &pool,
            &args.routes,
            file,
            window_seconds,
            args.cluster.as_deref(),
            (&args.decision.settings(), &args.posture.settings()),
        )
        .await
    })?;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => say!("{text}"),
            Err(e) => return Err(failure(e)),
        }
    } else {
        table(&report, report.now);
    }
    if !report.failing.is_empty() {
        return Err(Exit {
            code: EXIT_PROBLEMS,
            error: anyhow!("not ready: {}", report.failing.join(" | ")),
        });
    }
    Ok(())
}

/// The report of `rollout` for the mapping `routes` names (`file`, already loaded, or a `db:`
/// version read here), the soak window and, optionally, one cluster: what the command prints
/// and the cockpit's board shows.
pub(crate) async fn report(
    pool: &crate::stores::db::Db,
    routes: &Path,
    file: Option<Mapping>,
    window_seconds: i64,
    cluster: Option<&str>,
    settings: (
        &crate::runtime::posture::DecisionSettings,
        &crate::runtime::posture::PostureSettings,
    ),
) -> Result<Report, Exit> {
    let mapping = match (file, stored_ref(routes)) {
        (Some(m), _) => m,
        (None, what) => {
            let m = load_stored_ref(pool, what.unwrap_or("active")).await?;
            if let Some(c) = cluster {
                known_cluster(&m, routes, c)?;
            }
            m
        }
    };
    let rows = window(pool, window_seconds)
        .await
        .context("cannot read the shadow-mode audit rows")
        .map_err(failure)?;
    let Fleet {
        loads,
        from_activations,
        skipped,
        mut clusters,
        now,
    } = fleet(pool, &mapping, &rows, window_seconds).await?;
    if let Some(c) = cluster {
        clusters.retain(|s| s.cluster == c);
    }
    let invariants = super::invariants::invariants(pool, settings.0, settings.1).await;
    if let Some(blocker) = super::invariants::blocker(&invariants) {
        // I-11 blocks promotion everywhere: no cluster is ready to enforce while it is not met.
        for c in &mut clusters {
            if c.verdict == Verdict::Ready {
                c.verdict = Verdict::NotReady;
            }
            if c.verdict != Verdict::NotApplicable {
                c.blockers.push("I-11".to_string());
                c.reasons.push(format!("blocked by {blocker}"));
            }
        }
    }
    let failing = failing(&clusters, cluster);
    let tests = match stored_ref(routes) {
        Some(_) => mapping_store::tests_record(pool, &mapping.version)
            .await
            .context("cannot read the version's tests record (run `rbac-gateway migrate`?)")
            .map_err(failure)?
            .flatten(),
        None => None,
    };
    let latest = loads.first();
    Ok(Report {
        mapping: routes.display().to_string(),
        version: mapping.version.clone(),
        fleet_version: latest.map(|l| l.version.clone()),
        fleet_since: latest.map(|l| l.at),
        fleet_kill_switch: latest.map(|l| l.kill_switch),
        soak_from: if from_activations {
            "activations"
        } else {
            "gateway loads"
        },
        unloadable_activations: skipped,
        window_seconds,
        clusters,
        failing,
        now,
        tests,
        invariants,
    })
}

/// Every cluster of a mapping as the fleet has run it ([`assess`]), and what that was read from.
pub(crate) struct Fleet {
    /// The fleet's loads, newest first: from the activations where any were written, else the
    /// gateways' own records.
    pub loads: Vec<crate::policy::cutover::Load>,
    pub from_activations: bool,
    /// Activations of a version that does not load with this binary (not counted).
    pub skipped: Vec<String>,
    pub clusters: Vec<ClusterStatus>,
    /// The database's clock (soak times are counted to it).
    pub now: chrono::DateTime<chrono::Utc>,
}

/// [`Fleet`] for `mapping` over the window's `rows`: what `rollout` and `drift --cluster` judge.
pub(crate) async fn fleet(
    pool: &crate::stores::db::Db,
    mapping: &Mapping,
    rows: &[crate::policy::cutover::WindowRow],
    window_seconds: i64,
) -> Result<Fleet, Exit> {
    let loads = history(pool)
        .await
        .context("cannot read rbac_gateway_mapping_versions (run `rbac-gateway migrate`?)")
        .map_err(failure)?;
    let (activations, skipped) = activations(pool).await?;
    let now = crate::stores::rollout::now(pool).await.map_err(failure)?;
    let loads = timeline(&loads, &activations);
    let clusters = assess(mapping, &loads, rows, window_seconds, now);
    Ok(Fleet {
        loads,
        from_activations: !activations.is_empty(),
        skipped,
        clusters,
        now,
    })
}

/// The activations, each version compiled once (one that does not load was never run), and a
/// line for each activation of a version that does not load.
async fn activations(pool: &crate::stores::db::Db) -> Result<(Vec<Activation>, Vec<String>), Exit> {
    let times = mapping_store::activation_times(pool)
        .await
        .context("cannot read rbac_mapping_activations (run `rbac-gateway migrate`? does this role have SELECT on it, deploy/mapping-grants.sql?)")
        .map_err(failure)?;
    let mut compiled: HashMap<String, Option<HashMap<String, LoadedRoute>>> = HashMap::new();
    let mut skipped = Vec::new();
    let mut activations = Vec::new();
    for (id, version, at) in times {
        if !compiled.contains_key(&version) {
            let routes = match load_stored(pool, &version).await {
                Ok(m) => Some(routes_of(&m)),
                Err(Unloadable::Db(e)) => {
                    return Err(failure(anyhow!(
                        "cannot read mapping version {version}: {e}"
                    )))
                }
                Err(e) => {
                    skipped.push(format!("activation #{id} of {version}: {e}"));
                    None
                }
            };
            compiled.insert(version.clone(), routes);
        }
        activations.push(Activation {
            routes: compiled[&version].clone(),
            version,
            at,
        });
    }
    Ok((activations, skipped))
}

/// The gate's failures: with `cluster`, that one unless ready or enforced; without, each
/// cluster this file enforces that is not ready.
fn failing(clusters: &[ClusterStatus], cluster: Option<&str>) -> Vec<String> {
    clusters
        .iter()
        .filter(|s| match cluster {
            Some(_) => !matches!(s.verdict, Verdict::Ready | Verdict::Enforced),
            None => s.promoted && s.verdict != Verdict::Ready,
        })
        .map(|s| {
            format!(
                "{}{}: {}",
                s.cluster,
                if s.promoted {
                    " (enforced by this file)"
                } else {
                    ""
                },
                if s.reasons.is_empty() {
                    s.verdict.as_str().to_string()
                } else {
                    s.reasons.join("; ")
                }
            )
        })
        .collect()
}

fn table(r: &Report, now: chrono::DateTime<chrono::Utc>) {
    table_head(r, now);
    say!(
        "{:<9} {:>6} {:<18} {:>12} {:>8} {:>6}  verdict",
        "cluster",
        "rules",
        "modes (fleet)",
        "in shadow",
        "denials",
        "drift"
    );
    for c in &r.clusters {
        cluster_rows(r, c, now);
    }
    for line in super::invariants::lines(&r.invariants) {
        say!("{line}");
    }
    if r.failing.is_empty() {
        say!("gate: pass");
    } else {
        for f in &r.failing {
            say!("gate: FAIL {f}");
        }
    }
}

/// The table's head: the mapping and window, the tests at its push, what the fleet runs and
/// where soak is counted from.
fn table_head(r: &Report, now: chrono::DateTime<chrono::Utc>) {
    say!(
        "rollout: {} (version {}), window {} (since {})",
        r.mapping,
        r.version,
        human(r.window_seconds),
        (now - chrono::Duration::seconds(r.window_seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if stored_ref(Path::new(&r.mapping)).is_some() {
        say!(
            "tests at its push: {}",
            super::mapping::tests_said(r.tests.as_ref())
        );
    }
    match (&r.fleet_version, r.fleet_since) {
        (Some(v), Some(at)) => {
            say!(
                "fleet: runs version {v} since {}{}{}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                if r.fleet_kill_switch == Some(true) {
                    ", KILL SWITCH ON (every rule off)"
                } else {
                    ""
                },
                if *v == r.version {
                    String::new()
                } else {
                    format!(
                        "; {} is another version: modes and soak below are the fleet's, the file's are shown where they differ",
                        r.mapping
                    )
                }
            )
        }
        _ if r.soak_from == "activations" => say!("fleet: no activated version loads with this binary"),
        _ => say!("fleet: no mapping version recorded yet (gateways record one when they load a mapping; `rbac-gateway migrate` creates the table)"),
    }
    say!(
        "soak counted from: {}",
        if r.soak_from == "activations" {
            "the mapping activations (rbac_mapping_activations), kill switch from the gateways' records"
        } else {
            "the gateways' recorded loads (rbac_gateway_mapping_versions)"
        }
    );
    for s in &r.unloadable_activations {
        say!("not counted (does not load, never applied): {s}");
    }
}

/// A cluster's row of the table, and a line for each of its rules.
fn cluster_rows(r: &Report, c: &ClusterStatus, now: chrono::DateTime<chrono::Utc>) {
    let mut modes: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in &c.routes {
        *modes
            .entry(s.fleet_mode.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    let modes: Vec<String> = modes.iter().map(|(m, n)| format!("{n} {m}")).collect();
    let soaked = c
        .shadow_since
        .map_or("-".to_string(), |s| human((now - s).num_seconds()));
    say!(
        "{:<9} {:>6} {:<18} {:>12} {:>8} {:>6}  {}{}{}",
        c.cluster,
        c.routes.len(),
        modes.join(", "),
        soaked,
        c.shadow_denials,
        c.drift,
        c.verdict.as_str(),
        if c.reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", c.reasons.join("; "))
        },
        if c.promoted {
            " [this file enforces it]"
        } else {
            ""
        }
    );
    if let Some(t) = &c.title {
        say!("          {t}");
    }
    for s in &c.routes {
        let differs = s.fleet_mode.as_deref() != Some(s.file_mode.as_str());
        say!(
            "          {} {}{}{}{}{}",
            s.rule,
            s.fleet_mode
                .as_deref()
                .unwrap_or(if r.fleet_version.is_some() {
                    "not running"
                } else {
                    "unknown"
                }),
            s.since.map_or(String::new(), |t| format!(
                " since {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            if differs {
                format!(" (file: {})", s.file_mode)
            } else {
                String::new()
            },
            if s.shadow_denials + s.drift > 0 {
                format!(
                    ", {} would-be denial(s), {} drift",
                    s.shadow_denials, s.drift
                )
            } else {
                String::new()
            },
            s.pending
                .as_deref()
                .map_or(String::new(), |p| format!(", pending {p}"))
        );
    }
}
