//! The settings that decide what a session's grants count for ([`DecisionArgs`]) and which of
//! the seeds' invariants a gateway holds ([`PostureArgs`]): `serve` reads them, and every command
//! that answers as `serve` would (`explain`, `matrix`, `cockpit`) or reports what it holds
//! (`check`, `rollout`) reads the same flags and variables, so one spelling decides both.
//!
//! The safe side is the default (004 §1, §5, §6, §9): a break-glass session counts once its
//! alert was delivered (I-4), a ticket grant counts only when its ticket is re-validated on every
//! request (T-PEN-6). Each weaker setting is an explicit flag, and it is said at start-up, on
//! `/readyz`, in `check` and on the cockpit.

use clap::Args;

/// A switch: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case).
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false (or 1/0), not {s:?}")),
    }
}

/// A feature switch as Console's flags are written: `0` (off) or `1` (on), nothing else.
pub(crate) fn switch() -> impl clap::builder::TypedValueParser<Value = bool> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["0", "1"]).map(|v| v == "1")
}

/// What a session's grants count for, as `serve` decides it.
#[derive(Debug, Clone, Args)]
pub struct DecisionArgs {
    /// Kill switch (I-5 of 003): 0 makes every route `off` (forward; Console decides). 1, unset
    /// or set empty: the mapping's modes apply.
    #[arg(long = "flag-rbac-v2", env = "FLAG_RBAC_V2", default_value = "1", action = clap::ArgAction::Set, value_parser = switch())]
    pub flag_rbac_v2: bool,
    /// Ticket-scoped grants on (1) or off (0; FLAG_TICKET_SCOPED_GRANTS=0 of 004 §9.1: they
    /// grant nothing).
    #[arg(long = "flag-ticket-scoped-grants", env = "FLAG_TICKET_SCOPED_GRANTS", default_value = "1", action = clap::ArgAction::Set, value_parser = switch())]
    pub flag_ticket_scoped_grants: bool,
    /// Re-validate ticket-scoped grants on every request against this URL ({ticket_id} is
    /// replaced), e.g. FreeScout's conversation status; unreachable: 503 (T-PEN-6). Unset: ticket
    /// grants grant nothing, unless --ticket-revalidation-waived.
    #[arg(long, env = "GATEWAY_TICKET_VALIDATION_URL", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub ticket_validation_url: Option<String>,
    /// Honour ticket grants from rbac_ticket_grants alone when no --ticket-validation-url is set.
    /// This breaks T-PEN-6 (004 §9.3: re-verify the ticket on every request, fail closed); it is
    /// shown on /readyz, in `check` and on the cockpit.
    #[arg(long, env = "GATEWAY_TICKET_REVALIDATION_WAIVED", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub ticket_revalidation_waived: bool,
    /// A break-glass session's roles count only once its alert was delivered (I-4: the alert
    /// comes before the session proceeds). `false` breaks I-4: the roles count at once and the
    /// alert follows.
    #[arg(long, env = "GATEWAY_BREAK_GLASS_REQUIRES_ALERT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub break_glass_requires_alert: bool,
}

/// The defaults the flags have (the safe side), for a command that checks without a gateway's
/// settings (`mapping push`).
impl Default for DecisionArgs {
    fn default() -> Self {
        DecisionArgs {
            flag_rbac_v2: true,
            flag_ticket_scoped_grants: true,
            ticket_validation_url: None,
            ticket_revalidation_waived: false,
            break_glass_requires_alert: true,
        }
    }
}

impl DecisionArgs {
    pub fn kill_switch(&self) -> bool {
        !self.flag_rbac_v2
    }

    /// Ticket grants count: the flag is on and each is re-validated per request (or the
    /// operator waived that).
    pub fn ticket_grants(&self) -> bool {
        self.flag_ticket_scoped_grants
            && (self.ticket_validation_url.is_some() || self.ticket_revalidation_waived)
    }

    /// T-PEN-6 as these settings hold it.
    pub fn ticket_revalidation(&self) -> TicketRevalidation {
        match (
            self.flag_ticket_scoped_grants,
            self.ticket_validation_url.is_some(),
            self.ticket_revalidation_waived,
        ) {
            (false, _, _) => TicketRevalidation::GrantsOff,
            (true, true, _) => TicketRevalidation::EveryRequest,
            (true, false, true) => TicketRevalidation::Waived,
            (true, false, false) => TicketRevalidation::Refused,
        }
    }
}

/// How ticket grants are re-validated (T-PEN-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRevalidation {
    /// FLAG_TICKET_SCOPED_GRANTS=0: no ticket grant counts.
    GrantsOff,
    /// Against --ticket-validation-url on every request, fail closed.
    EveryRequest,
    /// No URL, and the operator waived re-validation: the table alone decides.
    Waived,
    /// No URL and no waiver: no ticket grant counts.
    Refused,
}

/// Where the gateway runs and where its alerts go: what `check`, `rollout` and the cockpit need,
/// beside [`DecisionArgs`], to say which invariants hold.
#[derive(Debug, Clone, Default, Args)]
pub struct PostureArgs {
    /// The environment this gateway serves (`production`, `staging`, ...). Unset: OpenTelemetry's
    /// `deployment.environment.name` in OTEL_RESOURCE_ATTRIBUTES. `production`, `prod`, `prd` (or
    /// `prod-eu`, ...) makes I-11 apply: FLAG_RBAC_V2 on needs its console_flag_promotions row.
    #[arg(long, env = "GATEWAY_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Slack-compatible incoming webhook for alerts (new break-glass sessions, changes to the
    /// break-glass group's roles): a JSON POST `{"text": ...}`, retried with backoff until
    /// delivered. Unset: alerts are recorded in rbac_gateway_alerts only, and (with
    /// --break-glass-requires-alert, the default) no break-glass session can proceed.
    #[arg(long, env = "GATEWAY_ALERT_WEBHOOK_URL", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub alert_webhook_url: Option<String>,
    /// Console's audit writer (SC-A3; I-5): every rbac_grants_audit row the gateway writes
    /// (ticket_expire, break_glass_expire) is POSTed there as one customer_audit_events event,
    /// its id the Idempotency-Key, retried with backoff until taken (docs/audit-writer.md).
    /// Needs a service token: --audit-writer-token-file or GATEWAY_AUDIT_WRITER_TOKEN. Unset:
    /// the rows wait in rbac_gateway_audit_outbox, counted, and I-5 is not met (said at start
    /// and on /readyz).
    #[arg(long, env = "GATEWAY_AUDIT_WRITER_URL", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub audit_writer_url: Option<String>,
    /// Seconds after which an rbac_grants_audit row still not delivered to the audit writer
    /// raises an ops alert (through --alert-webhook-url) and is named on /readyz (the status
    /// stays 200) and counted in rbac_gateway_audit_outbox_overdue.
    #[arg(
        long,
        env = "GATEWAY_AUDIT_WRITER_ALERT_AFTER",
        default_value_t = 300.0
    )]
    pub audit_writer_alert_after: f64,
}

impl PostureArgs {
    /// The environment's name, from --environment or OTEL_RESOURCE_ATTRIBUTES.
    pub fn environment(&self) -> Option<Environment> {
        let resource = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok();
        environment(self.environment.as_deref(), resource.as_deref())
    }
}

/// The environment's name and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    /// `--environment` (GATEWAY_ENVIRONMENT) or `deployment.environment.name`.
    pub source: &'static str,
}

/// What an environment's name says of I-11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `production`, `prod`, `prd`, or one of them followed by `-` or `_` (`prod-eu`).
    Production,
    /// A known other name (`staging`, `dev`, `test`, `qa`, ...), alone or so followed.
    NotProduction,
    /// Neither: whether I-11 applies is unknown (a gateway checks the row as in production).
    Other,
}

impl Environment {
    pub fn kind(&self) -> Kind {
        let name = self.name.to_ascii_lowercase();
        let is = |names: &[&str]| {
            names.iter().any(|n| {
                name == *n
                    || name
                        .strip_prefix(n)
                        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
            })
        };
        if is(&["production", "prod", "prd"]) {
            Kind::Production
        } else if is(&[
            "staging",
            "stage",
            "stg",
            "development",
            "dev",
            "test",
            "testing",
            "qa",
            "local",
            "demo",
            "sandbox",
            "preview",
            "review",
            "ci",
        ]) {
            Kind::NotProduction
        } else {
            Kind::Other
        }
    }

    /// Production, as I-11 means it.
    pub fn is_production(&self) -> bool {
        self.kind() == Kind::Production
    }
}

/// The environment from the flag, else from OpenTelemetry's resource attributes (`key=value`
/// pairs separated by commas; `deployment.environment.name`, or the older
/// `deployment.environment`). Empty values are unset.
pub fn environment(flag: Option<&str>, resource: Option<&str>) -> Option<Environment> {
    if let Some(name) = flag.map(str::trim).filter(|n| !n.is_empty()) {
        return Some(Environment {
            name: name.to_string(),
            source: "--environment",
        });
    }
    let pairs = resource?.split(',').filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        Some((key.trim(), value.trim()))
    });
    let mut older = None;
    for (key, value) in pairs {
        if value.is_empty() {
            continue;
        }
        match key {
            "deployment.environment.name" => {
                return Some(Environment {
                    name: value.to_string(),
                    source: "deployment.environment.name",
                })
            }
            "deployment.environment" => older = Some(value.to_string()),
            _ => {}
        }
    }
    older.map(|name| Environment {
        name,
        source: "deployment.environment",
    })
}

/// What a gateway with these settings says once at start-up and on every `/readyz` (the status
/// unchanged: everything else is served): each invariant a setting breaks or a missing setting
/// makes unreachable.
pub fn weakened(decision: &DecisionArgs, posture: &PostureArgs) -> Vec<String> {
    let mut out = Vec::new();
    if !decision.break_glass_requires_alert {
        out.push(
            "I-4 not met: --break-glass-requires-alert=false, a break-glass session's roles count before its alert is delivered"
                .to_string(),
        );
    } else if posture.alert_webhook_url.is_none() {
        out.push(
            "I-4: no --alert-webhook-url, so this gateway delivers no break-glass alert, and no break-glass session proceeds unless another replica or `sweep` delivers its alert (everything else is served)"
                .to_string(),
        );
    }
    match decision.ticket_revalidation() {
        TicketRevalidation::Waived => out.push(
            "T-PEN-6 waived (--ticket-revalidation-waived): ticket grants are honoured from rbac_ticket_grants alone, no ticket is re-checked against FreeScout per request"
                .to_string(),
        ),
        TicketRevalidation::Refused => out.push(
            "T-PEN-6: no --ticket-validation-url, so no ticket grant is honoured (set the URL, or waive re-validation with --ticket-revalidation-waived, which breaks T-PEN-6)"
                .to_string(),
        ),
        TicketRevalidation::GrantsOff | TicketRevalidation::EveryRequest => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_current_attribute_then_the_older_one() {
        let r = Some(
            "service.name=gw,deployment.environment=staging,deployment.environment.name=production",
        );
        assert_eq!(environment(Some("qa"), r).unwrap().name, "qa");
        let e = environment(None, r).unwrap();
        assert_eq!((e.name.as_str(), e.is_production()), ("production", true));
        let e = environment(Some(" "), Some("deployment.environment=prod")).unwrap();
        assert_eq!(e.source, "deployment.environment");
        assert!(e.is_production());
        assert_eq!(
            environment(None, Some("deployment.environment.name=")),
            None
        );
        assert_eq!(environment(None, None), None);
        assert!(!environment(Some("staging"), None).unwrap().is_production());
        let kind = |n: &str| environment(Some(n), None).unwrap().kind();
        assert_eq!(kind("prod-eu"), Kind::Production);
        assert_eq!(kind("PRD"), Kind::Production);
        assert_eq!(kind("staging_2"), Kind::NotProduction);
        assert_eq!(kind("live"), Kind::Other);
        assert_eq!(kind("products"), Kind::Other);
    }

    fn decision(flag: bool, url: bool, waived: bool) -> DecisionArgs {
        DecisionArgs {
            flag_rbac_v2: true,
            flag_ticket_scoped_grants: flag,
            ticket_validation_url: url.then(|| "http://fs/{ticket_id}".to_string()),
            ticket_revalidation_waived: waived,
            break_glass_requires_alert: true,
        }
    }

    #[test]
    fn ticket_grants_count_only_re_validated_or_waived() {
        assert!(!decision(true, false, false).ticket_grants());
        assert!(decision(true, true, false).ticket_grants());
        assert!(decision(true, false, true).ticket_grants());
        assert!(!decision(false, true, true).ticket_grants());
        assert_eq!(
            decision(true, false, false).ticket_revalidation(),
            TicketRevalidation::Refused
        );
    }
}
