//! The flags of [`crate::runtime::posture`]'s settings: what a session's grants count for
//! ([`DecisionArgs`]) and which of the seeds' invariants a gateway holds ([`PostureArgs`]),
//! flattened into `serve` and every command that answers as it (`explain`, `matrix`, `cockpit`)
//! or reports what it holds (`check`, `rollout`), so one spelling decides both. Each turns into
//! its plain settings ([`DecisionArgs::settings`], [`PostureArgs::settings`]). The safe side is
//! each flag's default.

use clap::Args;

use crate::policy::outcome::Switches;
use crate::runtime::posture::{DecisionSettings, PostureSettings};

/// A switch: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case).
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false (or 1/0), not {s:?}")),
    }
}

/// A ticket status URL as the sweep, the webhook and the per-request check ask it: `http://`,
/// with `{ticket_id}` in it. Refused when given, not at its first use: an `https://` one was
/// taken, and then every ticket grant answered 503 and the sweep revoked nothing.
pub(crate) fn ticket_url(s: &str) -> Result<String, String> {
    if !s.contains("{ticket_id}") {
        return Err(format!(
            "{s:?} has no {{ticket_id}}: every ticket would be asked about at the same URL"
        ));
    }
    match s.replace("{ticket_id}", "1").parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Ok(s.to_string()),
        Ok(u) if u.scheme_str() == Some("https") => Err(format!(
            "{s:?}: only http:// is supported (reach an https:// FreeScout through a proxy that \
             speaks TLS to it)"
        )),
        Ok(_) => Err(format!("{s:?} is not an http:// URL")),
        Err(e) => Err(format!("{s:?} is not a URL: {e}")),
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
    #[arg(long, env = "GATEWAY_TICKET_VALIDATION_URL", value_parser = ticket_url)]
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

impl DecisionArgs {
    pub fn settings(&self) -> DecisionSettings {
        DecisionSettings {
            flag_rbac_v2: self.flag_rbac_v2,
            flag_ticket_scoped_grants: self.flag_ticket_scoped_grants,
            ticket_validation_url: self.ticket_validation_url.clone(),
            ticket_revalidation_waived: self.ticket_revalidation_waived,
            break_glass_requires_alert: self.break_glass_requires_alert,
        }
    }

    /// The decision's switches, as `serve` sets them.
    pub fn switches(&self) -> Switches {
        let settings = self.settings();
        Switches {
            kill_switch: settings.kill_switch(),
            ticket_grants: settings.ticket_grants(),
        }
    }
}

/// The flags' own defaults (the safe side), for a command that checks without a gateway's
/// settings (`mapping push`).
impl Default for DecisionArgs {
    fn default() -> Self {
        defaults()
    }
}

/// Where the gateway runs and where its alerts go: what `check`, `rollout` and the cockpit need,
/// beside [`DecisionArgs`], to say which invariants hold.
#[derive(Debug, Clone, Args)]
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
    pub fn settings(&self) -> PostureSettings {
        PostureSettings {
            environment: self.environment.clone(),
            alert_webhook_url: self.alert_webhook_url.clone(),
            audit_writer_url: self.audit_writer_url.clone(),
            audit_writer_alert_after: self.audit_writer_alert_after,
        }
    }
}

/// The flags' own defaults, as [`DecisionArgs`]'s.
impl Default for PostureArgs {
    fn default() -> Self {
        defaults()
    }
}

/// `A` as clap fills it from an empty command line with no environment variable read: each
/// flag's declared default, written once, in its `#[arg]`.
fn defaults<A: clap::Args + clap::FromArgMatches>() -> A {
    let command = A::augment_args(clap::Command::new("defaults"))
        .mut_args(|a| a.env(clap::builder::Resettable::Reset));
    command
        .try_get_matches_from(["defaults"])
        .and_then(|m| A::from_arg_matches(&m))
        .expect("every flag of the posture has a default or is optional")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the safe side: I-4 and T-PEN-6 held, the mapping's modes applying.
    #[test]
    fn the_defaults_are_the_flags_own_and_the_safe_side() {
        let d = DecisionArgs::default().settings();
        assert!(d.flag_rbac_v2 && d.flag_ticket_scoped_grants && d.break_glass_requires_alert);
        assert!(!d.ticket_revalidation_waived && d.ticket_validation_url.is_none());
        let p = PostureArgs::default().settings();
        assert_eq!(p.audit_writer_alert_after, 300.0);
        assert!(p.environment.is_none() && p.alert_webhook_url.is_none());
        assert!(p.audit_writer_url.is_none());
    }
}
