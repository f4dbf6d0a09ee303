//! Mapping versions kept in the database (migrations/0009_mapping_store.sql):
//! `rbac_mapping_store` holds each pushed file's exact text under its version, and
//! `rbac_mapping_activations` is the log of which version became active, when, by whom, and
//! which one it replaced. The active version is the latest activation's.
//!
//! Every change (push, activate, rollback) runs in one transaction under a transaction-scoped
//! advisory lock (`LOCK`), so the "previous version" each activation records is exact and
//! two racing pushes of one text store it once and activate it once. Works behind a
//! transaction-pooling PgBouncer: no session state, every statement unnamed.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::stores::db::Db;

/// The advisory lock every change of the store takes (transaction-scoped).
const LOCK: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('rbac_mapping_store'))";

/// The whole SHA-256 of a text, hex.
pub fn sha256_hex(text: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text))
}

/// Who changes the mapping and why: the database user is recorded by the database itself.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub actor: Option<String>,
    pub message: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub version: String,
    /// False: that text was already stored.
    pub stored: bool,
    /// The activation written (None: not asked for, or the version was already active).
    pub activated: Option<Activated>,
    /// The version active when the push ran.
    pub active_before: Option<String>,
}

/// One activation written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    pub id: i64,
    pub version: String,
    pub previous: Option<String>,
}

/// Why a change of the store was refused (not a database failure).
#[derive(Debug)]
pub enum Refused {
    UnknownVersion(String),
    AlreadyActive(String),
    NothingToRollBack(String),
    /// A signed push of a text already stored without that signature (unsigned, or signed by
    /// another key): the row cannot be changed (append-only), nothing was activated.
    SignatureDiffers {
        version: String,
        stored_signed: bool,
    },
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Db(e)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::UnknownVersion(v) => write!(
                f,
                "no stored mapping version {v:?} (`rbac-gateway mapping history` lists them)"
            ),
            Refused::AlreadyActive(v) => write!(f, "mapping version {v} is already active"),
            Refused::NothingToRollBack(why) => write!(f, "nothing to roll back to: {why}"),
            Refused::SignatureDiffers {
                version,
                stored_signed,
            } => write!(
                f,
                "mapping version {version} is already stored {}, and stored versions never change \
                 (append-only): nothing stored or activated. Gateways with --mapping-public-key \
                 will not apply it; to ship this mapping signed, change its text (a comment is \
                 enough) and push again",
                if *stored_signed {
                    "with a signature by another key"
                } else {
                    "unsigned"
                }
            ),
            Refused::Db(e) => write!(f, "{e}"),
        }
    }
}

async fn active_in(
    tx: &mut sqlx::PgConnection,
) -> Result<Option<(i64, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version, previous_version FROM rbac_mapping_activations ORDER BY id DESC LIMIT 1",
    )
    .persistent(false)
    .fetch_optional(tx)
    .await
}

async fn insert_activation(
    tx: &mut sqlx::PgConnection,
    version: &str,
    previous: Option<&str>,
    kind: &str,
    change: &Change,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO rbac_mapping_activations (version, previous_version, kind, actor, message) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .persistent(false)
    .bind(version)
    .bind(previous)
    .bind(kind)
    .bind(&change.actor)
    .bind(&change.message)
    .fetch_one(tx)
    .await
}

/// What a version's tests gave when it was pushed (migration 0030): `mapping push` runs them
/// before it stores anything and records this on the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestsRecord {
    /// `passed` (every case passed), `skipped` (`--skip-tests`) or `none` (no test file beside
    /// the pushed file).
    pub result: String,
    /// The SHA-256 of the test files' bytes, one after the other (`passed` only).
    pub sha256: Option<String>,
    /// How many cases passed (`passed` only).
    pub cases: Option<i32>,
    /// The test files run, as the push named them (`passed` only).
    pub files: Option<Vec<String>>,
}

impl TestsRecord {
    pub const PASSED: &'static str = "passed";
    pub const SKIPPED: &'static str = "skipped";
    pub const NONE: &'static str = "none";

    /// Every case of `files` (their bytes hashing to `sha256`) passed.
    pub fn passed(sha256: String, cases: i32, files: Vec<String>) -> TestsRecord {
        TestsRecord {
            result: Self::PASSED.into(),
            sha256: Some(sha256),
            cases: Some(cases),
            files: Some(files),
        }
    }

    /// No test ran: `skipped` or `none`.
    pub fn not_run(result: &'static str) -> TestsRecord {
        TestsRecord {
            result: result.into(),
            sha256: None,
            cases: None,
            files: None,
        }
    }
}

/// Stores `text` under `version` (once: a text already stored is left as it was, its tests
/// record with it) with its `signature` ([`signing::sign`]; None: unsigned) and what its tests
/// gave (`tests`), and, when `activate`, makes it the active version
/// unless it already is. A signed push of a text already stored without that same signature is
/// refused ([`Refused::SignatureDiffers`]; Ed25519 signatures are deterministic, so the same key
/// and text always give the same signature): nothing is stored or activated.
pub async fn push(
    db: &Db,
    version: &str,
    text: &str,
    signature: Option<&str>,
    tests: &TestsRecord,
    change: &Change,
    activate: bool,
) -> Result<Pushed, Refused> {
    let mut tx = db.begin().await?;
    sqlx::query(LOCK)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    let stored = sqlx::query(
        "INSERT INTO rbac_mapping_store (version, sha256, text, actor, message, signature, \
         tests_result, tests_sha256, tests_cases, tests_files) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (version) DO NOTHING",
    )
    .persistent(false)
    .bind(version)
    .bind(sha256_hex(text.as_bytes()))
    .bind(text)
    .bind(&change.actor)
    .bind(&change.message)
    .bind(signature)
    .bind(&tests.result)
    .bind(&tests.sha256)
    .bind(tests.cases)
    .bind(&tests.files)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if let (false, Some(signature)) = (stored, signature) {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT signature FROM rbac_mapping_store WHERE version = $1")
                .persistent(false)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
        if existing.as_deref() != Some(signature) {
            return Err(Refused::SignatureDiffers {
                version: version.to_string(),
                stored_signed: existing.is_some(),
            });
        }
    }
    let active = active_in(&mut tx).await?.map(|(_, v, _)| v);
    let mut activated = None;
    if activate && active.as_deref() != Some(version) {
        let id = insert_activation(&mut tx, version, active.as_deref(), "push", change).await?;
        activated = Some(Activated {
            id,
            version: version.to_string(),
            previous: active.clone(),
        });
    }
    tx.commit().await?;
    Ok(Pushed {
        version: version.to_string(),
        stored,
        activated,
        active_before: active,
    })
}

/// Makes the stored `version` the active one.
pub async fn activate(db: &Db, version: &str, change: &Change) -> Result<Activated, Refused> {
    let mut tx = db.begin().await?;
    sqlx::query(LOCK)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    let known: Option<String> =
        sqlx::query_scalar("SELECT version FROM rbac_mapping_store WHERE version = $1")
            .persistent(false)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
    if known.is_none() {
        return Err(Refused::UnknownVersion(version.to_string()));
    }
    let active = active_in(&mut tx).await?.map(|(_, v, _)| v);
    if active.as_deref() == Some(version) {
        return Err(Refused::AlreadyActive(version.to_string()));
    }
    let id = insert_activation(&mut tx, version, active.as_deref(), "activate", change).await?;
    tx.commit().await?;
    Ok(Activated {
        id,
        version: version.to_string(),
        previous: active,
    })
}

/// Makes the version active before the current one active again.
pub async fn rollback(db: &Db, change: &Change) -> Result<Activated, Refused> {
    let mut tx = db.begin().await?;
    sqlx::query(LOCK)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    let Some((_, current, previous)) = active_in(&mut tx).await? else {
        return Err(Refused::NothingToRollBack(
            "no version was ever activated".into(),
        ));
    };
    let Some(previous) = previous else {
        return Err(Refused::NothingToRollBack(format!(
            "{current} is the first version ever activated"
        )));
    };
    let id = insert_activation(&mut tx, &previous, Some(&current), "rollback", change).await?;
    tx.commit().await?;
    Ok(Activated {
        id,
        version: previous,
        previous: Some(current),
    })
}

/// The latest activation: its id and version.
pub async fn active(db: &Db) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, version FROM rbac_mapping_activations ORDER BY id DESC LIMIT 1")
        .persistent(false)
        .fetch_optional(db)
        .await
}

/// A stored version's text and recorded SHA-256.
pub async fn text(db: &Db, version: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT text, sha256 FROM rbac_mapping_store WHERE version = $1")
        .persistent(false)
        .bind(version)
        .fetch_optional(db)
        .await
}

/// A stored version's text, recorded SHA-256 and signature (hex; None: unsigned).
pub async fn signed_text(
    db: &Db,
    version: &str,
) -> Result<Option<(String, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT text, sha256, signature FROM rbac_mapping_store WHERE version = $1")
        .persistent(false)
        .bind(version)
        .fetch_optional(db)
        .await
}

/// Ed25519 keys as PEM files, as `openssl genpkey -algorithm ed25519` writes them: the private
/// key PKCS#8 (`-----BEGIN PRIVATE KEY-----`), the public key SubjectPublicKeyInfo
/// (`openssl pkey -in KEY -pubout`, `-----BEGIN PUBLIC KEY-----`). What is signed is the
/// stored text's exact bytes (the version is their hash, so it is covered too); the signature
/// is stored as 128 hex digits.
pub mod signing {
    use std::path::Path;

    use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

    pub use ed25519_dalek::VerifyingKey as PublicKey;

    fn read(path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a PKCS#8 PEM Ed25519 private key.
    pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
        SigningKey::from_pkcs8_pem(&read(path)?).map_err(|e| {
            format!(
                "{}: not an Ed25519 private key in PKCS#8 PEM ({e}); make one with \
                 `openssl genpkey -algorithm ed25519 -out FILE`",
                path.display()
            )
        })
    }

    /// Reads a SubjectPublicKeyInfo PEM Ed25519 public key.
    pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
        VerifyingKey::from_public_key_pem(&read(path)?).map_err(|e| {
            format!(
                "{}: not an Ed25519 public key in PEM ({e}); derive it from the private key \
                 with `openssl pkey -in KEY -pubout -out FILE`",
                path.display()
            )
        })
    }

    /// The signature of `text`'s bytes, hex.
    pub fn sign(key: &SigningKey, text: &str) -> String {
        hex::encode(key.sign(text.as_bytes()).to_bytes())
    }

    /// Whether `signature` (hex; None: unsigned) is `key`'s signature of `text`'s bytes.
    pub fn verify(key: &VerifyingKey, text: &str, signature: Option<&str>) -> Result<(), String> {
        let Some(signature) = signature else {
            return Err("it is unsigned".to_string());
        };
        let bytes: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "its signature is not 128 hex digits".to_string())?;
        key.verify_strict(text.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| {
                "its signature does not verify under --mapping-public-key (another key, or \
                 another text)"
                    .to_string()
            })
    }

    /// The public key's 64 hex digits (what logs and /readyz name it by).
    pub fn fingerprint(key: &VerifyingKey) -> String {
        hex::encode(key.as_bytes())
    }
}

/// One stored version.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub version: String,
    pub pushed_by: String,
    pub actor: Option<String>,
    pub pushed_at_utc: DateTime<Utc>,
    pub message: Option<String>,
    /// What its tests gave at its push (None: pushed before migration 0030).
    pub tests: Option<TestsRecord>,
}

/// A row of [`Stored`], as read.
#[derive(sqlx::FromRow)]
struct StoredRow {
    version: String,
    pushed_by: String,
    actor: Option<String>,
    pushed_at_utc: DateTime<Utc>,
    message: Option<String>,
    #[sqlx(flatten)]
    tests: TestsColumns,
}

impl From<StoredRow> for Stored {
    fn from(r: StoredRow) -> Stored {
        Stored {
            version: r.version,
            pushed_by: r.pushed_by,
            actor: r.actor,
            pushed_at_utc: r.pushed_at_utc,
            message: r.message,
            tests: r.tests.record(),
        }
    }
}

/// One activation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Activation {
    pub id: i64,
    pub version: String,
    pub previous_version: Option<String>,
    pub kind: String,
    pub activated_by: String,
    pub actor: Option<String>,
    pub activated_at_utc: DateTime<Utc>,
    pub message: Option<String>,
}

/// Every stored version (oldest first) and every activation (oldest first), read in one
/// transaction so they agree.
pub async fn history(db: &Db) -> Result<(Vec<Stored>, Vec<Activation>), sqlx::Error> {
    let mut tx = db.begin().await?;
    let stored: Vec<StoredRow> = sqlx::query_as(
        "SELECT version, pushed_by, actor, pushed_at_utc, message, tests_result, tests_sha256, \
         tests_cases, tests_files FROM rbac_mapping_store ORDER BY pushed_at_utc, version",
    )
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    let activations: Vec<Activation> = sqlx::query_as(
        "SELECT id, version, previous_version, kind, activated_by, actor, activated_at_utc, message \
         FROM rbac_mapping_activations ORDER BY id",
    )
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((stored.into_iter().map(Stored::from).collect(), activations))
}

/// What a stored version's tests gave at its push (None: not stored; `Some(None)`: pushed
/// before migration 0030, nothing recorded).
pub async fn tests_record(
    db: &Db,
    version: &str,
) -> Result<Option<Option<TestsRecord>>, sqlx::Error> {
    let row: Option<TestsColumns> = sqlx::query_as(
        "SELECT tests_result, tests_sha256, tests_cases, tests_files FROM rbac_mapping_store \
         WHERE version = $1",
    )
    .persistent(false)
    .bind(version)
    .fetch_optional(db)
    .await?;
    Ok(row.map(TestsColumns::record))
}

/// The tests record's columns, as read (migration 0030).
#[derive(sqlx::FromRow)]
struct TestsColumns {
    tests_result: Option<String>,
    tests_sha256: Option<String>,
    tests_cases: Option<i32>,
    tests_files: Option<Vec<String>>,
}

impl TestsColumns {
    /// None: nothing recorded (pushed before migration 0030).
    fn record(self) -> Option<TestsRecord> {
        self.tests_result.map(|result| TestsRecord {
            result,
            sha256: self.tests_sha256,
            cases: self.tests_cases,
            files: self.tests_files,
        })
    }
}

/// The latest activation's version and the version it replaced.
pub async fn active_and_previous(db: &Db) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, previous_version FROM rbac_mapping_activations ORDER BY id DESC LIMIT 1",
    )
    .persistent(false)
    .fetch_optional(db)
    .await
}

/// Every activation's id, version and time, oldest first (what `rollout` counts soak from).
pub async fn activation_times(db: &Db) -> Result<Vec<(i64, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, version, activated_at_utc FROM rbac_mapping_activations ORDER BY id")
        .persistent(false)
        .fetch_all(db)
        .await
}

/// Why the active version could not be read, with the fix where the login lacks the store's
/// privileges (`serve --mapping-source database`'s `/readyz` and log, `check`).
pub fn active_unreadable(e: &sqlx::Error) -> String {
    if is_permission_denied(e) {
        format!("cannot read the active mapping version from the database: {e} (a gateway reading its mapping from the database needs rbac_gateway_reader: run deploy/mapping-grants.sql, then `GRANT rbac_gateway_reader TO` this login)")
    } else {
        format!("cannot read the active mapping version from the database: {e}")
    }
}

/// Whether `e` is PostgreSQL refusing a statement for want of a privilege (SQLSTATE 42501).
pub fn is_permission_denied(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"))
}
