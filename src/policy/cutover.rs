//! The cutover's stages (003 §6), judged: which mapping the fleet ran since when (a [`Load`]
//! each, filled by `stores/rollout.rs`), what shadow mode recorded in a window ([`WindowRow`]),
//! and a verdict per cluster ([`assess`]). Pure: the rows are read by the store, printed by
//! `rollout` and the cockpit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::audit_event::EVENT_DRIFT;
use crate::policy::mapping::{Access, Mapping, Route};

/// One rule as a recorded mapping had it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LoadedRoute {
    pub mode: String,
    pub cluster: Option<String>,
    pub access: String,
}

/// A row of `rbac_gateway_mapping_versions`: the fleet switched to this mapping at `at`.
#[derive(Debug, Clone)]
pub struct Load {
    pub version: String,
    pub kill_switch: bool,
    pub routes: HashMap<String, LoadedRoute>,
    pub at: DateTime<Utc>,
}

impl Load {
    /// The mode a rule ran in under this load (the kill switch applied); None when the mapping
    /// had no such rule. Rules that need no session run as their access (public, ...).
    pub fn mode(&self, label: &str) -> Option<&str> {
        let r = self.routes.get(label)?;
        Some(if r.access != "protected" {
            r.access.as_str()
        } else if self.kill_switch {
            "off"
        } else {
            r.mode.as_str()
        })
    }
}

/// What the rules of `mapping` are, as a [`Load`] holds them.
pub fn routes_of(mapping: &Mapping) -> HashMap<String, LoadedRoute> {
    mapping
        .routes
        .iter()
        .map(|r| {
            (
                r.label().to_string(),
                LoadedRoute {
                    mode: r.mode.as_str().to_string(),
                    cluster: r.meta.cluster.clone(),
                    access: r.access.as_str().to_string(),
                },
            )
        })
        .collect()
}

/// One activation of the mapping store (`mapping push|activate|rollback`): the fleet switched to
/// `version` at `at`; `routes` is None when that version does not load with this binary (the
/// gateways stayed on the one before).
#[derive(Debug, Clone)]
pub struct Activation {
    pub version: String,
    pub routes: Option<HashMap<String, LoadedRoute>>,
    pub at: DateTime<Utc>,
}

/// The fleet's history, newest first, when mappings come from the database: the activations say
/// which version ran from when (the moment of the change, not when a gateway got round to
/// recording it); the gateways' recorded loads still say when the kill switch changed, and what
/// ran before the first activation. Without activations, the recorded loads as they are.
pub fn timeline(loads: &[Load], activations: &[Activation]) -> Vec<Load> {
    if activations.is_empty() {
        return loads.to_vec();
    }
    enum Event<'a> {
        Loaded(&'a Load),
        Activated(&'a Activation),
    }
    let mut events: Vec<(DateTime<Utc>, u8, Event)> = loads
        .iter()
        .map(|l| (l.at, 1, Event::Loaded(l)))
        .chain(activations.iter().map(|a| (a.at, 0, Event::Activated(a))))
        .collect();
    // Oldest first; at one instant the activation first (its gateways record it after).
    events.sort_by_key(|e| (e.0, e.1));
    let mut out: Vec<Load> = Vec::new();
    let mut state: Option<Load> = None;
    let mut activated = false;
    for (at, _, event) in events {
        let next = match (event, &state) {
            (Event::Loaded(l), _) if !activated => Load { at, ..l.clone() },
            (Event::Loaded(l), Some(s)) => Load {
                kill_switch: l.kill_switch,
                at,
                ..s.clone()
            },
            (Event::Loaded(_), None) => continue,
            (Event::Activated(a), s) => {
                // A version that does not load was never run: the fleet stayed where it was.
                let Some(routes) = &a.routes else { continue };
                activated = true;
                Load {
                    version: a.version.clone(),
                    kill_switch: s.as_ref().is_some_and(|s| s.kill_switch),
                    routes: routes.clone(),
                    at,
                }
            }
        };
        let same = state
            .as_ref()
            .is_some_and(|s| s.version == next.version && s.kill_switch == next.kill_switch);
        if !same {
            out.push(next.clone());
        }
        state = Some(next);
    }
    out.reverse();
    out
}

/// Shadow-mode rows of the window: (route label, event type, reason, count).
pub type WindowRow = (Option<String>, String, String, i64);

/// What a rule has been through, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub rule: String,
    /// As the file says (the kill switch is the fleet's, not the file's).
    pub file_mode: String,
    /// As the fleet runs it (the latest recorded load); None: not in the running mapping, or
    /// nothing recorded.
    pub fleet_mode: Option<String>,
    /// Since when the fleet has run it in `fleet_mode` (as far back as the records go).
    pub since: Option<DateTime<Utc>>,
    pub shadow_denials: i64,
    pub drift: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every protected rule runs in enforce.
    Enforced,
    /// Soaked in shadow for the whole window, 0 drift rows, no blocker.
    Ready,
    NotReady,
    /// No protected rule (public, machine): nothing to promote.
    NotApplicable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Enforced => "enforced",
            Verdict::Ready => "ready to enforce",
            Verdict::NotReady => "not ready",
            Verdict::NotApplicable => "n/a",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub title: Option<String>,
    pub declared: bool,
    pub routes: Vec<RouteStatus>,
    /// The cluster's `blocked_by` and the `pending` decisions of its rules.
    pub blockers: Vec<String>,
    pub shadow_denials: i64,
    pub drift: i64,
    /// Since when every not-yet-enforced protected rule has been in shadow (the shortest).
    pub shadow_since: Option<DateTime<Utc>>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// The reasons that say the fleet has not run the cluster in shadow for the whole window
    /// (of `reasons`, those about neither drift nor blockers): `drift --cluster`'s gate.
    #[serde(skip)]
    pub unsoaked: Vec<String>,
    /// The file enforces a protected rule the fleet does not enforce yet.
    pub promoted: bool,
}

/// A duration as an operator reads it ("6d 23h", "45m").
pub fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        (_, 0) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// The verdict of every cluster of `mapping` (declared, named by a rule, and "-" for rules in
/// none), from the loads (newest first) and the window's rows.
pub fn assess(
    mapping: &Mapping,
    history: &[Load],
    rows: &[WindowRow],
    window_seconds: i64,
    now: DateTime<Utc>,
) -> Vec<ClusterStatus> {
    let counts = window_counts(rows);
    let window = Window {
        seconds: window_seconds,
        now,
    };
    clusters_of(mapping)
        .into_iter()
        .map(|(name, routes)| cluster_status(mapping, name, &routes, history, &counts, window))
        .collect()
}

/// Per route label, the window's shadow denials and drift rows.
type Counts<'a> = HashMap<&'a str, (i64, i64)>;

/// The shadow window: its length, ending now.
#[derive(Clone, Copy)]
struct Window {
    seconds: i64,
    now: DateTime<Utc>,
}

/// Adds the window's rows up per route label (a row without one under "-").
fn window_counts(rows: &[WindowRow]) -> Counts<'_> {
    let mut counts: Counts = HashMap::new();
    for (route, event, _, n) in rows {
        let e = counts.entry(route.as_deref().unwrap_or("-")).or_default();
        if event == EVENT_DRIFT {
            e.1 += n;
        } else {
            e.0 += n;
        }
    }
    counts
}

/// The rules of each cluster, by name: every declared cluster (even without a rule), each
/// cluster a rule names, and "-" for the rules in none.
fn clusters_of(mapping: &Mapping) -> BTreeMap<String, Vec<&Route>> {
    let mut by_cluster: BTreeMap<String, Vec<&Route>> = mapping
        .clusters
        .keys()
        .map(|c| (c.clone(), Vec::new()))
        .collect();
    for r in &mapping.routes {
        let c = r.meta.cluster.clone().unwrap_or_else(|| "-".into());
        by_cluster.entry(c).or_default().push(r);
    }
    by_cluster
}

/// One cluster's rules, blockers and counts, and its verdict with the reasons for it.
fn cluster_status(
    mapping: &Mapping,
    name: String,
    routes: &[&Route],
    history: &[Load],
    counts: &Counts,
    window: Window,
) -> ClusterStatus {
    let declared = mapping.clusters.get(&name);
    let mut blockers: BTreeSet<String> = declared
        .map(|c| c.blocked_by.iter().cloned().collect())
        .unwrap_or_default();
    let mut statuses = Vec::new();
    for r in routes {
        if let Some(p) = &r.meta.pending {
            blockers.insert(p.clone());
        }
        statuses.push(route_status(r, history, counts));
    }
    let protected: Vec<(&Route, &RouteStatus)> = routes
        .iter()
        .zip(&statuses)
        .filter(|(r, _)| r.access == Access::Protected)
        .map(|(r, s)| (*r, s))
        .collect();
    let shadow_denials = statuses.iter().map(|s| s.shadow_denials).sum();
    let drift = statuses.iter().map(|s| s.drift).sum();
    let blockers: Vec<String> = blockers.into_iter().collect();
    let pending: Vec<&RouteStatus> = protected
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| s.fleet_mode.as_deref() != Some("enforce"))
        .collect();
    let promoted = pending.iter().any(|s| s.file_mode == "enforce");
    let shadow_since = pending
        .iter()
        .filter(|s| s.fleet_mode.as_deref() == Some("shadow"))
        .filter_map(|s| s.since)
        .max();
    let (verdict, reasons, unsoaked) = if protected.is_empty() {
        (Verdict::NotApplicable, Vec::new(), Vec::new())
    } else if pending.is_empty() {
        (
            Verdict::Enforced,
            enforced_reasons(&protected, &blockers),
            Vec::new(),
        )
    } else {
        let recorded = !history.is_empty();
        let reasons = not_ready_reasons(recorded, &pending, shadow_since, drift, &blockers, window);
        let unsoaked = not_ready_reasons(recorded, &pending, shadow_since, 0, &[], window);
        let verdict = if reasons.is_empty() {
            Verdict::Ready
        } else {
            Verdict::NotReady
        };
        (verdict, reasons, unsoaked)
    };
    ClusterStatus {
        cluster: name,
        title: declared.and_then(|c| c.title.clone()),
        declared: declared.is_some(),
        routes: statuses,
        blockers,
        shadow_denials,
        drift,
        shadow_since,
        verdict,
        reasons,
        unsoaked,
        promoted,
    }
}

/// One rule as the file has it, as the fleet runs it and since when, with its window's counts.
fn route_status(r: &Route, history: &[Load], counts: &Counts) -> RouteStatus {
    let label = r.label();
    let fleet_mode = history
        .first()
        .and_then(|l| l.mode(label))
        .map(str::to_string);
    let since = fleet_mode.as_deref().and_then(|mode| {
        history
            .iter()
            .take_while(|l| l.mode(label) == Some(mode))
            .last()
            .map(|l| l.at)
    });
    let (shadow_denials, drift) = counts.get(label).copied().unwrap_or_default();
    RouteStatus {
        rule: label.to_string(),
        file_mode: if r.access == Access::Protected {
            r.mode.as_str().to_string()
        } else {
            r.access.as_str().to_string()
        },
        fleet_mode,
        since,
        shadow_denials,
        drift,
        pending: r.meta.pending.clone(),
    }
}

/// What is wrong with a cluster the fleet enforces: blockers left, or a file that would take a
/// protected rule out of enforce.
fn enforced_reasons(protected: &[(&Route, &RouteStatus)], blockers: &[String]) -> Vec<String> {
    let mut reasons = Vec::new();
    if !blockers.is_empty() {
        reasons.push(format!(
            "enforced while still blocked by {}",
            blockers.join(", ")
        ));
    }
    if let Some(s) = protected.iter().find(|(_, s)| s.file_mode != "enforce") {
        reasons.push(format!(
            "the file runs {} in {}: swapping it in leaves enforce",
            s.1.rule, s.1.file_mode
        ));
    }
    reasons
}

/// Why a cluster not yet enforced is not ready (none: ready): no record of the fleet, rules not
/// in shadow, a soak shorter than the window, drift, blockers.
fn not_ready_reasons(
    recorded: bool,
    pending: &[&RouteStatus],
    shadow_since: Option<DateTime<Utc>>,
    drift: i64,
    blockers: &[String],
    window: Window,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if !recorded {
        reasons.push("no record of the mapping the fleet runs (rbac_gateway_mapping_versions is empty: a gateway writes it when it loads a mapping)".into());
    } else {
        let mut elsewhere: BTreeMap<&str, usize> = BTreeMap::new();
        for s in pending {
            match s.fleet_mode.as_deref() {
                Some("shadow") => {}
                Some(other) => *elsewhere.entry(other).or_default() += 1,
                None => *elsewhere.entry("not in the running mapping").or_default() += 1,
            }
        }
        for (mode, n) in elsewhere {
            reasons.push(if mode.starts_with("not ") {
                format!("{n} rule(s) {mode}")
            } else {
                format!("{n} rule(s) in mode {mode}, not shadow")
            });
        }
        if let Some(since) = shadow_since {
            if since > window.now - chrono::Duration::seconds(window.seconds) {
                reasons.push(format!(
                    "in shadow for {} of {} (since {})",
                    human((window.now - since).num_seconds()),
                    human(window.seconds),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
    }
    if drift > 0 {
        reasons.push(format!("{drift} drift row(s) in the window"));
    }
    if !blockers.is_empty() {
        reasons.push(format!("blocked by {}", blockers.join(", ")));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::audit_event::EVENT_SHADOW_DENIED;
    use crate::policy::mapping::fixture::rules;

    /// Four clusters of one protected rule each, S1 and S2 in `first_two` (shadow, or
    /// enforce for a file promoting them), S3 in shadow and blocked, S4 as its rule says; and
    /// a public one.
    fn mapping(first_two: &str) -> Mapping {
        rules()
            .declare("S1")
            .mode(first_two)
            .declare("S2")
            .mode(first_two)
            .declare("S3")
            .mode("shadow")
            .blocked_by(&["AMBIGUOUS-2"])
            .declare("S4")
            .declare("public")
            .route("GET", "/s1")
            .roles(&["r"])
            .cluster("S1")
            .route("GET", "/s2")
            .roles(&["r"])
            .cluster("S2")
            .route("GET", "/s3")
            .roles(&["r"])
            .cluster("S3")
            .route("GET", "/s4")
            .roles(&["r"])
            .cluster("S4")
            .route("GET", "/p")
            .access("public")
            .cluster("public")
            .mapping()
    }

    fn load(at: DateTime<Utc>, kill: bool, modes: &[(&str, &str)]) -> Load {
        Load {
            version: "v".into(),
            kill_switch: kill,
            routes: modes
                .iter()
                .map(|(l, m)| {
                    (
                        l.to_string(),
                        LoadedRoute {
                            mode: m.to_string(),
                            cluster: None,
                            access: "protected".into(),
                        },
                    )
                })
                .collect(),
            at,
        }
    }

    #[test]
    fn verdicts_follow_soak_drift_blockers_and_the_kill_switch() {
        let m = mapping("shadow");
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        let all = [
            ("GET /s1", "shadow"),
            ("GET /s2", "shadow"),
            ("GET /s3", "shadow"),
            ("GET /s4", "enforce"),
        ];
        // Newest first: S2 entered shadow 2 days ago, the rest 10 days ago; a kill-switch
        // period 12 days ago ended every soak then.
        let history = vec![
            load(days(2), false, &all),
            load(
                days(10),
                false,
                &[
                    ("GET /s1", "shadow"),
                    ("GET /s2", "off"),
                    ("GET /s3", "shadow"),
                    ("GET /s4", "enforce"),
                ],
            ),
            load(days(12), true, &all),
        ];
        let rows: Vec<WindowRow> = vec![
            (
                Some("GET /s1".into()),
                EVENT_SHADOW_DENIED.into(),
                "missing_role".into(),
                4,
            ),
            (
                Some("GET /s3".into()),
                EVENT_DRIFT.into(),
                "gateway_denied_console_allowed".into(),
                1,
            ),
        ];
        let week = 7 * 86_400;
        let got = assess(&m, &history, &rows, week, now);
        let verdict = |c: &str| {
            let s = got.iter().find(|s| s.cluster == c).unwrap();
            (s.verdict, s.reasons.join("; "))
        };
        assert_eq!(verdict("S1"), (Verdict::Ready, String::new()));
        let (v, why) = verdict("S2");
        assert_eq!(v, Verdict::NotReady);
        assert!(why.starts_with("in shadow for 2d of 7d (since "), "{why}");
        let (v, why) = verdict("S3");
        assert_eq!(v, Verdict::NotReady);
        assert_eq!(why, "1 drift row(s) in the window; blocked by AMBIGUOUS-2");
        assert_eq!(verdict("S4"), (Verdict::Enforced, String::new()));
        assert_eq!(verdict("public").0, Verdict::NotApplicable);
        let s1 = got.iter().find(|s| s.cluster == "S1").unwrap();
        assert_eq!((s1.shadow_denials, s1.drift, s1.promoted), (4, 0, false));
        assert_eq!(s1.routes[0].since, Some(days(10)));

        // The same soak under a 7-day window that began while the kill switch was on: S1 has
        // soaked only since the switch went off.
        let got = assess(&m, &history[..], &rows, 11 * 86_400, now);
        let s1 = got.iter().find(|s| s.cluster == "S1").unwrap();
        assert_eq!(s1.verdict, Verdict::NotReady, "{:?}", s1.reasons);

        // A file promoting S1 and S2 (enforce) against the same fleet.
        let p = mapping("enforce");
        let got = assess(&p, &history, &rows, week, now);
        let s = |c: &str| got.iter().find(|s| s.cluster == c).unwrap();
        assert!(s("S1").promoted && s("S1").verdict == Verdict::Ready);
        assert!(s("S2").promoted && s("S2").verdict == Verdict::NotReady);
        assert!(!s("S3").promoted);

        // Nothing recorded: nothing is ready.
        let got = assess(&m, &[], &[], week, now);
        let s1 = got.iter().find(|s| s.cluster == "S1").unwrap();
        assert_eq!(s1.verdict, Verdict::NotReady);
        assert!(
            s1.reasons[0].starts_with("no record of the mapping"),
            "{:?}",
            s1.reasons
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(45 * 60), "45m");
        assert_eq!(human(3 * 3600 + 60), "3h 1m");
        assert_eq!(human(7 * 86_400 + 3600), "7d 1h");
        assert_eq!(human(7 * 86_400 + 59), "7d");
    }
}
