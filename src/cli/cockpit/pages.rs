//! The cockpit's HTML: each page renders a command's report, nothing else.
//!
//! Templates are [maud](https://maud.lambda.xyz): the markup is Rust, checked by the compiler
//! against the report types it renders (a renamed field fails the build, not a page at 2 a.m.),
//! every spliced value is HTML-escaped unless wrapped in `PreEscaped` (nothing here is), and
//! there is no template folder to ship or find at run time (askama reads `templates/` at build
//! time; the repository's top level is fixed, `tests/architecture.rs`). No JavaScript: filters
//! are plain GET forms, one inline style sheet with an `@media print` block.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use maud::{html, Markup, DOCTYPE};

use super::Denials;
use crate::cli::access::{Cell, Reach};
use crate::cli::diff::Report as DiffReport;
use crate::cli::mapping::History;
use crate::cli::matrix::{short, Matrix};
use crate::cli::rollout::Report as Rollout;
use crate::policy::cutover::{human, Verdict};

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 1.5rem 2rem;color:#1a1a1a;background:#fff}
nav{display:flex;gap:1.2rem;align-items:baseline;border-bottom:2px solid #1a1a1a;padding:.6rem 0;margin-bottom:1rem}
nav b{font-size:1.05rem;margin-right:1rem} nav a{color:#1d4ed8;text-decoration:none} nav a.here{color:#1a1a1a;font-weight:700;text-decoration:underline}
h1{font-size:1.35rem;margin:.4rem 0} h2{font-size:1.1rem;margin:1.4rem 0 .4rem} h3{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0 1rem} th,td{border:1px solid #c8c8c8;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f1f1f1} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12.5px}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere;margin:.2rem 0}
.muted{color:#666} .warn{background:#fff4d6;border:1px solid #e0b000;padding:.4rem .6rem;margin:.5rem 0}
.alarm{background:#b91c1c;color:#fff;padding:.5rem .7rem;font-weight:700;margin:.5rem 0}
.v{display:inline-block;padding:0 .45rem;border-radius:3px;font-weight:600;white-space:nowrap}
.v-ready{background:#15803d;color:#fff} .v-enforced{background:#1e3a8a;color:#fff} .v-not_ready{background:#fde68a;color:#5a3d00} .v-not_applicable{background:#e5e7eb;color:#374151}
td.c{text-align:center;white-space:nowrap;font-size:12.5px} .yes{background:#dcf5dc} .console{background:#fff1c2} .no{background:#f8dada}
td.changed{outline:3px solid #1d4ed8;outline-offset:-3px;font-weight:700}
tr.cluster th{background:#dfe6f3;text-align:left}
form{margin:.4rem 0 .8rem} form label{margin-right:.8rem} input,select{font:inherit}
.plus{color:#15803d} .minus{color:#b91c1c}
@media print{nav,form,.noprint{display:none} body{margin:0;font-size:10.5px} a{color:inherit;text-decoration:none}
 table{page-break-inside:auto} tr{break-inside:avoid} thead{display:table-header-group} pre{white-space:pre-wrap}
 .yes,.console,.no,.v{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"#;

/// The page around `content`: the navigation, the JSON link, the time the report took.
pub fn layout(page: &str, content: &Markup, took: Duration) -> Markup {
    let nav = [
        ("/", "Board"),
        ("/timeline", "Timeline"),
        ("/matrix", "Matrix"),
        ("/denials", "Denials"),
    ];
    let here = if page == "/board" { "/" } else { page };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "rbac-gateway cockpit" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav {
                    b { "rbac-gateway cockpit" }
                    @for (href, name) in nav {
                        a href=(href) class=[(href == here).then_some("here")] { (name) }
                    }
                    span.muted.noprint {
                        "read-only"
                        @if let Some(json) = json_href(page) { " · " a href=(json) { "JSON" } }
                    }
                }
                (content)
                p.muted { "Report made in " (format!("{:.0}", took.as_secs_f64() * 1e3)) " ms." }
            }
        }
    }
}

/// The page's JSON form, a path on this site; None when `page` (the request's path, the
/// client's choice) does not begin with exactly one `/`: `//host/x` and `/\host/x` are links
/// to another site (a browser reads a backslash there as a slash).
fn json_href(page: &str) -> Option<String> {
    let page = if page == "/" { "/board" } else { page };
    let mut chars = page.chars();
    let on_site = chars.next() == Some('/') && !matches!(chars.next(), Some('/' | '\\'));
    on_site.then(|| format!("{page}.json"))
}

pub fn problem(message: &str) -> Markup {
    html! {
        h1 { "Cannot show this page" }
        pre { (message) }
    }
}

fn at(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Enforced => "v v-enforced",
        Verdict::Ready => "v v-ready",
        Verdict::NotReady => "v v-not_ready",
        Verdict::NotApplicable => "v v-not_applicable",
    }
}

/// The board: `rollout --json` for the active version, one row per cluster in the mapping's
/// (003 §6) order.
pub fn board(r: &Rollout) -> Markup {
    html! {
        h1 { "Cutover board" }
        @if r.fleet_kill_switch == Some(true) {
            div.alarm { "KILL SWITCH ON: the fleet runs every rule off (FLAG_RBAC_V2=0)." }
        }
        p {
            "Active mapping " code { (r.version) } "; "
            @match (&r.fleet_version, r.fleet_since) {
                (Some(v), Some(since)) => {
                    "the fleet runs " code { (v) } " since " (at(&since)) "."
                    @if *v != r.version {
                        span.warn { " The fleet runs another version than the active one." }
                    }
                }
                _ => { "no gateway has recorded a version yet." }
            }
            " Soak window " (human(r.window_seconds)) ", soak counted from " (r.soak_from) "."
        }
        p #tests {
            "Its tests at push: "
            span class=(tests_class(r.tests.as_ref())) { (crate::cli::mapping::tests_said(r.tests.as_ref())) }
        }
        @for s in &r.unloadable_activations {
            p.warn { "Not counted (does not load with this binary): " (s) }
        }
        p {
            @for (v, n) in tally(r) { span class=(verdict_class(v)) { (n) " " (v.as_str()) } " " }
        }
        @if !r.failing.is_empty() {
            div.warn {
                b { "Gate fails:" }
                ul { @for f in &r.failing { li { (f) } } }
            }
        }
        table #board {
            thead { tr {
                th { "Cluster" } th { "Title" } th { "Rules" } th { "Modes (fleet)" }
                th { "In shadow for" } th { "Shadow denials" } th { "Drift" } th { "Blockers" }
                th { "Verdict" } th { "Why" }
            } }
            tbody {
                @for c in &r.clusters {
                    @let modes = modes(c);
                    tr data-cluster=(c.cluster) {
                        th { (c.cluster) }
                        td { (c.title.as_deref().unwrap_or("")) }
                        td.num { (c.routes.len()) }
                        td { (modes) }
                        td { (c.shadow_since.map_or("-".to_string(), |s| human((r.now - s).num_seconds()))) }
                        td.num { (c.shadow_denials) }
                        td.num { (c.drift) }
                        td { @for b in &c.blockers { (b) br; } }
                        td { span class=(verdict_class(c.verdict)) data-verdict=(verdict_json(c.verdict)) { (c.verdict.as_str()) }
                             @if c.promoted { " " span.muted { "(this version enforces it)" } } }
                        td { @for why in &c.reasons { (why) br; } }
                    }
                }
            }
        }
        h2 #invariants { "Invariants" }
        p.muted { "As the cockpit's settings (the gateway's environment) and the database hold them (004 §1, §5, §9)." }
        table #invariant-table {
            thead { tr { th { "Invariant" } th { "State" } th { "Why" } } }
            tbody {
                @for i in &r.invariants {
                    tr data-invariant=(i.id) {
                        th { (i.id) }
                        td { span class=(invariant_class(i.state)) data-state=(invariant_json(i.state)) { (i.state.as_str()) } }
                        td { (i.why) @if !i.details.is_empty() { ul { @for d in &i.details { li { (d) } } } } }
                    }
                }
            }
        }
        h2 { "Rules per cluster" }
        @for c in &r.clusters {
            details {
                summary { b { (c.cluster) } " " (c.title.as_deref().unwrap_or("")) " · " (c.routes.len()) (if c.routes.len() == 1 { " rule" } else { " rules" }) }
                table {
                    thead { tr { th { "Rule" } th { "Fleet mode" } th { "Since" } th { "Version's mode" } th { "Shadow denials" } th { "Drift" } th { "Pending" } } }
                    tbody {
                        @for s in &c.routes {
                            tr {
                                td.mono { (s.rule) }
                                td { (s.fleet_mode.as_deref().unwrap_or("-")) }
                                td { (s.since.map_or("-".to_string(), |t| at(&t))) }
                                td { (s.file_mode) }
                                td.num { (s.shadow_denials) }
                                td.num { (s.drift) }
                                td { (s.pending.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An invariant's state as a class: met plain, not met an alarm, not checkable a warning.
fn invariant_class(s: crate::cli::invariants::State) -> &'static str {
    use crate::cli::invariants::State;
    match s {
        State::Met => "muted",
        State::NotMet => "alarm",
        State::NotCheckable => "warn",
    }
}

/// An invariant's state as `rollout --json` spells it.
fn invariant_json(s: crate::cli::invariants::State) -> &'static str {
    use crate::cli::invariants::State;
    match s {
        State::Met => "met",
        State::NotMet => "not_met",
        State::NotCheckable => "not_checkable",
    }
}

/// How a version's tests record is shown: passed green, skipped or none a warning.
fn tests_class(t: Option<&crate::stores::mapping_store::TestsRecord>) -> &'static str {
    match t.map(|t| t.result.as_str()) {
        Some(crate::stores::mapping_store::TestsRecord::PASSED) => "v v-enforced",
        _ => "v v-not_ready",
    }
}

/// How many clusters have each verdict, in the order a cutover moves through them.
fn tally(r: &Rollout) -> Vec<(Verdict, usize)> {
    [
        Verdict::NotReady,
        Verdict::Ready,
        Verdict::Enforced,
        Verdict::NotApplicable,
    ]
    .into_iter()
    .map(|v| (v, r.clusters.iter().filter(|c| c.verdict == v).count()))
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn modes(c: &crate::policy::cutover::ClusterStatus) -> String {
    let mut modes: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &c.routes {
        *modes
            .entry(s.fleet_mode.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    modes
        .iter()
        .map(|(m, n)| format!("{n} {m}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The verdict as `rollout --json` spells it.
fn verdict_json(v: Verdict) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The timeline: `mapping history --json`, newest activation first.
pub fn timeline(h: &History) -> Markup {
    html! {
        h1 { "Timeline" }
        p { "Active version: " @match &h.active { Some(v) => { a href=(format!("/version/{v}")) { code { (v) } } }, None => { "none" } } }
        h2 { "Activations (newest first)" }
        @for act in h.activations.iter().rev() {
            @let r = &act.row;
            section.activation data-id=(r.id) {
                h3 {
                    "#" (r.id) " · " (r.kind) " · " (at(&r.activated_at_utc)) " · "
                    code { (r.previous_version.as_deref().unwrap_or("none")) } " → "
                    a href=(format!("/version/{}", r.version)) { code { (r.version) } }
                    @if act.active { " " span.v.v-enforced { "active" } }
                }
                p {
                    "By " b { (r.actor.as_deref().unwrap_or(&r.activated_by)) }
                    @if r.actor.is_some() { span.muted { " (as " (r.activated_by) ")" } }
                    @if let Some(m) = &r.message { ": " i { (m) } }
                    @if let Some(p) = &r.previous_version {
                        " · " a href=(format!("/diff?old={p}&new={}", r.version)) { "full diff" }
                        " · " a href=(format!("/matrix?version={}&compare={p}", r.version)) { "matrix with changed cells" }
                    }
                }
                @if let Some(v) = h.versions.iter().find(|v| v.row.version == r.version) {
                    p.tests { "Tests of " code { (r.version) } " at its push: "
                        span class=(tests_class(v.row.tests.as_ref())) { (crate::cli::mapping::tests_said(v.row.tests.as_ref())) } }
                }
                @if let Some(e) = &act.error { p.warn { "Cannot compare: " (e) } }
                @if let Some(c) = &act.changed {
                    @if c.rules.is_empty() { p.muted { "No method of any rule changes." } }
                    @else { ul.mono { @for line in &c.rules { li { (line) } } } }
                    @if !c.principals.is_empty() {
                        table {
                            thead { tr { th { "Who" } th { "Gains" } th { "Loses" } th { "Other changes" } } }
                            tbody { @for (who, (g, l, o)) in &c.principals {
                                tr { td { (who) } td.num.plus { (g) } td.num.minus { (l) } td.num { (o) } }
                            } }
                        }
                    }
                }
            }
        }
        h2 { "Versions" }
        table {
            thead { tr { th { "Version" } th { "Pushed" } th { "By" } th { "Why" } th { "Tests at push" } th { "Last active" } } }
            tbody { @for v in h.versions.iter().rev() {
                tr {
                    td { a href=(format!("/version/{}", v.row.version)) { code { (v.row.version) } } @if v.active { " " span.v.v-enforced { "active" } } }
                    td { (at(&v.row.pushed_at_utc)) }
                    td { (v.row.actor.as_deref().unwrap_or(&v.row.pushed_by)) }
                    td { (v.row.message.as_deref().unwrap_or("")) }
                    td.tests { span class=(tests_class(v.row.tests.as_ref())) { (crate::cli::mapping::tests_said(v.row.tests.as_ref())) } }
                    td { (v.last_activated_at_utc.map_or("never".to_string(), |t| at(&t))) }
                }
            } }
        }
    }
}

/// One version's text, byte for byte (`mapping show`).
pub fn version(version: &str, text: &str) -> Markup {
    html! {
        h1 { "Mapping version " code { (version) } }
        p.muted { "As stored (`rbac-gateway mapping show " (version) "`)." }
        pre { (text) }
    }
}

/// `diff --json` between two stored versions.
pub fn diff(r: &DiffReport) -> Markup {
    html! {
        h1 { "Diff " code { (r.old_version) } " → " code { (r.new_version) } }
        p.muted { "Groups from " (r.catalogue) ". " @if r.access_changes { b { "Access changes." } } @else { "No access change." } }
        h2 { "Rules" }
        @if r.rules.is_empty() { p { "No method of any rule changes." } }
        @else {
            table {
                thead { tr { th { "" } th { "Rule" } th { "What" } } }
                tbody { @for c in &r.rules {
                    tr {
                        td { (match c.change { "added" => "+", "removed" => "−", _ => "~" }) }
                        td.mono { (c.rule) }
                        td { (c.what.join("; ")) @if !c.access { span.muted { " (no access change)" } } }
                    }
                } }
            }
        }
        h2 { "Who gains and loses" }
        table {
            thead { tr { th { "Who" } th { "Gains" } th { "Loses" } th { "Other changes" } } }
            tbody { @for p in &r.principals {
                @let who = match p.kind { "group" => format!("group {}", p.name), "admin" => format!("admin {} {}", p.name, p.email.as_deref().unwrap_or("")), _ => p.name.clone() };
                tr {
                    td { (who) }
                    @for list in [&p.gains, &p.losses, &p.other] {
                        td { @for s in list { span.mono { (s.method) " " (s.path) } ": " (s.before.outcome) " → " (s.after.outcome) br; } }
                    }
                }
            } }
        }
    }
}

/// The matrix's filters, from the query: who (a principal's name or email), cluster, and a
/// piece of the rule's text.
pub struct MatrixFilter {
    pub who: String,
    pub cluster: String,
    pub rule: String,
    pub compare: String,
}

impl MatrixFilter {
    pub fn of(q: &BTreeMap<String, String>) -> MatrixFilter {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        MatrixFilter {
            who: get("who"),
            cluster: get("cluster"),
            rule: get("rule"),
            compare: get("compare"),
        }
    }

    /// Keeps the rows and columns the filter names (none given: the whole matrix, as `matrix
    /// --format json` prints it).
    pub fn apply(&self, m: &mut Matrix) {
        if !self.who.is_empty() {
            m.rows
                .retain(|r| r.name == self.who || r.email.as_deref() == Some(self.who.as_str()));
        }
        let keep: Vec<bool> = m
            .columns
            .iter()
            .map(|c| {
                (self.cluster.is_empty() || c.cluster.as_deref().unwrap_or("-") == self.cluster)
                    && (self.rule.is_empty() || c.rule.contains(&self.rule))
            })
            .collect();
        if keep.iter().all(|k| *k) {
            return;
        }
        let mut i = 0;
        m.columns.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        for r in &mut m.rows {
            let mut i = 0;
            r.cells.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }
}

/// More admins than this are shown only when one is chosen.
const ADMIN_COLUMNS: usize = 12;

fn reach_class(c: &Cell) -> &'static str {
    match c.reach {
        Reach::Yes => "c yes",
        Reach::Console => "c console",
        Reach::No => "c no",
    }
}

/// The matrix: routes (grouped by cluster) x principals, each cell `matrix --format json`'s;
/// with `shifts`, the cells whose answer the compared version gave otherwise are marked.
pub fn matrix(m: &Matrix, f: &MatrixFilter, version: &str, shifts: Option<&DiffReport>) -> Markup {
    let before = cells_before(shifts);
    let groups: Vec<usize> = (0..m.rows.len())
        .filter(|i| m.rows[*i].kind != "admin")
        .collect();
    let admins: Vec<usize> = (0..m.rows.len())
        .filter(|i| m.rows[*i].kind == "admin")
        .collect();
    let show_admins = !f.who.is_empty() || admins.len() <= ADMIN_COLUMNS;
    let clusters: BTreeSet<&str> = m
        .columns
        .iter()
        .map(|c| c.cluster.as_deref().unwrap_or("-"))
        .collect();
    let changed = changed_cells(m, &before);
    let order = cluster_order(m);
    let table = |rows: &[usize], title: &str| matrix_table(m, rows, title, &order, &before);
    html! {
        h1 { "Access matrix " code { (m.version) } }
        p.muted {
            "Version " (version) " (" (m.mapping) "); groups from " (m.catalogue) ". Kill switch "
            (if m.kill_switch { "ON (every route off)" } else { "off" }) "; ticket-scoped grants "
            (if m.ticket_grants { "on" } else { "off" }) ". Each cell is the gateway's decision for that principal on the rule's path (hover for why): "
            span.c.yes { "allow / public" } " " span.c.console { "off / shadow-deny (Console decides)" } " " span.c.no { "403 / 302 / 404" } "."
        }
        form method="get" action="/matrix" {
            label { "Version " input name="version" value=(version) size="14"; }
            label { "Compare with " input name="compare" value=(f.compare) size="14" placeholder="previous"; }
            label { "Who " select name="who" {
                option value="" selected[f.who.is_empty()] { "every group" @if admins.len() <= ADMIN_COLUMNS { " and admin" } }
                @for r in &m.rows { option value=(r.name) selected[f.who == r.name] { (r.kind) ": " (r.email.as_deref().unwrap_or(&r.name)) } }
            } }
            label { "Cluster " select name="cluster" {
                option value="" selected[f.cluster.is_empty()] { "all" }
                @for c in &clusters { option value=(c) selected[f.cluster == *c] { (c) } }
            } }
            label { "Rule contains " input name="rule" value=(f.rule) size="18"; }
            button type="submit" { "Show" }
        }
        @match shifts {
            Some(d) => p { (changed) " cell(s) differ from version " code { (d.old_version) } " (marked, with what it answered)." }
            None => p.muted { "No version to compare with." }
        }
        @if !groups.is_empty() { (table(&groups, "Groups × routes")) }
        @if show_admins && !admins.is_empty() { (table(&admins, "Admins × routes")) }
        @if !show_admins { p.warn { (admins.len()) " admins: choose one under Who to see their column." } }
    }
}

/// (principal, method, path) -> the cell in the compared version.
type Before<'a> = HashMap<(&'a str, &'a str, &'a str), &'a Cell>;

/// The cells the compared version answered otherwise, as they were there.
fn cells_before(shifts: Option<&DiffReport>) -> Before<'_> {
    let mut before: Before = HashMap::new();
    if let Some(d) = shifts {
        for p in &d.principals {
            for s in p.gains.iter().chain(&p.losses).chain(&p.other) {
                before.insert(
                    (p.name.as_str(), s.method.as_str(), s.path.as_str()),
                    &s.before,
                );
            }
        }
    }
    before
}

/// How many of the matrix's cells the compared version answered otherwise.
fn changed_cells(m: &Matrix, before: &Before) -> usize {
    let mut changed = 0;
    for r in &m.rows {
        for (col, _) in m.columns.iter().zip(&r.cells) {
            if let Some(p) = &col.path {
                changed += usize::from(before.contains_key(&(
                    r.name.as_str(),
                    col.method.as_str(),
                    p.as_str(),
                )));
            }
        }
    }
    changed
}

/// The stages in 003's order (S1, S2, ... S10), then the other clusters as the mapping names
/// them; rules in file order within each.
fn cluster_order(m: &Matrix) -> Vec<&str> {
    let mut order: Vec<&str> = Vec::new();
    for c in &m.columns {
        let name = c.cluster.as_deref().unwrap_or("-");
        if !order.contains(&name) {
            order.push(name);
        }
    }
    let stage = |name: &str| {
        name.strip_prefix('S')
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    order.sort_by_key(|c| stage(c));
    order
}

/// One table of the matrix under `title`: the principals of `rows` as columns, each cluster's
/// rules in `order` as rows, a changed cell marked with what it was.
fn matrix_table(
    m: &Matrix,
    rows: &[usize],
    title: &str,
    order: &[&str],
    before: &Before,
) -> Markup {
    html! {
        h2 { (title) }
        table.matrix {
            thead { tr {
                th { "Method" } th { "Rule" } th { "Mode" }
                @for i in rows { th title=(m.rows[*i].roles.join(", ")) data-principal=(m.rows[*i].name) {
                    (m.rows[*i].email.as_deref().unwrap_or(&m.rows[*i].name))
                    @if m.rows[*i].break_glass { br; span.muted { "break-glass" } }
                } }
            } }
            tbody {
                @for cluster in order {
                    tr.cluster { th colspan=(3 + rows.len()) { "Cluster " (cluster) } }
                    @for (ci, col) in m.columns.iter().enumerate().filter(|(_, c)| c.cluster.as_deref().unwrap_or("-") == *cluster) {
                        tr data-method=(col.method) data-rule=(col.rule) {
                            td.mono { (col.method) }
                            td.mono title=(col.required) { (col.rule.split_once(' ').map_or(col.rule.as_str(), |x| x.1)) }
                            td { (col.mode) }
                            @for i in rows {
                                @let row = &m.rows[*i];
                                @let c = &row.cells[ci];
                                @let was = col.path.as_deref().and_then(|p| before.get(&(row.name.as_str(), col.method.as_str(), p)));
                                @let class = if was.is_some() { format!("{} changed", reach_class(c)) } else { reach_class(c).to_string() };
                                @let title = match was {
                                    Some(b) => format!("{} | was: {}", c.decision, b.decision),
                                    None => format!("{}{}", c.decision, c.how.as_deref().map(|h| format!(" | {h}")).unwrap_or_default()),
                                };
                                td class=(class) title=(title) data-outcome=(c.outcome) data-reach=(c.reach.as_str())
                                data-status=(c.status.map(|s| s.to_string()).unwrap_or_default()) {
                                    (short(c))
                                    @if let Some(b) = was { br; span.muted { "was " (short(b)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The denials: per route and reason in the window, then the newest rows, each with `explain
/// --request-id`'s lines.
pub fn denials(d: &Denials, limit: i64) -> Markup {
    html! {
        h1 { "Denials" }
        h2 { "Per route and reason, last " (human(d.window_seconds)) }
        @if d.per_route.is_empty() { p { "No access_denied row in the window." } }
        @else {
            table {
                thead { tr { th { "Rule" } th { "Reason" } th { "Denials" } th { "Last" } } }
                tbody { @for p in &d.per_route {
                    tr {
                        td.mono { a href=(format!("/denials?route={}&reason={}", enc(p.route.as_deref().unwrap_or("-")), enc(&p.reason))) { (p.route.as_deref().unwrap_or("-")) } }
                        td { (p.reason) } td.num { (p.count) } td { (at(&p.last_at_utc)) }
                    }
                } }
            }
        }
        h2 { "Newest denials (at most " (limit) "), each explained" }
        @if d.denials.is_empty() { p { "None." } }
        @for x in &d.denials {
            section.denial data-request-id=(x.row.request_id) {
                h3 {
                    (at(&x.row.created_at_utc)) " · " span.mono { (x.row.method) " " (x.row.path) }
                    " · " (x.row.reason)
                }
                p {
                    "Admin " (x.row.admin_id.as_deref().unwrap_or("-")) " · rule " span.mono { (x.row.route.as_deref().unwrap_or("-")) }
                    " · mapping " (x.row.mapping_version.as_deref().unwrap_or("-")) " · request " span.mono { (x.row.request_id) }
                }
                pre.why { (x.why.join("\n")) }
            }
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::json_href;

    #[test]
    fn the_json_link_stays_on_the_site() {
        assert_eq!(json_href("/").as_deref(), Some("/board.json"));
        assert_eq!(json_href("/matrix").as_deref(), Some("/matrix.json"));
        assert_eq!(json_href("/a//b").as_deref(), Some("/a//b.json"));
        for off in [
            "//evil.example/x",
            "/\\evil.example/x",
            "///x",
            "*",
            "",
            "evil",
        ] {
            assert_eq!(json_href(off), None, "{off:?}");
        }
    }
}
