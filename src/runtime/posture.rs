//! The settings that decide what a session's grants count for ([`DecisionSettings`]) and which of
//! the seeds' invariants a gateway holds ([`PostureSettings`]), plain values the command line
//! fills (`cli/args/posture.rs`): `serve` reads them, and every command that answers as `serve`
//! would (`explain`, `matrix`, `cockpit`) or reports what it holds (`check`, `rollout`) reads the
//! same flags and variables, so one spelling decides both.
//!
//! The safe side is the default (004 §1, §5, §6, §9): a break-glass session counts once its
//! alert was delivered (I-4), a ticket grant counts only when its ticket is re-validated on every
//! request (T-PEN-6). Each weaker setting is an explicit flag, and it is said at start-up, on
//! `/readyz`, in `check` and on the cockpit.

/// What a session's grants count for, as `serve` decides it (from the flags of
/// `cli/args/posture.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionSettings {
    /// FLAG_RBAC_V2: off is the kill switch (every route `off`, Console decides).
    pub flag_rbac_v2: bool,
    /// FLAG_TICKET_SCOPED_GRANTS: off, ticket grants grant nothing.
    pub flag_ticket_scoped_grants: bool,
    /// `--ticket-validation-url`: where each ticket grant is re-validated per request.
    pub ticket_validation_url: Option<String>,
    /// `--ticket-revalidation-waived`: ticket grants honoured from the table alone (breaks
    /// T-PEN-6).
    pub ticket_revalidation_waived: bool,
    /// `--break-glass-requires-alert`: a break-glass session counts once its alert was delivered
    /// (I-4).
    pub break_glass_requires_alert: bool,
}

impl DecisionSettings {
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
/// beside [`DecisionSettings`], to say which invariants hold.
#[derive(Debug, Clone, PartialEq)]
pub struct PostureSettings {
    /// `--environment`; unset: read from OTEL_RESOURCE_ATTRIBUTES
    /// ([`PostureSettings::environment`]).
    pub environment: Option<String>,
    /// `--alert-webhook-url`; unset: alerts are recorded only.
    pub alert_webhook_url: Option<String>,
    /// `--audit-writer-url` (I-5); unset: the rows wait in the outbox.
    pub audit_writer_url: Option<String>,
    /// `--audit-writer-alert-after`, in seconds.
    pub audit_writer_alert_after: f64,
}

impl PostureSettings {
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
pub fn weakened(decision: &DecisionSettings, posture: &PostureSettings) -> Vec<String> {
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
    // I-11: a gateway reads FLAG_RBAC_V2's promotion row where its environment is production or
    // says neither (`gateway::promotion`); with none configured it cannot tell, so it says so.
    if !decision.kill_switch() && posture.environment().is_none() {
        out.push(
            "I-11 not checked: no environment is configured (--environment, GATEWAY_ENVIRONMENT or OTEL_RESOURCE_ATTRIBUTES' deployment.environment.name), so whether FLAG_RBAC_V2 needs its console_flag_promotions row here is unknown; set it (production, staging, ...) and the gateway reads the row"
                .to_string(),
        );
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

    fn decision(flag: bool, url: bool, waived: bool) -> DecisionSettings {
        DecisionSettings {
            flag_rbac_v2: true,
            flag_ticket_scoped_grants: flag,
            ticket_validation_url: url.then(|| "http://fs/{ticket_id}".to_string()),
            ticket_revalidation_waived: waived,
            break_glass_requires_alert: true,
        }
    }

    /// I-11 is said unchecked where no environment is configured and FLAG_RBAC_V2 is on, and
    /// not where one is (the watch reads the row) or the flag is off.
    #[test]
    fn an_unconfigured_environment_is_said_to_leave_i11_unchecked() {
        let posture = |environment: Option<&str>| PostureSettings {
            environment: environment.map(str::to_string),
            alert_webhook_url: Some("http://hook".to_string()),
            audit_writer_url: None,
            audit_writer_alert_after: 60.0,
        };
        let i11 = |d: &DecisionSettings, p: &PostureSettings| {
            weakened(d, p)
                .iter()
                .any(|l| l.starts_with("I-11 not checked: no environment"))
        };
        let on = decision(true, true, false);
        if std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none() {
            assert!(i11(&on, &posture(None)));
        }
        assert!(!i11(&on, &posture(Some("production"))));
        assert!(!i11(&on, &posture(Some("staging"))));
        let off = DecisionSettings {
            flag_rbac_v2: false,
            ..decision(true, true, false)
        };
        assert!(!i11(&off, &posture(None)));
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
