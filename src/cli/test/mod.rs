//! `rbac-gateway test`: the mapping's tests (`*.test.toml`), each case asked of the decision
//! `serve` makes (`decide`, through [`crate::cli::access::ask`] with an in-memory authority, as
//! `matrix` asks), never a second implementation. A case names who asks (a principal given by
//! its groups and roles, an admin of the database, or no session), one request or every rule a
//! statement selects, and the outcome expected. Exit 0: every case passed; 1: one failed; 64: a
//! test file (or the mapping) does not load; 69: the database given could not be read. `mapping push` runs the same suite before it stores
//! a version ([`suite`]).
//!
//! The file format: `file.rs`; the run: `run.rs`; `explain`'s why of a failure: `why.rs`; the
//! text, JSON and JUnit forms: `report.rs`.

mod case;
mod every;
mod file;
mod found;
mod report;
mod run;
mod why;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;

use super::toolbox::{
    command_pool, failure, load_mapping, load_stored_ref, needs_database_url, runtime, say,
    stored_ref, usage,
};
use super::Exit;
use crate::cli::access::Catalogue;
use crate::cli::args::TestArgs;
use crate::policy::mapping::Mapping;

pub use report::Report;
pub use world::Settings;

pub fn test(args: TestArgs) -> Result<(), Exit> {
    // A database that cannot be read (1 from the pool and the suite's reads) is 69: exit 1 is a
    // case that failed, and nothing was decided.
    let unavailable = |e: Exit| match e.code {
        crate::cli::EXIT_PROBLEMS => Exit {
            code: crate::cli::EXIT_UNAVAILABLE,
            error: e.error,
        },
        _ => e,
    };
    let report = runtime()?.block_on(async {
        let pool = match &args.database_url {
            Some(url) => Some(
                command_pool(url, 2, Duration::from_secs(10))
                    .await
                    .map_err(unavailable)?,
            ),
            None => None,
        };
        let mapping = match (stored_ref(&args.routes), &pool) {
            (Some(what), Some(pool)) => load_stored_ref(pool, what).await?,
            (Some(_), None) => return Err(needs_database_url(&args.routes, "--database-url")),
            (None, _) => load_mapping(&args.routes)?,
        };
        let paths = tests_of(&args.routes, &args.tests)?;
        let run = Run {
            coverage: args.coverage,
            break_glass_requires_alert: args.break_glass_requires_alert,
        };
        suite(&mapping, &paths, pool.as_ref(), run)
            .await
            .map_err(unavailable)
    });
    // A report CI reads says why there is none: a run that did not load is an error in it,
    // never an empty file (the exit code and stderr say it too).
    let report = report.inspect_err(|e| {
        let text = e.text();
        match args.format.as_str() {
            "json" => say!(
                "{}",
                serde_json::json!({ "error": text, "exit": e.code, "total": 0, "passed": 0, "failed": 0 })
            ),
            "junit" => say!("{}", report::junit_error(&text, e.code)),
            _ => {}
        }
    })?;
    let shown = match args.format.as_str() {
        "json" => serde_json::to_string_pretty(&report).map_err(failure)?,
        "junit" => report::junit(&report),
        _ => report::text(&report, args.verbose),
    };
    say!("{shown}");
    if report.failed > 0 {
        return Err(failure(anyhow!(
            "{} of {} cases failed",
            report.failed,
            report.total
        )));
    }
    Ok(())
}

/// The test files `tests` names, or those beside `routes` (a file; `db:` needs them named):
/// none found is bad usage (64), never a run that passes nothing.
pub(crate) fn tests_of(routes: &Path, tests: &[PathBuf]) -> Result<Vec<PathBuf>, Exit> {
    if tests.is_empty() && stored_ref(routes).is_some() {
        return Err(usage(anyhow!(
            "{}: a version in the database has no files beside it: name the test files (or directories) to run",
            routes.display()
        )));
    }
    let found = found::discover(routes, tests).map_err(|e| usage(anyhow!("{e}")))?;
    if found.is_empty() {
        return Err(usage(anyhow!(
            "no *.test.toml beside {}{}: name the test files (or directories) to run",
            routes.display(),
            near_misses(routes)?
        )));
    }
    Ok(found)
}

/// The `*.test.toml` files beside `routes`, if any (`mapping push` without `--tests`); none
/// while a file there is named like one (`routes.tests.toml`) is bad usage (64): a suite meant
/// to run would not.
pub(crate) fn beside(routes: &Path) -> Result<Vec<PathBuf>, Exit> {
    let found = found::discover(routes, &[]).map_err(|e| usage(anyhow!("{e}")))?;
    let missed = near_misses(routes)?;
    if found.is_empty() && !missed.is_empty() {
        return Err(usage(anyhow!(
            "no *.test.toml beside {}{}: rename it, or name the test files with --tests (--skip-tests stores the mapping untested, and says so)",
            routes.display(),
            missed
        )));
    }
    Ok(found)
}

/// ", but F looks like a test file" for the files beside `routes` named like a test file but not
/// `*.test.toml`; empty if none.
fn near_misses(routes: &Path) -> Result<String, Exit> {
    let missed = found::near_misses(routes).map_err(|e| usage(anyhow!("{e}")))?;
    Ok(match missed.as_slice() {
        [] => String::new(),
        [one] => format!(", but {} looks like a test file", one.display()),
        more => format!(
            ", but {} look like test files",
            more.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The report for a terminal, failures and totals (what `mapping push` prints when it refuses).
pub(crate) fn text(report: &Report) -> String {
    report::text(report, false)
}

/// The SHA-256 of `bytes`, one after the other.
fn sha256_of<'a>(bytes: impl IntoIterator<Item = &'a [u8]>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for b in bytes {
        h.update(b);
    }
    hex::encode(h.finalize())
}

/// An admin of `list` named `a`: by id, else by email, else by an email differing in letter
/// case only when exactly one does.
fn find_admin<'l>(
    list: &'l [crate::stores::catalogue::AdminGroups],
    a: &str,
) -> Option<&'l crate::stores::catalogue::AdminGroups> {
    list.iter()
        .find(|x| x.id == a)
        .or_else(|| list.iter().find(|x| x.email == a))
        .or_else(|| {
            let mut same = list.iter().filter(|x| x.email.eq_ignore_ascii_case(a));
            match (same.next(), same.next()) {
                (Some(x), None) => Some(x),
                _ => None,
            }
        })
}

/// How a suite is run: `--coverage`, and whether an admin's break-glass session counts only
/// once its alert was delivered (`serve`'s default, I-4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub coverage: bool,
    pub break_glass_requires_alert: bool,
}

impl Default for Run {
    /// As `serve` decides by default; no coverage.
    fn default() -> Self {
        Run {
            coverage: false,
            break_glass_requires_alert: true,
        }
    }
}

/// Runs the test files `paths` on `mapping`: with `pool`, the groups as the database holds
/// them and the admins the cases name; without, the catalogue `migrate` seeds. Err: a file
/// that does not load (64, every problem `FILE:LINE:COL: why`), or a database that cannot be
/// read (1; `test` exits 69 for it).
pub(crate) async fn suite(
    mapping: &Mapping,
    paths: &[PathBuf],
    pool: Option<&crate::stores::db::Db>,
    run: Run,
) -> Result<Report, Exit> {
    let Run {
        coverage,
        break_glass_requires_alert,
    } = run;
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = crate::policy::mapping::read_bounded(p)
            .map_err(|e| usage(anyhow!("{}: cannot read the test file: {e}", p.display())))?;
        files.push(file::TestFile {
            name: p.display().to_string(),
            bytes,
        });
    }
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match file::read(i, f) {
            Ok(c) => cases.extend(c),
            Err(p) => problems.extend(p),
        }
    }
    let not_loaded = |problems: Vec<file::Problem>| {
        usage(anyhow!(
            "{}\nthe tests do not load",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ))
    };
    if !problems.is_empty() {
        return Err(not_loaded(problems));
    }
    let (catalogue, source, admins) = match pool {
        None => (Catalogue::seeded(), "the catalogue migrate seeds", None),
        Some(pool) => {
            let _held = crate::cli::toolbox::console_looked(pool).await?;
            let catalogue = Catalogue::read(pool).await.map_err(|e| {
                failure(anyhow::Error::new(e).context("cannot read the role catalogue"))
            })?;
            (
                catalogue,
                "the database",
                Some(named_admins(pool, &cases, break_glass_requires_alert).await?),
            )
        }
    };
    let world = world::World {
        mapping,
        catalogue: &catalogue,
        catalogue_source: source,
        admins: admins.as_ref(),
        settings: Settings::default(),
    };
    let prepared = run::Prepared::new(&world, &cases, &names).map_err(not_loaded)?;
    let mut touched = vec![false; mapping.routes.len()];
    let results = run::run(&world, &prepared, &names, &mut touched).await;
    let failed = results.iter().filter(|c| !c.passed).count();
    Ok(Report {
        mapping: mapping.file.display().to_string(),
        version: mapping.version.clone(),
        catalogue: source,
        tests: names,
        tests_sha256: sha256_of(files.iter().map(|f| f.bytes.as_slice())),
        total: results.len(),
        passed: results.len() - failed,
        failed,
        cases: results,
        break_glass_requires_alert,
        uncovered: coverage.then(|| every::uncovered(mapping, &touched)),
        rules: coverage.then_some(mapping.routes.len()),
    })
}

/// An admin a suite's cases name, as [`named_admins`] reads them.
pub(crate) struct NamedAdmin {
    pub reviewed: crate::cli::matrix::Reviewed,
    /// Their active break-glass session is not counted until its alert is delivered (as `serve`
    /// decides by default, `--break-glass-requires-alert`): a case's why says so.
    pub alert_waits: bool,
}

/// The admins `cases` name, read from the database as `matrix` reads them (roles as they are now,
/// break-glass included, live ticket grants), by the name the cases use. A name no admin has is
/// left out (the case's principal then does not resolve: a load error naming it).
/// `requires_alert`: a break-glass session counts once its alert was delivered (I-4).
async fn named_admins(
    pool: &crate::stores::db::Db,
    cases: &[file::Case],
    requires_alert: bool,
) -> Result<BTreeMap<String, NamedAdmin>, Exit> {
    let mut names = std::collections::BTreeSet::new();
    for c in cases {
        let (file::Kind::Request { who, .. } | file::Kind::Every { who, .. }) = &c.kind else {
            continue;
        };
        if let file::Subjects::List(list) = who {
            for s in list {
                if let file::Who::Admin(a) = &s.who {
                    names.insert(a.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let list = crate::stores::catalogue::admins(pool)
        .await
        .map_err(|e| failure(anyhow!("cannot read the admins: {e}")))?;
    for name in names {
        let Some(a) = find_admin(&list, &name) else {
            continue;
        };
        let read = async {
            // As `serve` decides (by default, I-4: a break-glass session counts once its alert
            // was delivered).
            let reviewed = crate::cli::matrix::admin_principal(
                pool,
                a.id.clone(),
                a.email.clone(),
                a.groups.clone(),
                requires_alert,
            )
            .await?;
            let counted = reviewed.principal.as_ref().is_some_and(|p| p.break_glass);
            let alert_waits = requires_alert
                && !counted
                && crate::stores::identity::break_glass_active(pool, &a.id).await?;
            Ok::<_, sqlx::Error>(NamedAdmin {
                reviewed,
                alert_waits,
            })
        };
        let named = read
            .await
            .map_err(|e| failure(anyhow!("cannot read admin {name:?}: {e}")))?;
        out.insert(name, named);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mapping::fixture::{rules, Rules};
    use std::collections::BTreeSet;

    /// Cluster S8's secrets and a customer's audit, and a public `open` cluster.
    fn s8() -> Rules {
        rules()
            .declare("S8")
            .declare("open")
            .route("GET", "/secrets")
            .roles(&["console-secrets-admin"])
            .cluster("S8")
            .route("GET", "/secrets/<name>/sop")
            .roles(&["console-secrets-user"])
            .cluster("S8")
            .route("GET", "/customers/<int:id>/audit")
            .roles(&["console-manager"])
            .customer_param("id")
            .cluster("S8")
            .route("GET", "/static/<path:f>")
            .access("public")
            .cluster("open")
    }

    fn mapping(rules: Rules) -> Mapping {
        rules.mapping_named("m.toml")
    }

    /// Runs `tests` (one file) on `m` without a database.
    fn run_on(m: &Mapping, tests: &str) -> Result<Report, Exit> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.test.toml");
        std::fs::write(&path, tests).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(suite(
            m,
            &[path],
            None,
            Run {
                coverage: true,
                ..Run::default()
            },
        ))
    }

    /// Two principals of a file holding the same groups are resolved once; a failure names the
    /// one its case asked as, in a request and in a statement.
    #[test]
    fn a_failure_names_the_principal_its_case_asked_as() {
        let r = run_on(
            &mapping(s8()),
            r#"
[principal.alpha]
groups = ["raxx-support-team"]
[principal.beta]
groups = ["raxx-support-team"]
[[case]]
who = "alpha"
request = "GET /secrets"
expect = "deny"
[[case]]
who = "beta"
request = "GET /secrets"
expect = "allow"
[[case]]
who = ["alpha", "beta"]
every = { path = "/secrets" }
expect = "allow"
"#,
        )
        .unwrap();
        assert_eq!((r.total, r.failed), (3, 2), "{r:#?}");
        let who: Vec<Vec<&str>> = r
            .cases
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.failures.iter().map(|f| f.who.as_str()).collect())
            .collect();
        assert_eq!(who, vec![vec!["beta"], vec!["alpha", "beta"]], "{r:#?}");
    }

    /// What the doors' HTTP layer cannot parse, and CONNECT, are refused before a rule is asked.
    #[test]
    fn targets_the_http_layer_refuses_are_refused() {
        let r = run_on(
            &mapping(s8()),
            r#"
[principal.admins]
groups = ["raxx-platform-admins"]
[[case]]
who = "admins"
request = "GET /secrets?q=<b>"
expect = "refused"
reason = "unparsed"
[[case]]
who = "admins"
request = "GET /static/a`b.css"
expect = "refused"
reason = "unparsed"
[[case]]
who = "admins"
request = "CONNECT /secrets"
expect = "refused"
reason = "not_origin_form"
[[case]]
who = "admins"
request = "GET /secrets?q=a{b}|c"
expect = "allow"
"#,
        )
        .unwrap();
        assert_eq!((r.total, r.failed), (4, 0), "{r:#?}");
    }

    #[test]
    fn cases_are_asked_of_decide_and_a_failure_says_why() {
        let r = run_on(
            &mapping(s8()),
            r#"
[principal.support]
groups = ["raxx-support-team"]
[[case]]
who = "support"
request = "GET /secrets"
expect = "deny"
reason = "missing_role"
rule = "/secrets"
[[case]]
name = "admins read secrets"
who = { groups = ["raxx-platform-admins"] }
request = "GET /secrets"
expect = "allow"
reason = "role:console-secrets-admin"
[[case]]
name = "support reads secrets (wrong)"
who = "support"
request = "GET /secrets?x=1"
expect = "allow"
[[case]]
who = "no-session"
request = "GET /secrets"
expect = "login"
[[case]]
who = "no-session"
request = "GET /secrets/%2e%2e/x"
expect = "refused"
reason = "dot_segment"
[[case]]
who = "no-session"
method = "POST"
path = "/nowhere"
expect = "deny"
reason = "no_route"
"#,
        )
        .unwrap();
        assert_eq!((r.total, r.passed, r.failed), (6, 5, 1), "{r:#?}");
        let failed = r.cases.iter().find(|c| !c.passed).unwrap();
        assert_eq!(failed.name, "support reads secrets (wrong)");
        let f = &failed.failures[0];
        assert_eq!(f.problem, "expected allow, decided deny (missing_role)");
        assert!(
            f.why.iter().any(|l| l == "rule: GET /secrets (m.toml:3:1)"),
            "{:#?}",
            f.why
        );
        assert!(f.why.iter().any(|l| l == "  console-audit-user: group raxx-support-team -> console-audit-user"), "{:#?}", f.why);
        assert!(
            f.why
                .iter()
                .any(|l| l == "decision: 403 denied (missing_role)"),
            "{:#?}",
            f.why
        );
        let text = report::text(&r, false);
        assert!(text.contains("FAIL "), "{text}");
        assert!(text.contains("PASS: 5/6\nFAIL: 1/6"), "{text}");
        // The public rule was reached by no case.
        let uncovered: Vec<&str> = r
            .uncovered
            .as_ref()
            .unwrap()
            .iter()
            .map(|u| u.rule.as_str())
            .collect();
        assert_eq!(
            uncovered,
            [
                "GET /secrets/<name>/sop",
                "GET /customers/<int:id>/audit",
                "GET /static/<path:f>"
            ]
        );
    }

    #[test]
    fn ticket_grants_open_a_rule_with_customer_param_for_their_customer_only() {
        let r = run_on(
            &mapping(s8()),
            r#"
[[case]]
who = { groups = ["raxx-support-team"] }
tickets = [{ customer = 42, roles = ["console-manager"] }]
request = "GET /customers/42/audit"
expect = "allow"
[[case]]
who = { groups = ["raxx-support-team"] }
tickets = [{ customer = 42, roles = ["console-manager"] }]
request = "GET /customers/43/audit"
expect = "deny"
"#,
        )
        .unwrap();
        assert_eq!(r.failed, 0, "{r:#?}");
    }

    /// The (rule, path) of each failure of statement case `c`.
    fn offenders(c: &world::CaseReport) -> Vec<(&str, &str)> {
        c.failures
            .iter()
            .map(|f| (f.rule.as_deref().unwrap(), f.path.as_deref().unwrap()))
            .collect()
    }

    /// A statement that fails for every rule and group shows its first failures and counts the
    /// rest: a report stays bounded (a review: 2,000 such cases, 110 KB, took 2.9 GB).
    #[test]
    fn a_case_shows_its_first_failures_and_counts_the_rest() {
        let tests = r#"
[[case]]
name = "everything is gone"
every = {}
who = { every_group = true }
expect = "gone"
"#;
        let r = run_on(&mapping(s8()), tests).unwrap();
        let c = &r.cases[0];
        assert!(!c.passed);
        assert_eq!(c.failures.len(), super::run::SHOWN_PER_CASE, "{c:#?}");
        assert!(c.failures_not_shown > 0, "{c:#?}");
        assert_eq!(c.failures.len() + c.failures_not_shown, c.decisions);
        let text = report::text(&r, false);
        assert!(
            text.contains(&format!(
                "... and {} more failure(s) not shown",
                c.failures_not_shown
            )),
            "{text}"
        );
    }

    /// A rule whose converter takes the prefix's segment reaches below it from elsewhere: the
    /// statement fails, naming it and the path (a review: it passed, and `serve` forwarded
    /// `/secrets/export` without a session).
    #[test]
    fn a_rule_reaching_below_a_prefix_through_a_converter_is_asked() {
        let export = s8()
            .route("GET", "/<section>/export")
            .access("public")
            .cluster("open");
        let tests = r#"
[[case]]
name = "nothing under /secrets is reached without a session"
every = { path_prefix = "/secrets" }
who = "no-session"
expect = "login"
"#;
        let r = run_on(&mapping(export), tests).unwrap();
        let offending = offenders(&r.cases[0]);
        assert_eq!(
            offending,
            [("GET /<section>/export", "/secrets/export")],
            "{:#?}",
            r.cases[0]
        );
        // A path converter taking a prefix of two segments.
        let export = s8()
            .route("GET", "/admin/secrets/<name>")
            .roles(&["console-secrets-admin"])
            .cluster("S8")
            .route("GET", "/<path:p>/export")
            .access("public")
            .cluster("open");
        let tests = r#"
[[case]]
name = "nothing under /admin/secrets is reached without a session"
every = { path_prefix = "/admin/secrets" }
who = "no-session"
expect = "login"
"#;
        let r = run_on(&mapping(export), tests).unwrap();
        let offending: Vec<&str> = offenders(&r.cases[0])
            .into_iter()
            .map(|(rule, _)| rule)
            .collect();
        assert_eq!(offending, ["GET /<path:p>/export"], "{:#?}", r.cases[0]);
    }

    #[test]
    fn statements_name_each_offending_rule() {
        // A catch-all added under /secrets from elsewhere is found by the prefix's own paths.
        let with_catch_all = s8()
            .route("GET", "/<path:any>")
            .access("public")
            .cluster("open");
        let tests = r#"
[[case]]
name = "no route under /secrets is reached by support"
every = { path_prefix = "/secrets" }
who = { groups = ["raxx-support-team"] }
expect = "deny"
[[case]]
name = "S8 requires a secrets role"
every = { cluster = "S8" }
requires_one_of = ["console-secrets-admin", "console-secrets-user"]
[[case]]
name = "a typo selects nothing"
every = { cluster = "S88" }
who = "no-session"
expect = "login"
"#;
        let r = run_on(&mapping(with_catch_all), tests).unwrap();
        let by_name = |n: &str| r.cases.iter().find(|c| c.name == n).unwrap();
        let prefix = by_name("no route under /secrets is reached by support");
        let offending = offenders(prefix);
        assert_eq!(
            offending,
            [
                ("GET /<path:any>", "/secrets/x1"),
                ("GET /<path:any>", "/secrets/x1/x1")
            ],
            "{prefix:#?}"
        );
        let requires = by_name("S8 requires a secrets role");
        let rules: BTreeSet<&str> = requires
            .failures
            .iter()
            .map(|f| f.rule.as_deref().unwrap())
            .collect();
        assert_eq!(
            rules,
            BTreeSet::from(["GET /customers/<int:id>/audit"]),
            "{requires:#?}"
        );
        let typo = by_name("a typo selects nothing");
        assert!(
            typo.failures[0]
                .problem
                .contains("declares no cluster \"S88\""),
            "{typo:#?}"
        );
        // Without the catch-all, the prefix statement holds.
        let r = run_on(&mapping(s8()), tests).unwrap();
        assert!(r.cases[0].passed, "{:#?}", r.cases[0]);
    }

    #[test]
    fn names_the_catalogue_lacks_do_not_load() {
        let e = run_on(
            &mapping(s8()),
            "[[case]]\nwho = { groups = [\"raxx-suport-team\"] }\nrequest = \"GET /secrets\"\nexpect = \"deny\"\n",
        )
        .unwrap_err();
        assert_eq!(e.code, crate::cli::EXIT_USAGE);
        let text = format!("{:#}", e.error);
        assert!(
            text.contains("m.test.toml:2:7: group \"raxx-suport-team\" is not in the catalogue"),
            "{text}"
        );
        let e = run_on(
            &mapping(s8()),
            "[[case]]\nwho = { admin = \"a@example.com\" }\nrequest = \"GET /secrets\"\nexpect = \"deny\"\n",
        )
        .unwrap_err();
        assert!(
            format!("{:#}", e.error).contains("give --database-url"),
            "{:#}",
            e.error
        );
        // A statement that would ask no one does not pass quietly.
        let everyone: Vec<String> = Catalogue::seeded()
            .groups
            .keys()
            .map(|g| format!("{g:?}"))
            .collect();
        let e = run_on(
            &mapping(s8()),
            &format!(
                "[[case]]\nevery = {{}}\nwho = {{ every_group_except = [{}] }}\nexpect = \"deny\"\n",
                everyone.join(", ")
            ),
        )
        .unwrap_err();
        assert!(
            format!("{:#}", e.error)
                .contains("m.test.toml:3:7: every_group_except excepts every group"),
            "{:#}",
            e.error
        );
    }

    #[test]
    fn junit_names_each_case_and_failure() {
        let r = run_on(
            &mapping(s8()),
            "[[case]]\nname = \"a <b>\"\nwho = \"no-session\"\nrequest = \"GET /secrets\"\nexpect = \"allow\"\n",
        )
        .unwrap();
        let x = report::junit(&r);
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rbac-gateway test\" tests=\"1\" failures=\"1\" errors=\"0\">"), "{x}");
        assert!(x.contains("name=\"a &lt;b&gt;\""), "{x}");
        assert!(x.contains("line=\"1\""), "{x}");
        assert!(
            x.contains("<failure message=\"expected allow, decided login\" type=\"request\">"),
            "{x}"
        );
        assert!(x.contains("<testsuite name=\"coverage\""), "{x}");
    }
}
