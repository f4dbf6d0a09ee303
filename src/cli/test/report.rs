//! A run's report, and its three forms: text for a terminal, JSON, and JUnit XML for CI. Each is
//! stable: cases in file order, failures in rule order, no times.

use serde::Serialize;

use super::world::{CaseReport, Uncovered};

/// What a run found: `test --format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The mapping under test (a file, or `database:VERSION`) and its version.
    pub mapping: String,
    pub version: String,
    /// Where the groups came from: "the database" or "the catalogue migrate seeds".
    pub catalogue: &'static str,
    /// The test files, in the order run.
    pub tests: Vec<String>,
    /// The SHA-256 of the test files' bytes, one after the other in that order (for one file,
    /// `sha256sum FILE`): what `mapping push` records.
    pub tests_sha256: String,
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseReport>,
    /// An admin's break-glass session counted only once its alert was delivered (`serve`'s
    /// default, I-4); false with `--break-glass-requires-alert=false`.
    pub break_glass_requires_alert: bool,
    /// With `--coverage`: every rule no case reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncovered: Option<Vec<Uncovered>>,
    /// With `--coverage`: the number of rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
}

/// The lines of one failed case (text and JUnit's failure body): for one request, what was
/// expected, what was decided and why; for a statement, each offending rule and its requests.
fn failure_lines(c: &CaseReport) -> Vec<String> {
    let mut out = Vec::new();
    let mut rule_said: Option<&str> = None;
    for f in &c.failures {
        match (&f.path, c.kind) {
            (Some(path), "request") => {
                out.push(format!("{} {} as {}", f.method, path, f.who));
                out.push(format!("  {}", f.problem));
                if !f.why.is_empty() {
                    out.push("  why:".into());
                    out.extend(f.why.iter().map(|w| format!("    {w}")));
                }
            }
            (path, _) => {
                let rule = f.rule.as_deref().unwrap_or("");
                if f.rule.is_some() && rule_said != Some(rule) {
                    out.push(format!(
                        "offending rule {rule} ({})",
                        f.at.as_deref().unwrap_or("-")
                    ));
                    rule_said = Some(rule);
                }
                let indent = if f.rule.is_some() { "  " } else { "" };
                match path {
                    Some(path) => out.push(format!(
                        "{indent}{} {} as {}: {}",
                        f.method, path, f.who, f.problem
                    )),
                    None if f.method.is_empty() => out.push(format!("{indent}{}", f.problem)),
                    None => out.push(format!("{indent}{}: {}", f.method, f.problem)),
                }
            }
        }
    }
    if c.failures_not_shown > 0 {
        out.push(format!(
            "... and {} more failure(s) not shown (a case shows at most {}, a report {})",
            c.failures_not_shown,
            super::run::SHOWN_PER_CASE,
            super::run::SHOWN_IN_ALL
        ));
    }
    out
}

/// What the text report says of a run with `--break-glass-requires-alert=false`.
const ALERT_NOT_REQUIRED: &str = "break-glass sessions counted before their alert was delivered (--break-glass-requires-alert=false), as a serve so started decides: I-4 not held";

/// The report for a terminal: each failure with what was expected, what was decided and why;
/// then the totals (and, with `--coverage`, the rules no case reached).
pub fn text(r: &Report, verbose: bool) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "mapping {} (version {}), groups from {}; tests: {}",
        r.mapping,
        r.version,
        r.catalogue,
        r.tests.join(", ")
    ));
    if !r.break_glass_requires_alert {
        out.push(ALERT_NOT_REQUIRED.to_string());
    }
    for c in &r.cases {
        if c.passed {
            if verbose {
                out.push(format!("PASS {}:{}: {}", c.file, c.line, c.name));
            }
            for n in &c.notes {
                out.push(format!("NOTE {}:{}: {}: {n}", c.file, c.line, c.name));
            }
            continue;
        }
        out.push(String::new());
        out.push(format!("FAIL {}:{}: {}", c.file, c.line, c.name));
        out.extend(failure_lines(c).into_iter().map(|l| format!("  {l}")));
    }
    out.push(String::new());
    out.push("-".repeat(72));
    out.push(format!("PASS: {}/{}", r.passed, r.total));
    if r.failed > 0 {
        out.push(format!("FAIL: {}/{}", r.failed, r.total));
    }
    if let (Some(uncovered), Some(rules)) = (&r.uncovered, r.rules) {
        out.push(format!(
            "coverage: {} of {rules} rules reached by a case",
            rules - uncovered.len()
        ));
        if !uncovered.is_empty() {
            out.push("not reached by any case:".into());
            out.extend(uncovered.iter().map(|u| format!("  {} ({})", u.rule, u.at)));
        }
    }
    out.join("\n")
}

/// `s` as XML text: the five special characters escaped, a character XML 1.0 cannot carry
/// written as `\u{..}`.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: a `testsuite` per test file, a `testcase` per case (its file and line), a
/// `failure` per failed case with what was expected, decided and why; with `--coverage`, a
/// `coverage` suite whose `system-out` names the rules no case reached.
pub fn junit(r: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"rbac-gateway test\" tests=\"{}\" failures=\"{}\" errors=\"0\">\n",
        r.total, r.failed
    ));
    for file in &r.tests {
        let cases: Vec<&CaseReport> = r.cases.iter().filter(|c| c.file == *file).collect();
        let failed = cases.iter().filter(|c| !c.passed).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" skipped=\"0\">\n",
            xml(file),
            cases.len()
        ));
        out.push_str("    <properties>\n");
        for (name, value) in [
            ("mapping", r.mapping.as_str()),
            ("mapping_version", r.version.as_str()),
            ("catalogue", r.catalogue),
            ("tests_sha256", r.tests_sha256.as_str()),
            (
                "break_glass_requires_alert",
                if r.break_glass_requires_alert {
                    "true"
                } else {
                    "false"
                },
            ),
        ] {
            out.push_str(&format!(
                "      <property name=\"{name}\" value=\"{}\"/>\n",
                xml(value)
            ));
        }
        out.push_str("    </properties>\n");
        for c in cases {
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\"",
                xml(file),
                xml(&c.name),
                xml(file),
                c.line
            );
            if c.passed && c.notes.is_empty() {
                out.push_str(&format!("{open}/>\n"));
                continue;
            }
            if c.passed {
                out.push_str(&format!(
                    "{open}>\n      <system-out>{}</system-out>\n    </testcase>\n",
                    xml(&c.notes.join("\n"))
                ));
                continue;
            }
            let message = c.failures.first().map_or_else(
                || format!("{} failure(s), not shown", c.failures_not_shown),
                |f| f.problem.clone(),
            );
            out.push_str(&format!(
                "{open}>\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>\n",
                xml(&message),
                c.kind,
                xml(&failure_lines(c).join("\n"))
            ));
        }
        out.push_str("  </testsuite>\n");
    }
    if let (Some(uncovered), Some(rules)) = (&r.uncovered, r.rules) {
        let lines: Vec<String> = uncovered
            .iter()
            .map(|u| format!("{} ({})", u.rule, u.at))
            .collect();
        out.push_str(&format!(
            "  <testsuite name=\"coverage\" tests=\"0\" failures=\"0\" errors=\"0\" skipped=\"0\">\n    <system-out>{} of {rules} rules reached by a case; not reached:\n{}</system-out>\n  </testsuite>\n",
            rules - uncovered.len(),
            xml(&lines.join("\n"))
        ));
    }
    out.push_str("</testsuites>");
    out
}

/// JUnit XML for a run that did not load (a test file or the mapping, exit 64) or could not
/// read the database (69): one `testcase` with the `error` and its text, so a CI system that
/// reads the report shows why there are no cases.
pub fn junit_error(text: &str, exit: i32) -> String {
    let kind = match exit {
        crate::cli::EXIT_USAGE => "not_loaded",
        crate::cli::EXIT_UNAVAILABLE => "unavailable",
        _ => "failure",
    };
    let message = text.lines().last().unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"rbac-gateway test\" tests=\"1\" failures=\"0\" errors=\"1\">\n  <testsuite name=\"rbac-gateway test\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">\n    <testcase classname=\"rbac-gateway test\" name=\"the mapping and its tests load\">\n      <error message=\"{}\" type=\"{kind}\">{}</error>\n    </testcase>\n  </testsuite>\n</testsuites>",
        xml(message),
        xml(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_escapes_what_xml_cannot_carry() {
        assert_eq!(
            xml("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\\u{1}"
        );
    }
}
