//! Live policy: the mapping file is watched and swapped in whole when it changes.
//!
//! The file is polled (read and compared with what was last seen) every [`POLL`]; a new content
//! is applied once it has been read identical twice in a row, so a half-written file is never
//! taken for a new mapping. SIGHUP applies the file at once, but also only if it reads the same
//! again one [`POLL`] later.
//! Polling the resolved path, instead of inotify, sees every way operators replace the file:
//! in place, by rename, and Kubernetes' ConfigMap `..data` symlink swap. SIGHUP forces a check.
//! A file that fails to load (syntax, validation, truncated, missing) leaves the old mapping
//! live; the errors are logged with `FILE:LINE:COL`, and `rbac_gateway_mapping_reloads_total`
//! counts the failure.
//!
//! With `--mapping-source database` ([`follow_database`]), the mapping is the active version of
//! `rbac_mapping_store` instead: the change feed's read reports each new activation, its text is
//! read, re-hashed and swapped in through the same [`apply_named`] (same log line, metrics and
//! `/readyz` report as a file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::state::Gateway;
use crate::policy::mapping::{Mapping, Route};

pub const POLL: Duration = Duration::from_millis(200);

/// What an operator needs to read in the log: one line per rule that changed.
pub fn diff(old: &Mapping, new: &Mapping) -> Vec<String> {
    fn describe(r: &Route) -> String {
        let what = match r.access {
            crate::policy::mapping::Access::Protected => {
                let mut names: Vec<&str> = r.roles.iter().map(|n| &**n).collect();
                names.extend(r.permissions.iter().map(|n| &**n));
                names.join("|")
            }
            other => other.as_str().to_string(),
        };
        if r.mode == crate::policy::mapping::Mode::Enforce {
            what
        } else {
            format!("{what} (mode {})", r.mode.as_str())
        }
    }
    fn index(m: &Mapping) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for r in &m.routes {
            for method in &r.methods {
                out.insert(format!("{method} {}", r.path), describe(r));
            }
        }
        out
    }
    let (a, b) = (index(old), index(new));
    let mut lines = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => lines.push(format!("{k}: {v} -> removed")),
            Some(w) if w != v => lines.push(format!("{k}: {v} -> {w}")),
            _ => {}
        }
    }
    for (k, w) in &b {
        if !a.contains_key(k) {
            lines.push(format!("{k}: added -> {w}"));
        }
    }
    if old.default_mode != new.default_mode {
        lines.push(format!(
            "default mode: {} -> {}",
            old.default_mode.as_str(),
            new.default_mode.as_str()
        ));
    }
    lines
}

/// Applies a mapping read from `path` if it differs from the live one. Returns false when the
/// file was rejected (the old mapping stays live).
pub fn apply(gw: &Gateway, path: &Path, text: &str) -> bool {
    apply_named(gw, &path.display().to_string(), path, text)
}

/// [`apply`] for a mapping from any source: `name` is what diagnostics and the log call it
/// (a file's path, `database:VERSION`).
pub fn apply_named(gw: &Gateway, display: &str, path: &Path, text: &str) -> bool {
    match Mapping::from_str(display, path, text) {
        Ok(new) => {
            swap_in(gw, new);
            true
        }
        Err(e) => {
            gw.metrics
                .mapping_reloads
                .with_label_values(&["failure"])
                .inc();
            for d in &e.diagnostics {
                tracing::error!(error = %d, mapping_version = %gw.mapping.load().version, "mapping rejected; the previous mapping stays live");
            }
            let first = e.diagnostics.first().map(|d| d.to_string());
            gw.set_file_rejected(Some(first.unwrap_or_else(|| e.to_string())));
            false
        }
    }
}

/// Makes `new` the live mapping (nothing to do when its version is live): the log line naming
/// the changed rules, the metrics, one atomic swap.
pub fn swap_in(gw: &Gateway, new: Mapping) {
    let old = gw.mapping.load_full();
    if old.version == new.version {
        gw.set_file_rejected(None);
        return;
    }
    let changes = diff(&old, &new);
    // One series, the live version's: a series per version ever loaded would grow with
    // every reload. The new one is set first, so no scrape finds none.
    gw.metrics
        .mapping_info
        .with_label_values(&[&new.version])
        .set(1);
    // Err: the old version has no series (never happens; nothing to drop).
    let _ = gw.metrics.mapping_info.remove_label_values(&[&old.version]);
    gw.metrics
        .mapping_reloads
        .with_label_values(&["success"])
        .inc();
    tracing::info!(
        from = %old.version, to = %new.version, routes = new.routes.len(),
        changes = %changes.join("; "), "mapping reloaded"
    );
    for w in &new.warnings {
        tracing::warn!(warning = %w, "mapping warning");
    }
    crate::gateway::state::set_route_metrics(&gw.metrics, &new, gw.kill_switch);
    gw.mapping.store(Arc::new(new));
    gw.set_file_rejected(None);
}

/// Warns about each role or permission the live mapping names that the database lacks: such a
/// name can never be held, so its rules deny everyone it alone would allow (a typo in an edit
/// turns a route into 403s). Run once the database answers after start-up, and after each
/// reload that changed the mapping (in a task of its own: the watcher never waits for the
/// database); `check --database-url` reports the same names as errors before a file ships. A
/// database that does not answer within [`NAMES_CHECK_LIMIT`] is logged, not waited for.
pub async fn warn_unknown_names(gw: &Gateway) {
    let mapping = gw.mapping.load_full();
    let unknown = crate::stores::catalogue::unknown_names(gw.identity.lookups(), &mapping);
    match crate::stores::db::within(NAMES_CHECK_LIMIT, unknown).await {
        Ok(unknown) => {
            for u in unknown {
                tracing::warn!(mapping_version = %mapping.version, line = u.line, warning = %u,
                    "mapping names a role or permission the database does not have: no session can hold it");
            }
        }
        Err(e) => tracing::info!(error = %e, mapping_version = %mapping.version,
            "cannot check the mapping's role and permission names against the database"),
    }
}

/// Logs, once the database answers at start-up, a schema that lacks one of this binary's
/// migrations (`/readyz` answers 503 until it is applied) or holds a newer release's; the state
/// read is what `/readyz` answers from until it reads one itself ([`Gateway::schema_read`]).
async fn warn_of_schema(gw: &Gateway) {
    let state = crate::stores::migrations::schema_state(gw.identity.pool());
    let read = crate::stores::db::within(NAMES_CHECK_LIMIT, state).await;
    let answered = read.is_ok();
    let (blocking, noted) = gw.schema_read(read);
    for line in blocking {
        tracing::error!("{line}: /readyz answers 503 until then");
    }
    // A failed read was logged by `schema_read`.
    if answered {
        for line in noted {
            tracing::warn!("{line}");
        }
    }
}

/// How long the check of a mapping's names waits for the database.
pub const NAMES_CHECK_LIMIT: Duration = Duration::from_secs(5);

/// At start-up: logs why the database cannot be reached (once; the pool's own errors only say
/// it timed out), and checks the mapping's names as soon as it answers.
pub async fn check_database_at_start(gw: Arc<Gateway>, within: Duration) {
    let mut reported = false;
    loop {
        match crate::stores::db::why_unreachable(gw.identity.pool(), within).await {
            None => break,
            Some(cause) => {
                if !reported {
                    tracing::error!(error = %cause,
                        "database unreachable at start-up: sessions not cached get 503 and denials are spooled until it answers");
                    reported = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    if reported {
        tracing::info!("database reachable");
    }
    warn_of_schema(&gw).await;
    warn_unknown_names(&gw).await;
    record_version(&gw).await;
    check_lookup_login(&gw).await;
}

/// With `--lookup-database-url`, once the database answers at start-up: what its login may do
/// that Console's role may not ([`crate::stores::privileges::beyond_consoles`]), and a URL that
/// reaches a standby or another database than `--database-url`'s
/// ([`crate::stores::reach::misplaced`]), each logged as an error. Each lookup's
/// transaction is read-only whatever the login may (`cli::serve::assemble`); a login that may
/// write the gateway's records is still not the one deploy/lookup-grants.sql makes, and a
/// second fence gone. Where the lookup login cannot be asked (it cannot connect yet, or its
/// server is a standby, on which each of its transactions fails: `/readyz` says so), that is
/// logged once and it is asked again, after 2 s, then twice as long each time up to a minute,
/// until it answers.
async fn check_lookup_login(gw: &Gateway) {
    let Some(lookups) = gw.identity.own_lookups() else {
        return;
    };
    let mut pause = Duration::from_secs(2);
    let mut failed_before = false;
    let beyond = loop {
        let ask = crate::stores::privileges::beyond_consoles(lookups);
        match crate::stores::db::within(NAMES_CHECK_LIMIT, ask).await {
            Ok(beyond) => break beyond,
            Err(e) => {
                if !failed_before {
                    tracing::error!(error = %e,
                        "cannot ask what --lookup-database-url's login may do: asked again until it answers");
                    failed_before = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    };
    if beyond.is_empty() {
        tracing::info!(
            "the request path reads Console's tables as --lookup-database-url's login, in read-only transactions, and that login may do nothing of the gateway's beyond Console's role");
    } else {
        tracing::error!(beyond = %beyond.join(", "),
            "--lookup-database-url's login may do what Console's role may not: Console's code on a cold lookup could use it (a write privilege is held back by the read-only transaction alone; a superuser or server-program role reaches past it, COPY ... TO PROGRAM) to forge a delivered break-glass alert (I-4) or outbox row (I-5); give it rbac_gateway_lookup alone (deploy/lookup-grants.sql)");
    }
    let reach = crate::stores::reach::reach(lookups);
    let reach = match crate::stores::db::within(NAMES_CHECK_LIMIT, reach).await {
        Ok(reach) => reach,
        Err(e) => {
            tracing::error!(error = %e, "cannot ask which server --lookup-database-url reaches: not checked that it is --database-url's database");
            return;
        }
    };
    let main = crate::stores::reach::reach(gw.identity.pool());
    let main = match crate::stores::db::within(NAMES_CHECK_LIMIT, main).await {
        Ok(main) => Some(main),
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask which server --database-url reaches: --lookup-database-url is checked for a standby alone");
            None
        }
    };
    for wrong in crate::stores::reach::misplaced(main.as_ref(), &reach) {
        tracing::error!("{wrong}");
    }
}

/// Records the live mapping in `rbac_gateway_mapping_versions` (`rollout`'s soak times), unless
/// the fleet's latest row already names it: once the database answers after start-up, and after
/// each reload that changed the mapping. A failure is logged: `rollout` then reports the soak
/// from the rows it has, never longer than they show.
pub async fn record_version(gw: &Gateway) {
    let mapping = gw.mapping.load_full();
    let record = crate::stores::rollout::record(gw.identity.pool(), &mapping, gw.kill_switch);
    match crate::stores::db::within(NAMES_CHECK_LIMIT, record).await {
        Ok(true) => {
            tracing::info!(mapping_version = %mapping.version, kill_switch = gw.kill_switch,
            "mapping version recorded for rollout (the fleet's latest was another)")
        }
        Ok(false) => {
            tracing::info!(mapping_version = %mapping.version, kill_switch = gw.kill_switch,
            "mapping version already the fleet's latest recorded one")
        }
        Err(e) => tracing::warn!(error = %e, mapping_version = %mapping.version,
            "cannot record the mapping version (rbac_gateway_mapping_versions; run `rbac-gateway migrate`?): rollout will not count this version's soak"),
    }
}

/// SIGHUPs, as `runtime::signals` reports them.
pub type Hangups = tokio::sync::watch::Receiver<u64>;

/// Waits for the next SIGHUP (never, once the signal task is gone).
async fn hangup(hup: &mut Hangups) {
    if hup.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Watches `path` until the process ends; each SIGHUP in `hup` forces a check.
pub async fn watch(gw: Arc<Gateway>, path: PathBuf, mut hup: Hangups) {
    // The content last applied or rejected, and a candidate seen once, kept whole and compared
    // byte for byte (no hash of the file five times a second; under callgrind, which hides the
    // CPU's SHA instructions, that hash dominated the gateway's background instructions).
    // The file may have been replaced since it was loaded (start-up resolves the upstream and
    // waits for the admin port first): it counts as settled only if it is what was loaded.
    let live = gw.mapping.load().version.clone();
    let mut settled: Option<Vec<u8>> = crate::policy::mapping::read_bounded(&path)
        .ok()
        .filter(|b| crate::policy::mapping::version_of(b) == live);
    let mut candidate: Option<Vec<u8>> = None;
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            () = hangup(&mut hup) => true,
        };
        let read = crate::policy::mapping::read_bounded_async(&path).await;
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                if forced || settled.is_some() {
                    gw.metrics
                        .mapping_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(file = %path.display(), error = %e, "mapping unreadable; the previous mapping stays live");
                }
                gw.set_file_rejected(Some(format!("{}: {e}", path.display())));
                settled = None;
                candidate = None;
                continue;
            }
        };
        if forced {
            tracing::info!(file = %path.display(), "SIGHUP: reloading the mapping");
            // A signal right after a save in place may find the file half-written: it is
            // applied only if it reads the same once more after a poll interval.
            tokio::time::sleep(POLL).await;
            if crate::policy::mapping::read_bounded_async(&path)
                .await
                .ok()
                .as_ref()
                != Some(&bytes)
            {
                tracing::info!(file = %path.display(), "SIGHUP: the mapping is still being written; applying it once it settles");
                candidate = None;
                continue;
            }
        } else if settled.as_ref() == Some(&bytes) {
            candidate = None;
            continue;
        } else if candidate.as_ref() != Some(&bytes) {
            // Seen once: wait one more poll to be sure the writer is done.
            candidate = Some(bytes);
            continue;
        }
        candidate = None;
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                let before = gw.mapping.load().version.clone();
                if apply(&gw, &path, text) && gw.mapping.load().version != before {
                    let gw = gw.clone();
                    tokio::spawn(async move {
                        warn_unknown_names(&gw).await;
                        record_version(&gw).await;
                    });
                }
            }
            Err(_) => {
                gw.metrics
                    .mapping_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(file = %path.display(), "mapping is not UTF-8; the previous mapping stays live");
                gw.set_file_rejected(Some(format!("{}: not UTF-8", path.display())));
            }
        }
        settled = Some(bytes);
    }
}

/// Why a stored version was not applied.
#[derive(Debug)]
pub enum Unloadable {
    /// The database did not answer: the previous mapping stays, the read is retried.
    Db(sqlx::Error),
    /// The version is not (or no longer) in the store.
    Missing(String),
    /// The stored text does not hash to its version (or to its recorded SHA-256).
    Tampered(String),
    /// The text does not load (a key this binary does not know, an invalid rule).
    Invalid(String),
    /// `--mapping-public-key` is set and the version is unsigned or its signature does not
    /// verify under that key.
    BadSignature(String),
}

impl std::fmt::Display for Unloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unloadable::Db(e) => write!(f, "cannot read the mapping from the database: {e}"),
            Unloadable::Missing(w)
            | Unloadable::Tampered(w)
            | Unloadable::Invalid(w)
            | Unloadable::BadSignature(w) => f.write_str(w),
        }
    }
}

/// The name diagnostics give a stored version.
pub fn db_name(version: &str) -> String {
    format!("database:{version}")
}

/// Reads stored `version`, checks that its text hashes to it, and compiles it (signatures not
/// checked: the tools that read versions, `diff`, `explain`, `rollout`).
pub async fn load_stored(db: &crate::stores::db::Db, version: &str) -> Result<Mapping, Unloadable> {
    load_verified(db, version, None).await
}

/// Public key a gateway verifies stored versions with (`--mapping-public-key`).
pub type PublicKey = crate::stores::mapping_store::signing::PublicKey;

/// [`load_stored`], and with `key`, refuses a version that is unsigned or whose signature does
/// not verify under it (checked after the hash, before the text is compiled).
pub async fn load_verified(
    db: &crate::stores::db::Db,
    version: &str,
    key: Option<&PublicKey>,
) -> Result<Mapping, Unloadable> {
    let found = crate::stores::mapping_store::signed_text(db, version)
        .await
        .map_err(Unloadable::Db)?;
    let Some((text, sha256, signature)) = found else {
        return Err(Unloadable::Missing(format!(
            "mapping version {version} is active but not in rbac_mapping_store"
        )));
    };
    let actual = crate::policy::mapping::version_of(text.as_bytes());
    let full = crate::stores::mapping_store::sha256_hex(text.as_bytes());
    if actual != version || full != sha256 {
        return Err(Unloadable::Tampered(format!(
            "the stored text of mapping version {version} does not hash to it (its SHA-256 is {full}): not applied"
        )));
    }
    if let Some(key) = key {
        crate::stores::mapping_store::signing::verify(key, &text, signature.as_deref()).map_err(
            |why| {
                Unloadable::BadSignature(format!(
                    "mapping version {version} is not signed by the key of --mapping-public-key ({}): {why}: not applied",
                    crate::stores::mapping_store::signing::fingerprint(key)
                ))
            },
        )?;
    }
    let name = db_name(version);
    Mapping::from_str(&name, Path::new(&name), &text).map_err(|e| {
        Unloadable::Invalid(
            e.diagnostics
                .first()
                .map(|d| d.to_string())
                .unwrap_or_else(|| e.to_string()),
        )
    })
}

/// Applies stored `version` as [`watch`] applies a file. Err: not applied (the previous mapping
/// stays live; a database failure is for the caller to retry, anything else is counted as a
/// failed reload and named on `/readyz`).
pub async fn apply_stored(
    gw: &Arc<Gateway>,
    db: &crate::stores::db::Db,
    version: &str,
    key: Option<&PublicKey>,
) -> Result<(), Unloadable> {
    let before = gw.mapping.load().version.clone();
    match load_verified(db, version, key).await {
        Ok(new) => {
            swap_in(gw, new);
            if gw.mapping.load().version != before {
                let gw = gw.clone();
                tokio::spawn(async move {
                    warn_unknown_names(&gw).await;
                    record_version(&gw).await;
                });
            }
            Ok(())
        }
        Err(Unloadable::Db(e)) => Err(Unloadable::Db(e)),
        Err(other) => Err(reject(gw, other)),
    }
}

fn reject(gw: &Gateway, why: Unloadable) -> Unloadable {
    gw.metrics
        .mapping_reloads
        .with_label_values(&["failure"])
        .inc();
    tracing::error!(error = %why, mapping_version = %gw.mapping.load().version,
        "mapping version from the database rejected; the previous mapping stays live");
    gw.set_file_rejected(Some(why.to_string()));
    why
}

/// `--mapping-source database` at start-up: waits until the active version is loaded, saying on
/// `/readyz` (503) why not yet: no version active, the database unreachable, a version that does
/// not load, or (with `key`) one not signed by it. Tries again every 500 ms, and at once on a
/// SIGHUP in `hup`. Returns the mapping; the caller says it is ready once it serves.
pub async fn load_active_at_start(
    db: &crate::stores::db::Db,
    key: Option<&PublicKey>,
    say: impl Fn(String),
    hup: &mut Hangups,
) -> Mapping {
    let mut last = String::new();
    loop {
        let why = match crate::stores::mapping_store::active(db).await {
            Ok(Some((_, version))) => match load_verified(db, &version, key).await {
                Ok(m) => return m,
                Err(e) => format!("active mapping version {version} cannot be loaded: {e}"),
            },
            Ok(None) => {
                "no mapping version is active in the database (`rbac-gateway mapping push FILE`)"
                    .to_string()
            }
            Err(e) => crate::stores::mapping_store::active_unreadable(&e),
        };
        if why != last {
            tracing::error!(error = %why, "no mapping loaded: not ready, nothing is served until one is");
            last.clone_from(&why);
        }
        say(why);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = hangup(hup) => {
                tracing::info!("SIGHUP: reading the active mapping version from the database again");
            }
        }
    }
}

/// `--mapping-source database`: applies each activation the change feed reports, until the
/// process ends. A version that cannot be read (database down) is retried; one that does not
/// load, does not hash to its version or (with `key`) is not signed by it leaves the previous
/// mapping live, named on `/readyz`, until another activation. A SIGHUP in `hup` reads the
/// active version from the database at once, whatever the feed has reported (the systemd
/// unit's `ExecReload`, an operator who does not want to wait for the feed).
pub async fn follow_database(
    gw: Arc<Gateway>,
    db: crate::stores::db::Db,
    key: Option<PublicKey>,
    mut active: tokio::sync::watch::Receiver<crate::stores::feed::ActiveMapping>,
    mut hup: Hangups,
) {
    // A newer activation arrived while the previous one was being retried.
    let mut pending = false;
    // The feed is gone (its own task reports it): only SIGHUP can bring a version.
    let mut feed_gone = false;
    loop {
        let (id, version) = if pending {
            pending = false;
            match active.borrow_and_update().clone() {
                Some(a) => a,
                None => continue,
            }
        } else {
            tokio::select! {
                changed = active.changed(), if !feed_gone => {
                    if changed.is_err() {
                        feed_gone = true;
                        continue;
                    }
                    match active.borrow_and_update().clone() {
                        Some(a) => a,
                        None => continue,
                    }
                }
                () = hangup(&mut hup) => {
                    tracing::info!("SIGHUP: reading the active mapping version from the database again");
                    match crate::stores::mapping_store::active(&db).await {
                        Ok(Some(a)) => a,
                        Ok(None) => {
                            tracing::warn!("SIGHUP: no mapping version is active in the database; the live mapping stays");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "SIGHUP: cannot read the active mapping version; the live mapping stays (the change feed still applies activations)");
                            continue;
                        }
                    }
                }
            }
        };
        loop {
            match apply_stored(&gw, &db, &version, key.as_ref()).await {
                Err(Unloadable::Db(e)) => {
                    tracing::warn!(error = %e, activation = id, mapping_version = %version,
                        "cannot read the activated mapping version; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => continue,
                        // A newer activation supersedes this one.
                        r = active.changed(), if !feed_gone => {
                            pending = r.is_ok();
                            break;
                        }
                    }
                }
                Ok(()) => {
                    tracing::debug!(activation = id, mapping_version = %version, "activation applied");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mapping::fixture::rules;

    #[test]
    fn diff_names_each_changed_rule() {
        let a = rules()
            .route("POST", "/secrets/<name>/rotate/htmx")
            .roles(&["console-secrets-admin"])
            .route("GET", "/ops")
            .roles(&["console-manager"])
            .mapping();
        let b = rules()
            .route("POST", "/secrets/<name>/rotate/htmx")
            .roles(&["console-manager"])
            .route("GET", "/ops2")
            .roles(&["console-manager"])
            .mode("shadow")
            .mapping();
        assert_eq!(
            diff(&a, &b),
            vec![
                "GET /ops: console-manager -> removed".to_string(),
                "POST /secrets/<name>/rotate/htmx: console-secrets-admin -> console-manager"
                    .to_string(),
                "GET /ops2: added -> console-manager (mode shadow)".to_string(),
            ]
        );
    }
}
