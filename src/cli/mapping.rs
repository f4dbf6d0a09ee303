//! `rbac-gateway mapping push|activate|rollback|history|show`: mapping versions kept in the
//! database. A push validates the file exactly as `check` does before anything is
//! stored; every change is one transaction under an advisory lock
//! ([`crate::stores::mapping_store`]); gateways started with `--mapping-source database` apply
//! each activation within a second.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;

use super::toolbox::{command_pool, failure, named_version, runtime, say, stdout_failed, usage};
use super::Exit;
use crate::cli::access::Catalogue;
use crate::cli::args::{
    CheckArgs, MappingActivateArgs, MappingChangeArgs, MappingCommand, MappingHistoryArgs,
    MappingPushArgs, MappingShowArgs,
};
use crate::policy::mapping::Mapping;
use crate::policy::outcome::Switches;
use crate::stores::mapping_store::{self as store, Activated, Change, Refused, TestsRecord};

pub fn mapping(cmd: MappingCommand) -> Result<(), Exit> {
    match cmd {
        MappingCommand::Push(a) => push(a),
        MappingCommand::Activate(a) => activate(a),
        MappingCommand::Rollback(a) => rollback(a),
        MappingCommand::History(a) => history(a),
        MappingCommand::Show(a) => show(a),
    }
}

fn change(a: &MappingChangeArgs) -> Change {
    Change {
        actor: a.actor.clone(),
        message: a.message.clone(),
    }
}

async fn pool(url: &str) -> Result<crate::stores::db::Db, Exit> {
    // Two: `history` holds Console's tables on one while it reads the catalogue on the other.
    command_pool(url, 2, Duration::from_secs(10)).await
}

fn db_failure(what: &str, e: sqlx::Error) -> Exit {
    if store::is_permission_denied(&e) {
        return failure(anyhow!(
            "{what}: {e}: this database role may not change the mapping (a gateway's role only reads it); \
             push, activate and roll back as a role with the pusher grants of deploy/mapping-grants.sql (rbac_mapping_pusher)"
        ));
    }
    failure(anyhow!(
        "{what}: {e} (run `rbac-gateway migrate`? does this role have the grants of deploy/mapping-grants.sql?)"
    ))
}

fn refused(e: Refused) -> Exit {
    match e {
        Refused::Db(e) => db_failure("cannot change the mapping", e),
        // Bad input (64), as `mapping show` and `diff db:VERSION` say a version not stored.
        e @ Refused::UnknownVersion(_) => usage(anyhow!("{e}")),
        other => failure(anyhow!("{other}")),
    }
}

fn activated(a: &Activated, how: &str) {
    say!(
        "mapping version {} active ({how}; was {}): gateways with --mapping-source database apply it within a second",
        a.version,
        a.previous.as_deref().unwrap_or("none")
    );
}

fn push(a: MappingPushArgs) -> Result<(), Exit> {
    // Read once: what is checked is what is stored.
    let bytes = crate::policy::mapping::read_bounded(&a.file).map_err(|e| {
        usage(anyhow!(
            "{}: cannot read the mapping: {e}",
            a.file.display()
        ))
    })?;
    // As `check` does, except for the schema of the tables a pusher may not read
    // (deploy/mapping-grants.sql): `check --database-url` as the gateway's role covers those.
    let mapping = super::check::validate_as(
        &CheckArgs {
            routes: a.file.clone(),
            database_url: Some(a.change.database_url.clone()),
            app_routes: a.app_routes.clone(),
            mapping_source: "file".to_string(),
            mapping_public_key: None,
            lookup_database_url: None,
            decision: Default::default(),
            posture: Default::default(),
        },
        super::check::Schema::Readable,
    )?;
    if mapping.version != crate::policy::mapping::version_of(&bytes) {
        return Err(usage(anyhow!(
            "{}: the file changed while it was checked; push again",
            a.file.display()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| usage(anyhow!("{e}")))?;
    let signature = match &a.signing_key {
        None => None,
        Some(path) => {
            let key = store::signing::read_signing_key(path).map_err(|e| usage(anyhow!("{e}")))?;
            Some(store::signing::sign(&key, &text))
        }
    };
    let pushed = runtime()?.block_on(async {
        let db = pool(&a.change.database_url).await?;
        let tests = tests_of(&a, &mapping, &db).await?;
        store::push(
            &db,
            &mapping.version,
            &text,
            signature.as_deref(),
            &tests,
            &change(&a.change),
            !a.no_activate,
        )
        .await
        .map_err(|e| match e {
            Refused::Db(e) => db_failure("cannot store the mapping", e),
            other => failure(anyhow!("{other}")),
        })
    })?;
    let version = &pushed.version;
    let signed = if signature.is_some() { " (signed)" } else { "" };
    if pushed.stored {
        say!("mapping version {version} stored{signed}");
    } else {
        say!("mapping version {version} was already stored: text unchanged (the tests record of its first push is kept: stored versions never change)");
    }
    match (&pushed.activated, a.no_activate) {
        (Some(act), _) => activated(act, "pushed"),
        (None, true) => say!(
            "not activated (--no-activate); active: {} (`rbac-gateway mapping activate {version}`)",
            pushed.active_before.as_deref().unwrap_or("none")
        ),
        (None, false) => say!("mapping version {version} is already active: nothing changed"),
    }
    Ok(())
}

/// The pushed mapping's tests, run before anything is stored (`rbac-gateway test`'s suite, with
/// the database's catalogue): what to record on the version, or the refusal (a case failed: 1,
/// with the failures printed; a test file that does not load: 64).
async fn tests_of(
    a: &MappingPushArgs,
    mapping: &Mapping,
    db: &crate::stores::db::Db,
) -> Result<TestsRecord, Exit> {
    if a.skip_tests {
        say!("tests skipped (--skip-tests): recorded on the version as skipped");
        return Ok(TestsRecord::not_run(TestsRecord::SKIPPED));
    }
    let paths = if a.tests.is_empty() {
        super::test::beside(&a.file)?
    } else {
        super::test::tests_of(&a.file, &a.tests)?
    };
    if paths.is_empty() {
        say!(
            "no *.test.toml beside {}: no tests run (recorded on the version as none; --tests names others)",
            a.file.display()
        );
        return Ok(TestsRecord::not_run(TestsRecord::NONE));
    }
    let report = super::test::suite(mapping, &paths, Some(db), super::test::Run::default()).await?;
    if report.failed > 0 {
        say!("{}", super::test::text(&report));
        return Err(failure(anyhow!(
            "{} of {} cases of {} failed: mapping version {} refused, nothing stored (fix the mapping or its tests; --skip-tests stores it untested, and says so)",
            report.failed,
            report.total,
            report.tests.join(", "),
            mapping.version
        )));
    }
    say!(
        "tests passed: {} cases of {} (sha256 {})",
        report.total,
        report.tests.join(", "),
        report.tests_sha256
    );
    let cases = i32::try_from(report.total)
        .map_err(|_| usage(anyhow!("{} cases: too many to record", report.total)))?;
    Ok(TestsRecord::passed(
        report.tests_sha256,
        cases,
        report.tests,
    ))
}

fn activate(a: MappingActivateArgs) -> Result<(), Exit> {
    runtime()?.block_on(async {
        let db = pool(&a.change.database_url).await?;
        match store::activate(&db, &a.version, &change(&a.change)).await {
            Ok(act) => {
                activated(&act, "activated");
                say_tests(&db, &act.version).await;
                Ok(())
            }
            Err(Refused::AlreadyActive(v)) => {
                say!("mapping version {v} is already active: nothing changed");
                Ok(())
            }
            Err(e) => Err(refused(e)),
        }
    })
}

/// What the version made active gave its tests at its push, as `mapping history` says it: who
/// activates an untested version sees so. It is active whatever this read gives.
async fn say_tests(db: &crate::stores::db::Db, version: &str) {
    match store::tests_record(db, version).await {
        Ok(Some(record)) => say!("tests at its push: {}", tests_said(record.as_ref())),
        Ok(None) => say!("tests at its push: version {version} is not stored"),
        Err(e) => eprintln!(
            "rbac-gateway: the tests record of version {version} cannot be read (it is active): {}",
            crate::cli::chain_text(&anyhow::Error::new(e))
        ),
    }
}

fn rollback(a: MappingChangeArgs) -> Result<(), Exit> {
    runtime()?.block_on(async {
        let db = pool(&a.database_url).await?;
        let act = store::rollback(&db, &change(&a)).await.map_err(refused)?;
        activated(&act, "rolled back");
        say_tests(&db, &act.version).await;
        Ok(())
    })
}

fn show(a: MappingShowArgs) -> Result<(), Exit> {
    let shown = runtime()?.block_on(async {
        let db = pool(&a.database_url).await?;
        // A version not stored is bad input (64), as with `diff db:VERSION`.
        shown_version(&db, &a.version).await.map_err(|e| match e {
            NotShown::Missing(why) => usage(anyhow!("{why}")),
            NotShown::Failed(e) => e,
        })
    })?;
    if a.json {
        match serde_json::to_string_pretty(&shown) {
            Ok(text) => say!("{text}"),
            Err(e) => return Err(failure(e)),
        }
        return Ok(());
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(shown.text.as_bytes())
        .and_then(|_| out.flush())
    {
        stdout_failed(e);
    }
    Ok(())
}

/// What `mapping show --json` prints and the cockpit's version page shows: the version (that
/// `active` or `previous` named) and its stored text.
#[derive(Debug, Serialize)]
pub struct ShownVersion {
    pub version: String,
    pub text: String,
}

/// Why a version is not shown.
pub(crate) enum NotShown {
    /// Not stored, or `active`/`previous` names none yet: why.
    Missing(String),
    /// The database could not be read.
    Failed(Exit),
}

/// The stored version `what` names (a version, `active` or `previous`) and its text.
pub(crate) async fn shown_version(
    db: &crate::stores::db::Db,
    what: &str,
) -> Result<ShownVersion, NotShown> {
    let read = |e| NotShown::Failed(db_failure("cannot read the mapping", e));
    let version = named_version(db, what)
        .await
        .map_err(read)?
        .map_err(|why| NotShown::Missing(format!("{what}: {why}")))?;
    match store::text(db, &version).await.map_err(read)? {
        Some((text, _)) => Ok(ShownVersion { version, text }),
        None => Err(NotShown::Missing(
            Refused::UnknownVersion(version).to_string(),
        )),
    }
}

/// What an activation changed, in `diff`'s terms.
#[derive(Debug, Serialize)]
pub struct Changed {
    /// Rule methods added, removed, changed (and how).
    pub rules: Vec<String>,
    /// Per group (and a request without a session): requests gained, lost, otherwise changed.
    pub principals: BTreeMap<String, (usize, usize, usize)>,
}

#[derive(Debug, Serialize)]
pub struct HistoryActivation {
    #[serde(flatten)]
    pub row: store::Activation,
    pub active: bool,
    /// None: a version of the pair does not load with this binary.
    pub changed: Option<Changed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HistoryVersion {
    #[serde(flatten)]
    pub row: store::Stored,
    pub active: bool,
    /// When it was last made active (None: never).
    pub last_activated_at_utc: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `mapping history --json` prints, and the cockpit's timeline shows.
#[derive(Debug, Serialize)]
pub struct History {
    pub active: Option<String>,
    pub versions: Vec<HistoryVersion>,
    pub activations: Vec<HistoryActivation>,
}

fn history(a: MappingHistoryArgs) -> Result<(), Exit> {
    let report = runtime()?.block_on(async {
        let db = pool(&a.database_url).await?;
        history_report(&db).await
    })?;
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => say!("{text}"),
            Err(e) => return Err(failure(e)),
        }
        return Ok(());
    }
    print_history(&report);
    Ok(())
}

/// Every stored version and every activation with what it changed: what `mapping history`
/// prints and the cockpit's timeline shows.
pub(crate) async fn history_report(db: &crate::stores::db::Db) -> Result<History, Exit> {
    let (stored, activations) = store::history(db)
        .await
        .map_err(|e| db_failure("cannot read the mapping history", e))?;
    let _held = super::toolbox::console_looked(db).await?;
    let catalogue = Catalogue::read(db)
        .await
        .context("cannot read the role catalogue")
        .map_err(failure)?;
    let active = activations.last().map(|x| x.version.clone());
    let active_id = activations.last().map(|x| x.id);
    // Each version compiled once.
    let mut compiled: BTreeMap<String, Result<Mapping, String>> = BTreeMap::new();
    for s in &stored {
        let m = match store::text(db, &s.version).await {
            Ok(Some((text, _))) => {
                let name = format!("database:{}", s.version);
                Mapping::from_str(&name, Path::new(&name), &text).map_err(|e| {
                    e.diagnostics
                        .first()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| e.to_string())
                })
            }
            Ok(None) => Err("not stored".to_string()),
            Err(e) => return Err(db_failure("cannot read the mapping", e)),
        };
        compiled.insert(s.version.clone(), m);
    }
    let switches = Switches {
        kill_switch: false,
        ticket_grants: true,
    };
    let mut out = Vec::new();
    for act in activations {
        let new = compiled.get(&act.version);
        let old = act.previous_version.as_ref().and_then(|p| compiled.get(p));
        let (changed, error) = match (old, new) {
            (_, Some(Err(e))) | (Some(Err(e)), _) => (None, Some(e.clone())),
            (Some(Ok(old)), Some(Ok(new))) => {
                let who = super::matrix::catalogue_principals(&catalogue);
                let r = super::diff::compare(old, new, switches, "the database", who).await;
                (Some(summarise(&r)), None)
            }
            (None, Some(Ok(new))) => (
                Some(Changed {
                    rules: vec![format!("first activation: {} rules", new.routes.len())],
                    principals: BTreeMap::new(),
                }),
                None,
            ),
            (_, None) => (None, Some("version not stored".to_string())),
        };
        out.push(HistoryActivation {
            active: Some(act.id) == active_id,
            row: act,
            changed,
            error,
        });
    }
    let versions = stored
        .into_iter()
        .map(|s| HistoryVersion {
            active: active.as_deref() == Some(s.version.as_str()),
            last_activated_at_utc: out
                .iter()
                .rev()
                .find(|x| x.row.version == s.version)
                .map(|x| x.row.activated_at_utc),
            row: s,
        })
        .collect();
    Ok(History {
        active,
        versions,
        activations: out,
    })
}

fn summarise(r: &super::diff::Report) -> Changed {
    let rules = r
        .rules
        .iter()
        .map(|c| {
            let mark = match c.change {
                "added" => "+",
                "removed" => "-",
                _ => "~",
            };
            format!("{mark} {}: {}", c.rule, c.what.join("; "))
        })
        .collect();
    let principals = r
        .principals
        .iter()
        .filter(|p| !p.gains.is_empty() || !p.losses.is_empty() || !p.other.is_empty())
        .map(|p| {
            let name = if p.kind == "group" {
                format!("group {}", p.name)
            } else {
                p.name.clone()
            };
            (name, (p.gains.len(), p.losses.len(), p.other.len()))
        })
        .collect();
    Changed { rules, principals }
}

fn who(by: &str, actor: &Option<String>) -> String {
    match actor {
        Some(a) => format!("{a} (as {by})"),
        None => by.to_string(),
    }
}

/// What a version's tests gave at its push, in one line (`mapping history`, the cockpit).
pub(crate) fn tests_said(t: Option<&TestsRecord>) -> String {
    match t {
        None => "not recorded (pushed before migration 0030)".to_string(),
        Some(t) if t.result == TestsRecord::PASSED => format!(
            "passed, {} cases of {} (sha256 {})",
            t.cases.unwrap_or_default(),
            t.files.as_deref().unwrap_or_default().join(", "),
            t.sha256.as_deref().unwrap_or("-")
        ),
        Some(t) if t.result == TestsRecord::SKIPPED => "skipped (--skip-tests)".to_string(),
        Some(t) if t.result == TestsRecord::NONE => {
            "none (no test file beside the pushed file)".to_string()
        }
        Some(t) => t.result.clone(),
    }
}

fn print_history(h: &History) {
    say!("active: {}", h.active.as_deref().unwrap_or("none"));
    say!("versions:");
    for v in &h.versions {
        say!(
            "  {} {} pushed {} by {}{}",
            if v.active { "*" } else { " " },
            v.row.version,
            v.row.pushed_at_utc.format("%Y-%m-%d %H:%M:%S UTC"),
            who(&v.row.pushed_by, &v.row.actor),
            v.row
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        say!("      tests: {}", tests_said(v.row.tests.as_ref()));
    }
    say!("activations (oldest first):");
    for act in &h.activations {
        let r = &act.row;
        say!(
            "  #{} {} {} -> {} ({}) by {}{}{}",
            r.id,
            r.activated_at_utc.format("%Y-%m-%d %H:%M:%S UTC"),
            r.previous_version.as_deref().unwrap_or("none"),
            r.version,
            r.kind,
            who(&r.activated_by, &r.actor),
            r.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default(),
            if act.active { "  [active]" } else { "" }
        );
        if let Some(e) = &act.error {
            say!("      cannot compare: {e}");
        }
        if let Some(c) = &act.changed {
            if c.rules.is_empty() {
                say!("      rules: no method of any rule changes");
            }
            for line in &c.rules {
                say!("      {line}");
            }
            for (name, (gains, losses, other)) in &c.principals {
                say!("      {name}: gains {gains}, loses {losses}, other changes {other}");
            }
        }
    }
}
