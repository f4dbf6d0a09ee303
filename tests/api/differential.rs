//! The gateway's matcher against Werkzeug itself (issue 6 part 3).
//!
//! Several thousand (method, raw target) pairs, generated deterministically from the vocabulary
//! of the production routes.toml (its static segments, ids, uuids, percent-encodings, dots,
//! trailing slashes, case variants, path parameters...), go through both:
//!
//! * the gateway's own code: `target::check_method` + `target::parse_target` (refusal) and
//!   `Mapping::find` on the decoded path;
//! * `tests/werkzeug_oracle.py`: a werkzeug `Map` built from the same routes.toml, fed the raw
//!   target the way gunicorn does (query cut, path percent-decoded once, UTF-8 'replace').
//!
//! For every pair the gateway must either refuse it, or pick exactly Werkzeug's rule (no rule
//! where Werkzeug has none; `slash_redirect` where Werkzeug answers with a RequestRedirect).
//! Pure library + a python subprocess: no gateway process, no database.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use rbac_gateway::policy::mapping::Mapping;
use rbac_gateway::policy::target;

use crate::helpers::{python_oracle, root, routes_text, tool, Rng, Route};

const METHODS: &[&str] = &["GET", "POST", "DELETE", "HEAD"];

/// Values for variables and stray segments.
const IDS: &[&str] = &[
    "1",
    "42",
    "007",
    "0",
    "-1",
    "99999999999999999999",
    "abc",
    "a.b",
    "x-y",
    "_status",
    "1e3",
    "invite",
    "promotions",
    "fragment",
    "123e4567-e89b-12d3-a456-426614174000",
    "123E4567-E89B-12D3-A456-426614174000",
    "123e4567e89b12d3a456426614174000",
    "a;b",
    ";",
    "+",
    "a+b",
    "~",
    "!",
    "$",
    "&",
    "'",
    "(x)",
    "*",
    ",",
    "=",
    "@",
    ":",
    "x:y",
    "...",
    ".hidden",
    "a.json",
    "v2",
    "caf%C3%A9",
    "%25",
    "%252F",
    "%252e%252e",
    "%E2%80%8B",
    "%EF%BC%8F",
    "%C3%A9",
];

/// Segments that are (or decode to) dots, separators or controls: the gateway must refuse them
/// or agree with Werkzeug on them.
const HOSTILE: &[&str] = &[
    ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2F", "%2f", "a%2Fb", "%5C", "%5c", "%00", "%0a",
    "%20", "%C0%AF", "%FF", "%D9%A3", "%C2%85", "%", "%4", "%zz", "%3F", "%23", "%3B", "%3b",
    "%2B", "%7E", "%3A",
];

const EDGES: &[&str] = &[
    "/console/customers",
    "/console/customers/",
    "/console/%63ustomers",
    "/console/customers/invite",
    "/console/customers/invite/",
    "/console/customers/%69nvite",
    "/console/customers/1/",
    "/console/beta",
    "/console/beta/",
    "/console/beta/x",
    "/console/beta/x/",
    "/console/beta/x/y/z",
    "/api/billing",
    "/api/billing/",
    "/api/billing/x",
    "/api/billing/dashboard",
    "/api/billing/dashboard/",
    "/api/billing/dashboard/x/y",
    "/api/billing/dashboardx",
    "/static",
    "/static/",
    "/static/a",
    "/static/a/",
    "/static/a/b.css",
    "/static/%2e",
    "/auth/webauthn/",
    "/auth/webauthn/register/begin",
    "/internal/api/",
    "/internal/api/a/b/c/",
    "/console/flags/promotions",
    "/console/flags/promotions/",
    "/console/flags/promotions/verify",
    "/console/flags/promotions/fragment",
    "/console/flags/promotions/1/promote",
    "/console/flags/promotions/promote",
    "/console/flags/fragment/verify",
    "/console/flags/x/verify/",
    "/dashboard/x/flag/y/toggle",
    "/dashboard/sites/1/",
    "/dashboard/api/sites/1/audit",
    "/secrets/x/rotate/1/cell",
    "/secrets/x/rotate/1/progress/",
    "/api/secrets/x/rotate/1",
    "/api/secrets/x/rotate-v2",
    "/health/",
    "/ops?x=/",
    "/ops/",
    "/",
];

fn encode_some(rng: &mut Rng, seg: &str) -> String {
    let mut out = String::new();
    for c in seg.chars() {
        if c.is_ascii_alphanumeric() && rng.pct(35) {
            if rng.pct(50) {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push_str(&format!("%{:02x}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    if out == seg {
        // Encode at least the first character.
        if let Some(c) = seg.chars().next() {
            return format!("%{:02X}{}", c as u32, &seg[c.len_utf8()..]);
        }
    }
    out
}

fn case_variant(rng: &mut Rng, seg: &str) -> String {
    match rng.below(3) {
        0 => seg.to_ascii_uppercase(),
        1 => {
            let mut c = seg.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        }
        _ => seg
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
    }
}

/// A segment standing in for a variable (`path` converters may get several).
fn value(rng: &mut Rng, statics: &[String], is_path: bool) -> String {
    let one = |rng: &mut Rng| -> String {
        match rng.below(10) {
            0..=5 => rng.pick(IDS).to_string(),
            6 | 7 => rng.pick(statics).clone(),
            8 => {
                let id = *rng.pick(IDS);
                encode_some(rng, id)
            }
            _ => rng.pick(HOSTILE).to_string(),
        }
    };
    if is_path {
        let n = 1 + rng.below(3);
        (0..n).map(|_| one(rng)).collect::<Vec<_>>().join("/")
    } else {
        one(rng)
    }
}

/// A target derived from one rule of the mapping, then perturbed.
fn from_rule(rng: &mut Rng, rule: &str, statics: &[String]) -> String {
    let mut segs: Vec<String> = Vec::new();
    for seg in rule.split('/').skip(1) {
        if seg.contains('<') {
            // Keep literal text around converters (e.g. "v<x>.json"); fill each converter.
            let mut s = String::new();
            let mut rest = seg;
            while let Some(start) = rest.find('<') {
                s.push_str(&rest[..start]);
                let end = rest[start..].find('>').map(|e| start + e).unwrap();
                let is_path = rest[start..end].starts_with("<path:");
                s.push_str(&value(rng, statics, is_path));
                rest = &rest[end + 1..];
            }
            s.push_str(rest);
            segs.push(s);
            continue;
        }
        let s = match rng.below(100) {
            0..=79 => seg.to_string(),
            80..=85 => encode_some(rng, seg),
            86..=88 => case_variant(rng, seg),
            89..=92 => rng.pick(statics).clone(),
            93 => format!("{seg};x=1"),
            94 => format!("{seg}+"),
            95 => format!("{seg}%20"),
            96 => format!("{seg}."),
            97 => rng.pick(HOSTILE).to_string(),
            _ => format!("{seg}/{}", rng.pick(IDS)),
        };
        segs.push(s);
    }
    match rng.below(100) {
        0..=59 => {}
        60..=74 => {
            // Trailing slash toggled.
            if segs.last().is_some_and(|s| s.is_empty()) {
                segs.pop();
            } else {
                segs.push(String::new());
            }
        }
        75..=82 => {
            if segs.len() > 1 {
                segs.pop();
            }
        }
        83..=89 => segs.push(value(rng, statics, false)),
        90..=94 => segs.push(rng.pick(statics).clone()),
        _ => {
            let at = rng.below(segs.len() + 1);
            segs.insert(at, rng.pick(HOSTILE).to_string());
        }
    }
    let mut t = format!("/{}", segs.join("/"));
    if rng.pct(8) {
        t.push_str(match rng.below(4) {
            0 => "?x=1",
            1 => "?next=/ops/../secrets",
            2 => "?_method=DELETE",
            _ => "?",
        });
    }
    t
}

/// A target made of random vocabulary.
fn random_target(rng: &mut Rng, statics: &[String]) -> String {
    let n = 1 + rng.below(6);
    let mut segs = Vec::new();
    for _ in 0..n {
        segs.push(match rng.below(10) {
            0..=5 => rng.pick(statics).clone(),
            6 | 7 => rng.pick(IDS).to_string(),
            8 => {
                let s = rng.pick(statics).clone();
                encode_some(rng, &s)
            }
            _ => rng.pick(HOSTILE).to_string(),
        });
    }
    if rng.pct(20) {
        segs.push(String::new());
    }
    format!("/{}", segs.join("/"))
}

#[test]
fn matcher_agrees_with_werkzeug() {
    let routes_file = root().join("routes.toml");
    let mapping = Mapping::load(&routes_file).unwrap_or_else(|e| panic!("routes.toml: {e}"));
    let statics: Vec<String> = mapping
        .routes
        .iter()
        .flat_map(|r| r.path.split('/').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty() && !s.contains('<'))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rules: Vec<(String, Vec<String>)> = mapping
        .routes
        .iter()
        .map(|r| (r.path.clone(), r.methods.clone()))
        .collect();

    let mut rng = Rng(0x5EED_6A7E_3A11);
    let mut cases: Vec<(String, String)> = Vec::new();
    // Every rule as written (with variables filled) under every method, then perturbed forms.
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    // Hand-picked edges of Werkzeug's matcher: slash rules, path converters, static vs variable.
    for t in EDGES {
        for m in METHODS.iter().chain(&["PUT", "PATCH"]) {
            if seen.insert((m.to_string(), t.to_string())) {
                cases.push((m.to_string(), t.to_string()));
            }
        }
    }
    for (rule, _) in &rules {
        for m in METHODS {
            let mut r2 = Rng(rng.next());
            let t = from_rule(&mut r2, rule, &statics);
            if seen.insert((m.to_string(), t.clone())) {
                cases.push((m.to_string(), t));
            }
        }
    }
    // Rules ending in '/' (and their neighbours) are where slash redirects happen.
    let slash_rules: Vec<&(String, Vec<String>)> =
        rules.iter().filter(|(r, _)| r.ends_with('/')).collect();
    while cases.len() < 8000 {
        let (m, t) = match rng.below(100) {
            0..=69 => {
                let (rule, methods) = rng.pick(&rules).clone();
                let m = if rng.pct(70) {
                    rng.pick(&methods).clone()
                } else {
                    rng.pick(METHODS).to_string()
                };
                (m, from_rule(&mut rng, &rule, &statics))
            }
            70..=74 if !slash_rules.is_empty() => {
                let (rule, methods) = (*rng.pick(&slash_rules)).clone();
                let m = rng.pick(&methods).clone();
                (m, from_rule(&mut rng, &rule, &statics))
            }
            _ => (
                rng.pick(METHODS).to_string(),
                random_target(&mut rng, &statics),
            ),
        };
        if seen.insert((m.clone(), t.clone())) {
            cases.push((m, t));
        }
    }

    let input: String = cases
        .iter()
        .map(|(m, t)| serde_json::json!({"method": m, "target": t}).to_string() + "\n")
        .collect();
    let answers = python_oracle(
        "werkzeug_oracle.py",
        &[routes_file.as_os_str()],
        input,
        cases.len(),
    );

    let (mut refused, mut matched, mut redirects, mut none) = (0, 0, 0, 0);
    let mut mismatches = Vec::new();
    for ((method, raw), want) in cases.iter().zip(&answers) {
        if target::check_method(method.as_bytes()).is_err() {
            refused += 1;
            continue;
        }
        let t = match target::parse_target(raw.as_bytes()) {
            Ok(t) => t,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        let want_endpoint = want["endpoint"].as_str().map(str::to_string);
        let want_redirect = want["redirect"].as_bool().unwrap();
        let got = mapping.find(method, t.path());
        let got_endpoint = got.as_ref().map(|(r, _)| format!("r{}", r.index));
        let got_redirect = got.as_ref().is_some_and(|(_, m)| m.slash_redirect);
        match &got_endpoint {
            Some(_) if got_redirect => redirects += 1,
            Some(_) => matched += 1,
            None => none += 1,
        }
        if got_endpoint != want_endpoint
            || (got_endpoint.is_some() && got_redirect != want_redirect)
        {
            let describe = |e: &Option<String>, redirect: bool| match e {
                None => "no rule".to_string(),
                Some(e) => {
                    let i: usize = e[1..].parse().unwrap();
                    format!(
                        "{e} {}{}",
                        mapping.routes[i].label(),
                        if redirect { " (slash redirect)" } else { "" }
                    )
                }
            };
            mismatches.push(format!(
                "{method} {raw} (decoded {:?}): gateway {} / werkzeug {}",
                t.path(),
                describe(&got_endpoint, got_redirect),
                describe(&want_endpoint, want_redirect)
            ));
        }
    }
    eprintln!(
        "differential: {} cases, {refused} refused by the gateway, {matched} matched, {redirects} slash redirects, {none} no rule, {} mismatches",
        cases.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cases disagree with Werkzeug:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generator must exercise the matcher, not only the refusals.
    assert!(matched >= 1200, "only {matched} cases matched a rule");
    assert!(redirects >= 5, "only {redirects} slash redirects");
    assert!(none >= 1000, "only {none} cases matched no rule");
    assert!(refused >= 500, "only {refused} cases refused");
}

/// Werkzeug's answers for `probes` (method GET) under the mapping `text`: the path of the rule
/// each one reaches, or None.
fn werkzeug_paths(text: &str, probes: &[&str]) -> Vec<Option<String>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(&file, text).unwrap();
    let routes: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("path = \""))
        .map(|p| p.trim_end_matches('"').to_string())
        .collect();
    let input: String = probes
        .iter()
        .map(|t| serde_json::json!({"method": "GET", "target": t}).to_string() + "\n")
        .collect();
    let mut child = Command::new(tool("python3"))
        .arg(root().join("tests/werkzeug_oracle.py"))
        .arg(&file)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["endpoint"]
                .as_str()
                .map(|e| routes[e[1..].parse::<usize>().unwrap()].clone())
        })
        .collect()
}

/// Two segments Werkzeug weighs equally are tried in the order Console registered its rules:
/// proven here with Werkzeug itself (the same two rules in both orders pick different rules
/// for one path), and the gateway refuses such a mapping. Pairs it accepts get Werkzeug's
/// answer whatever the order.
#[test]
fn equally_weighted_rules_depend_on_registration_order_and_are_refused() {
    let two =
        |a: &str, b: &str| routes_text(&[Route::get(a).roles(&["r"]), Route::get(b).roles(&["s"])]);
    const U: &str = "123e4567-e89b-12d3-a456-426614174000";
    let probes: Vec<String> = [
        "/x/{U}",
        "/x/abc",
        "/x/a-b.c",
        "/x/{U}/edit",
        "/x/abc/edit",
        "/x/{U}/view",
        "/x/abc/view",
        "/x/5",
        "/x/v5",
        "/x/w5",
        "/x/a.json",
        "/x/a.yaml",
        "/x/{U}/y/z",
        "/x/abc/y/z",
        "/x/{U}/q",
    ]
    .iter()
    .map(|p| p.replace("{U}", U))
    .collect();
    let probes: Vec<&str> = probes.iter().map(String::as_str).collect();
    for (a, b) in [
        ("/x/<uuid:a>", "/x/<b>"),
        ("/x/<a>-<b>", "/x/<a>.<b>"),
        ("/x/<uuid:a>/edit", "/x/<b>/edit"),
        ("/x/<uuid:a>/<c>", "/x/<b>/edit"),
        ("/x/<uuid:a>/<path:c>", "/x/<b>/y/z"),
    ] {
        assert_ne!(
            werkzeug_paths(&two(a, b), &probes),
            werkzeug_paths(&two(b, a), &probes),
            "{a} / {b}: Werkzeug's answer depends on the order"
        );
        let e = Mapping::from_str("r.toml", std::path::Path::new("r.toml"), &two(a, b))
            .err()
            .unwrap_or_else(|| panic!("{a} / {b} accepted"));
        assert!(e.to_string().contains("weighs equally"), "{e}");
    }
    for (a, b) in [
        ("/x/<int:a>", "/x/<b>"),
        ("/x/v<int:a>", "/x/w<int:a>"),
        ("/x/<a>.json", "/x/<a>.yaml"),
        ("/x/<b>/view", "/x/<uuid:a>/edit"),
    ] {
        let text = two(a, b);
        let want = werkzeug_paths(&text, &probes);
        assert_eq!(want, werkzeug_paths(&two(b, a), &probes), "{a} / {b}");
        let m = Mapping::from_str("r.toml", std::path::Path::new("r.toml"), &text)
            .unwrap_or_else(|e| panic!("{a} / {b}: {e}"));
        let got: Vec<Option<String>> = probes
            .iter()
            .map(|p| m.find("GET", p).map(|(r, _)| r.path.clone()))
            .collect();
        assert_eq!(got, want, "{a} / {b}");
    }
}
