//! `serve`'s flags as a typed configuration, every one checked before anything starts: no
//! listener bound, no task spawned, no log line written. A refusal is a clear message and exit
//! 64 ([`usage`]), said once and by the first check it fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;

use super::super::toolbox::{load_mapping, resolve, usage};
use super::super::Exit;
use crate::cli::args::{DbStatements, ServeArgs};
use crate::dataplane::workers::Http1Settings;
use crate::doors::freescout_webhook::Auth;
use crate::doors::proxy::Settings;
use crate::jobs::audit_outbox::WriterSettings;
use crate::policy::mapping::Mapping;
use crate::runtime::posture::{DecisionSettings, PostureSettings};
use crate::runtime::telemetry::config::Settings as TelemetrySettings;
use crate::stores::db::Statements;
use crate::stores::mapping_store::signing::PublicKey;

/// Where the live mapping comes from.
pub enum Source {
    /// `--routes`, read and compiled: the file as it is at start-up.
    File {
        path: PathBuf,
        mapping: Arc<Mapping>,
    },
    /// `--mapping-source database`: the active version, read once the pool exists; with
    /// `--mapping-public-key`, only versions signed by that key.
    Database { public_key: Option<PublicKey> },
}

/// FreeScout's webhook receiver (`--freescout-webhook-listen`): who may call it and where the
/// ticket's status is read again.
pub struct Webhook {
    pub addr: SocketAddr,
    pub auth: Auth,
    pub validation_url: String,
}

/// The checked configuration `serve` assembles the gateway from: typed values, no flag left to
/// read.
pub struct Config {
    /// `json` or `text`.
    pub log_format: &'static str,
    pub source: Source,
    pub upstream: SocketAddr,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub authz: Option<SocketAddr>,
    pub webhook: Option<Webhook>,
    pub threads: usize,
    /// `OTEL_*`; None: off.
    pub telemetry: Option<TelemetrySettings>,
    /// The proxy's settings (its `http` is forward-auth's too).
    pub proxy: Settings,
    pub database: Database,
    pub db_timeout: Duration,
    pub cache_ttl: Duration,
    /// Most entries per cache.
    pub cache_capacity: u64,
    pub session_cookie: String,
    /// `--rbac-api`: Console's reader API answered by the gateway.
    pub rbac_api: bool,
    pub spool: Spool,
    pub anonymous: Anonymous,
    pub sweep: Sweep,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    /// Console's audit writer (I-5); None: no `--audit-writer-url`, I-5 not met.
    pub audit_writer: Option<WriterSettings>,
    /// `--audit-writer-alert-after`.
    pub audit_writer_alert_after: Duration,
    /// What a session's grants count for.
    pub decision: DecisionSettings,
    /// Where the gateway runs and where its alerts go.
    pub posture: PostureSettings,
}

/// Console's PostgreSQL and how the pool reaches it.
pub struct Database {
    pub url: String,
    /// `--direct-database-url`: the session-mode connection, when `url` is a pooler.
    pub direct_url: Option<String>,
    /// `--lookup-database-url`: the request path's reads of Console's tables, as another login.
    pub lookup_url: Option<String>,
    pub pool_size: u32,
    pub statements: Statements,
}

/// Where a denial's row waits while the database does not answer.
pub struct Spool {
    /// The spool's file; None (`--audit-spool-durable=false`): nothing is spooled.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
}

/// The denials without a session, written once per client, reason and rule a window.
pub struct Anonymous {
    pub window: Duration,
    pub keys: usize,
}

/// The lifecycle sweep and FreeScout's status requests.
pub struct Sweep {
    /// Zero: no sweep in this process.
    pub interval: Duration,
    pub freescout_timeout: Duration,
    pub freescout_concurrency: usize,
    /// Sweeps a grant's rows may fail before `/readyz` names it.
    pub failure_threshold: u32,
}

impl Config {
    /// Every flag of `serve` checked, in the order an operator reads them in the error.
    pub fn check(args: ServeArgs) -> Result<Config, Exit> {
        let sweep_interval = seconds(args.sweep_interval, "--sweep-interval")?;
        let cache_ttl = seconds(args.cache_ttl, "--cache-ttl")?;
        let source = source(&args)?;
        let upstream = resolve(&args.upstream, "--upstream")?;
        let listen = resolve(&args.listen, "--listen")?;
        let admin = resolve(&args.admin_listen, "--admin-listen")?;
        let authz = match &args.authz_listen {
            None => None,
            Some(a) => Some(resolve(a, "--authz-listen")?),
        };
        let webhook = webhook(&args)?;
        // Set empty (how a compose file or a unit unsets a variable): unset.
        let env_token = std::env::var("GATEWAY_AUDIT_WRITER_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let audit_writer = audit_writer(&args, env_token)?;
        let audit_writer_alert_after = seconds(
            args.posture.audit_writer_alert_after,
            "--audit-writer-alert-after",
        )?;
        if args.freescout_concurrency == 0
            || args.freescout_timeout_ms == 0
            || args.sweep_failure_threshold == 0
        {
            return Err(usage(anyhow!(
                "--freescout-concurrency, --freescout-timeout-ms and --sweep-failure-threshold must be > 0"
            )));
        }
        distinct_ports(&[
            ("--listen", Some(listen)),
            ("--admin-listen", Some(admin)),
            ("--authz-listen", authz),
            (
                "--freescout-webhook-listen",
                webhook.as_ref().map(|w| w.addr),
            ),
        ])?;
        let proxy = proxy(&args)?;
        let threads = args
            .threads
            .unwrap_or_else(crate::dataplane::workers::default_threads);
        // OpenTelemetry (the OTEL_* variables): checked as a flag is.
        let telemetry = crate::runtime::telemetry::config::from_env(&|k| std::env::var(k).ok())
            .map_err(|e| usage(anyhow!("{e}")))?;
        Ok(Config {
            log_format: args.log_format.as_str(),
            source,
            upstream,
            listen,
            admin,
            authz,
            webhook,
            threads,
            telemetry,
            proxy,
            database: Database {
                url: args.database_url,
                direct_url: args.direct_database_url,
                lookup_url: args.lookup_database_url,
                pool_size: args.db_pool_size,
                statements: match args.db_statements {
                    DbStatements::Simple => Statements::Simple,
                    DbStatements::Named => Statements::Named,
                    DbStatements::Auto => Statements::Auto,
                },
            },
            db_timeout: Duration::from_millis(args.db_timeout_ms),
            cache_ttl,
            cache_capacity: args.cache_capacity,
            session_cookie: args.session_cookie,
            rbac_api: args.rbac_api,
            spool: Spool {
                path: args.audit_spool_durable.then_some(args.audit_spool),
                max_bytes: args.audit_spool_max_bytes,
            },
            anonymous: Anonymous {
                window: Duration::from_secs(args.anonymous_denial_window),
                keys: args.anonymous_denial_keys,
            },
            sweep: Sweep {
                interval: sweep_interval,
                freescout_timeout: Duration::from_millis(args.freescout_timeout_ms),
                freescout_concurrency: args.freescout_concurrency,
                failure_threshold: args.sweep_failure_threshold,
            },
            upstream_connect_timeout: Duration::from_millis(args.upstream_connect_timeout_ms),
            upstream_read_timeout: Duration::from_millis(args.upstream_read_timeout_ms),
            audit_writer,
            audit_writer_alert_after,
            decision: args.decision.settings(),
            posture: args.posture.settings(),
        })
    }

    pub fn mapping_in_database(&self) -> bool {
        matches!(self.source, Source::Database { .. })
    }

    pub fn shutdown_grace(&self) -> Duration {
        self.proxy.http.shutdown_grace
    }

    /// FLAG_RBAC_V2=0: every route is off.
    pub fn kill_switch(&self) -> bool {
        self.decision.kill_switch()
    }
}

/// A flag's number of seconds, at least zero.
fn seconds(v: f64, flag: &str) -> Result<Duration, Exit> {
    if v.is_finite() && v >= 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(usage(anyhow!("{flag} must be a number of seconds >= 0")))
    }
}

/// The proxy's limits and timeouts, its sizes checked.
fn proxy(args: &ServeArgs) -> Result<Settings, Exit> {
    if args.max_body_bytes == 0 || args.max_header_bytes < 1024 || args.max_headers == 0 {
        return Err(usage(anyhow!(
            "--max-body-bytes and --max-headers must be > 0, --max-header-bytes >= 1024"
        )));
    }
    if args.max_buffered_body_bytes < args.max_body_bytes {
        return Err(usage(anyhow!(
            "--max-buffered-body-bytes must be at least --max-body-bytes: a body of the largest size allowed could never be read"
        )));
    }
    Ok(Settings {
        http: Http1Settings {
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
            max_header_bytes: args.max_header_bytes,
            max_headers: args.max_headers,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        },
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms.max(1)),
        max_body_bytes: args.max_body_bytes,
        max_buffered_body_bytes: args.max_buffered_body_bytes,
        trust_request_id: args.trust_request_id,
        trusted_proxies: args.trusted_proxies,
    })
}

/// `--mapping-source`: the file read and compiled now, or the database's key checked.
fn source(args: &ServeArgs) -> Result<Source, Exit> {
    let from_db = args.mapping_source == "database";
    match &args.mapping_public_key {
        Some(_) if !from_db => Err(usage(anyhow!(
            "--mapping-public-key verifies versions read from the database: it needs --mapping-source database"
        ))),
        _ if !from_db => Ok(Source::File {
            path: args.routes.clone(),
            mapping: Arc::new(load_mapping(&args.routes)?),
        }),
        None => Ok(Source::Database { public_key: None }),
        Some(path) => Ok(Source::Database {
            public_key: Some(
                crate::stores::mapping_store::signing::read_public_key(path)
                    .map_err(|e| usage(anyhow!("--mapping-public-key {e}")))?,
            ),
        }),
    }
}

/// The receiver revokes only what FreeScout itself reports closed, and only for callers that
/// know the secret: without either it is refused, not run open.
fn webhook(args: &ServeArgs) -> Result<Option<Webhook>, Exit> {
    let Some(a) = &args.freescout_webhook_listen else {
        return Ok(None);
    };
    let addr = resolve(a, "--freescout-webhook-listen")?;
    let Some(secret) = &args.freescout_webhook_secret else {
        return Err(usage(anyhow!(
            "--freescout-webhook-listen needs --freescout-webhook-secret (GATEWAY_FREESCOUT_WEBHOOK_SECRET)"
        )));
    };
    let auth = Auth::new(&args.freescout_webhook_auth, secret).map_err(|e| usage(anyhow!(e)))?;
    let Some(validation_url) = args.decision.ticket_validation_url.clone() else {
        return Err(usage(anyhow!(
            "--freescout-webhook-listen needs --ticket-validation-url: a webhook call is only a hint, the ticket's status is read again from FreeScout"
        )));
    };
    Ok(Some(Webhook {
        addr,
        auth,
        validation_url,
    }))
}

/// The shortest service token taken for the audit writer.
const MIN_TOKEN_CHARS: usize = 16;

/// `--audit-writer-url` and its service token, from `--audit-writer-token-file` or `env_token`
/// (`GATEWAY_AUDIT_WRITER_TOKEN`), never a flag's value: one of the two, exactly, with the URL;
/// neither without it. A URL that cannot be sent to is refused here, not found out per row.
fn audit_writer(
    args: &ServeArgs,
    env_token: Option<String>,
) -> Result<Option<WriterSettings>, Exit> {
    let Some(url) = &args.posture.audit_writer_url else {
        if args.audit_writer_token_file.is_some() || env_token.is_some() {
            return Err(usage(anyhow!(
                "an audit writer token is set (--audit-writer-token-file or GATEWAY_AUDIT_WRITER_TOKEN) but no --audit-writer-url"
            )));
        }
        return Ok(None);
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| usage(anyhow!("--audit-writer-url {url:?}: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(usage(anyhow!(
            "--audit-writer-url {url:?}: an http:// or https:// URL with a host"
        )));
    }
    let (token, from) = match (&args.audit_writer_token_file, env_token) {
        (Some(_), Some(_)) => {
            return Err(usage(anyhow!(
                "--audit-writer-token-file and GATEWAY_AUDIT_WRITER_TOKEN are both set: give the token once"
            )))
        }
        (None, None) => {
            return Err(usage(anyhow!(
                "--audit-writer-url needs the writer's service token: --audit-writer-token-file FILE or GATEWAY_AUDIT_WRITER_TOKEN"
            )))
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                usage(anyhow!("--audit-writer-token-file {}: {e}", path.display()))
            })?;
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line).to_string();
            (line, format!("--audit-writer-token-file {}", path.display()))
        }
        (None, Some(t)) => (t, "GATEWAY_AUDIT_WRITER_TOKEN".to_string()),
    };
    if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(usage(anyhow!(
            "{from}: the audit writer's token must be one line of at least {MIN_TOKEN_CHARS} visible ASCII characters"
        )));
    }
    if args.audit_writer_timeout_ms == 0 {
        return Err(usage(anyhow!("--audit-writer-timeout-ms must be > 0")));
    }
    Ok(Some(WriterSettings {
        url: uri,
        token,
        timeout: Duration::from_millis(args.audit_writer_timeout_ms),
    }))
}

/// Two listeners on one port: the second bind would fail only after the 1 s retry meant for a
/// restart, with a message about another process. Said here instead, before anything runs.
fn distinct_ports(named: &[(&str, Option<SocketAddr>)]) -> Result<(), Exit> {
    for (i, (a_flag, a)) in named.iter().enumerate() {
        for (b_flag, b) in &named[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if overlap(*a, *b) {
                    return Err(usage(anyhow!(
                        "{a_flag} {a} and {b_flag} {b} need different ports: one listener cannot serve both"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether listeners on `a` and `b` would take the same port: the same address, or the same
/// port where one is a wildcard covering the other (`[::]` also takes IPv4 on Linux).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    // Port 0: each listener gets a port of its own.
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn listeners_overlap_on_one_port_of_one_address_or_a_wildcard() {
        let o = |a: &str, b: &str| overlap(a.parse().unwrap(), b.parse().unwrap());
        assert!(o("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(o("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(o("127.0.0.1:8080", "0.0.0.0:8080"));
        assert!(o("[::]:8080", "127.0.0.1:8080"));
        assert!(o("[::1]:8080", "[::]:8080"));
        assert!(!o("127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!o("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!o("0.0.0.0:8080", "[::1]:8080"));
        assert!(!o("127.0.0.1:0", "127.0.0.1:0"));
    }
}
