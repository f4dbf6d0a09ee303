//! No mapping the gateway accepts lets Console's registration order choose the outcome (issue 44
//! part 2).
//!
//! Werkzeug tries two segments it weighs equally (`<v>` and `<uuid:v>`, `<a>.txt` and
//! `<uuid:a>.txt`) in the order Console registered its rules, and a strict-slash redirect it
//! meets on the way ends its search: for such rule pairs the view that runs (or whether any
//! runs) depends on an order routes.toml cannot know. The gateway must refuse every such pair.
//!
//! `mappings_werkzeug_routes_alike_in_every_order_are_the_only_ones_accepted` generates random
//! rule sets (static segments, `<v>`, `<int:v>`, `<uuid:v>`, `<path:v>`, literal text around a
//! converter, trailing slash or not, several methods), routes generated requests through a real
//! Werkzeug `Map` in several registration orders (the file's, reversed, shuffles from a fixed
//! seed: `tests/werkzeug_orders.py`) and asks `rbac-gateway check` about each set. It fails on
//! any request whose Werkzeug outcome differs between orders in a set `check` accepted (exit
//! 0), and on any request of an accepted set the gateway decides by another rule than Werkzeug
//! runs in the file's order. Pure library + subprocesses: no gateway process, no database.

use std::path::Path;
use std::process::{Command, Output};

use rbac_gateway::policy::mapping::Mapping;

use crate::helpers::{python_oracle, timed_alone_blocking, Rng, Route};

const U: &str = "0d6a3f8e-5b3c-4c1e-9a57-3f2b8c1d4e5f";
const WORDS: &[&str] = &["a", "b"];
const METHOD_SETS: &[&[&str]] = &[
    &["GET"],
    &["GET"],
    &["POST"],
    &["GET", "POST"],
    &["DELETE"],
    &["GET", "DELETE"],
];
const REQUEST_METHODS: &[&str] = &["GET", "POST", "DELETE"];
const SETS: usize = 500;
const SHUFFLES: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Conv {
    Default,
    Int,
    Uuid,
    Path,
}

/// One segment of a generated rule: static text, or a converter with literal text around it.
#[derive(Clone)]
enum Seg {
    Static(&'static str),
    Var {
        conv: Conv,
        prefix: &'static str,
        suffix: &'static str,
    },
}

#[derive(Clone)]
struct GenRule {
    segs: Vec<Seg>,
    slash: bool,
    methods: &'static [&'static str],
}

impl GenRule {
    fn path(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.segs.iter().enumerate() {
            out.push('/');
            match s {
                Seg::Static(w) => out.push_str(w),
                Seg::Var {
                    conv,
                    prefix,
                    suffix,
                } => {
                    let conv = match conv {
                        Conv::Default => "",
                        Conv::Int => "int:",
                        Conv::Uuid => "uuid:",
                        Conv::Path => "path:",
                    };
                    out.push_str(&format!("{prefix}<{conv}v{i}>{suffix}"));
                }
            }
        }
        if self.slash || self.segs.is_empty() {
            out.push('/');
        }
        out
    }
}

/// A rule set whose rules share a skeleton (a word or a variable per position), so that their
/// segments meet at the same places of Werkzeug's state machine.
fn rule_set(rng: &mut Rng) -> Vec<GenRule> {
    let depth = 1 + rng.below(3);
    let skeleton: Vec<Option<&'static str>> = (0..depth)
        .map(|_| {
            if rng.pct(40) {
                Some(*rng.pick(WORDS))
            } else {
                None
            }
        })
        .collect();
    let n = 2 + rng.below(4);
    (0..n)
        .map(|_| {
            let len = if rng.pct(70) {
                depth
            } else {
                1 + rng.below(depth)
            };
            let segs: Vec<Seg> = (0..len)
                .map(|i| {
                    let word = if rng.pct(15) {
                        match skeleton[i] {
                            Some(_) => None,
                            None => Some(*rng.pick(WORDS)),
                        }
                    } else {
                        skeleton[i]
                    };
                    match word {
                        Some(w) if rng.pct(80) => Seg::Static(w),
                        Some(_) => Seg::Static(WORDS[rng.below(WORDS.len())]),
                        None => {
                            let conv = match rng.below(100) {
                                0..=34 => Conv::Default,
                                35..=54 => Conv::Int,
                                55..=84 => Conv::Uuid,
                                _ if i + 1 == len => Conv::Path,
                                _ => Conv::Default,
                            };
                            let (prefix, suffix) = match rng.below(100) {
                                0..=74 => ("", ""),
                                75..=86 => ("x", ""),
                                _ => ("", ".txt"),
                            };
                            Seg::Var {
                                conv,
                                prefix,
                                suffix,
                            }
                        }
                    }
                })
                .collect();
            let ends_in_path = matches!(
                segs.last(),
                Some(Seg::Var {
                    conv: Conv::Path,
                    ..
                })
            );
            GenRule {
                slash: !ends_in_path && rng.pct(40),
                segs,
                methods: METHOD_SETS[rng.below(METHOD_SETS.len())],
            }
        })
        .collect()
}

/// A value for a converter: most often one it accepts, else one of another converter's.
fn value(rng: &mut Rng, conv: Conv) -> String {
    let any = ["abc", "a", "b", "5", U, "x5"];
    if rng.pct(40) {
        return rng.pick(&any).to_string();
    }
    match conv {
        Conv::Default => rng.pick(&["abc", "a", "b", "5", U]).to_string(),
        Conv::Int => rng.pick(&["5", "42"]).to_string(),
        Conv::Uuid => rng.pick(&[U, &U.to_uppercase()]).to_string(),
        Conv::Path => rng.pick(&["a/b", "5", U, "a", "b/abc", "a/"]).to_string(),
    }
}

/// Requests around every rule of the set: its variables filled four times, with and without the
/// trailing slash, sometimes a segment more or less, under every method of `REQUEST_METHODS`.
fn requests(rng: &mut Rng, rules: &[GenRule]) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    for r in rules {
        for fill in 0..4 {
            // The first fill gives every variable a uuid where its converter takes one: the
            // value most converters share.
            let mut segs: Vec<String> = r
                .segs
                .iter()
                .map(|s| match s {
                    Seg::Static(w) => w.to_string(),
                    Seg::Var {
                        conv,
                        prefix,
                        suffix,
                    } => {
                        let v = match conv {
                            Conv::Int if fill == 0 => "5".to_string(),
                            _ if fill == 0 => U.to_string(),
                            _ => value(rng, *conv),
                        };
                        format!("{prefix}{v}{suffix}")
                    }
                })
                .collect();
            match rng.below(10) {
                _ if fill == 0 => {}
                0 if segs.len() > 1 => {
                    segs.pop();
                }
                1 => segs.push(rng.pick(WORDS).to_string()),
                _ => {}
            }
            let base = format!("/{}", segs.join("/"));
            paths.push(format!("{}/", base.trim_end_matches('/')));
            if base.len() > 1 {
                paths.push(base.trim_end_matches('/').to_string());
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .flat_map(|p| {
            REQUEST_METHODS
                .iter()
                .map(move |m| (m.to_string(), p.clone()))
        })
        .collect()
}

fn toml_of(rules: &[(String, Vec<String>)]) -> String {
    rules
        .iter()
        .enumerate()
        .map(|(i, (path, methods))| {
            let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
            let role = format!("role-{i}");
            Route::new(&methods, path).roles(&[&role]).to_toml() + "\n"
        })
        .collect()
}

/// `rbac-gateway check --routes FILE`: the binary operators and `serve` rely on.
fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbac-gateway"))
        .env_remove("DATABASE_URL")
        .env_remove("GATEWAY_ROUTES")
        .arg("check")
        .arg("--routes")
        .arg(file)
        .output()
        .unwrap()
}

/// `tests/werkzeug_orders.py` on every set: one JSON answer per set.
fn werkzeug_in_orders(sets: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let input: String = sets.iter().map(|s| s.to_string() + "\n").collect();
    python_oracle("werkzeug_orders.py", &[], input, sets.len())
}

fn set_json(
    rules: &[(String, Vec<String>)],
    requests: &[(String, String)],
    seed: u64,
) -> serde_json::Value {
    serde_json::json!({
        "rules": rules.iter().map(|(p, m)| serde_json::json!([p, m])).collect::<Vec<_>>(),
        "requests": requests.iter().map(|(m, p)| serde_json::json!([m, p])).collect::<Vec<_>>(),
        "seed": seed,
        "shuffles": SHUFFLES,
    })
}

#[test]
fn mappings_werkzeug_routes_alike_in_every_order_are_the_only_ones_accepted() {
    let _alone = timed_alone_blocking();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x0DE5_44B0_0A11_5EED);
    let mut sets = Vec::new();
    let mut cases = Vec::new();
    for n in 0..SETS {
        let generated = rule_set(&mut rng);
        let rules: Vec<(String, Vec<String>)> = generated
            .iter()
            .map(|r| (r.path(), r.methods.iter().map(|m| m.to_string()).collect()))
            .collect();
        let reqs = requests(&mut rng, &generated);
        sets.push(set_json(&rules, &reqs, rng.next() >> 11));
        let file = dir.path().join(format!("set-{n}.toml"));
        let text = toml_of(&rules);
        std::fs::write(&file, &text).unwrap();
        cases.push((rules, reqs, file, text));
    }
    // Werkzeug works through the sets while `check` is asked about each.
    let started = std::time::Instant::now();
    let werkzeug = std::thread::spawn(move || {
        let answers = werkzeug_in_orders(&sets);
        (answers, started.elapsed())
    });
    let verdicts: Vec<Output> = cases.iter().map(|(_, _, file, _)| check(file)).collect();
    let check_time = started.elapsed();
    let (answers, werkzeug_time) = werkzeug.join().unwrap();

    let (mut accepted, mut order_dependent, mut slash_dependent, mut refused_independent) =
        (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (((rules, reqs, file, text), answer), out) in cases.iter().zip(&answers).zip(&verdicts) {
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(64)),
            "check exits 0 or 64: {code:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = code == Some(0);
        let in_process = Mapping::from_str("set.toml", Path::new("set.toml"), text);
        assert_eq!(ok, in_process.is_ok(), "check and Mapping::load agree");
        let differs = answer["differs"].as_array().unwrap();
        let orders = answer["orders"].as_array().unwrap();
        if !differs.is_empty() {
            order_dependent += 1;
            let slash = differs.iter().any(|d| {
                d["outcomes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o.as_str().unwrap().starts_with("308 "))
            });
            if slash {
                slash_dependent += 1;
            }
        } else if !ok {
            refused_independent += 1;
        }
        if !ok {
            continue;
        }
        accepted += 1;
        let rules_text = rules
            .iter()
            .enumerate()
            .map(|(i, (p, m))| format!("  r{i}: {} {p}", m.join(",")))
            .collect::<Vec<_>>()
            .join("\n");
        for d in differs {
            let i = d["request"].as_u64().unwrap() as usize;
            let (method, path) = &reqs[i];
            let by_order: Vec<String> = orders
                .iter()
                .zip(d["outcomes"].as_array().unwrap())
                .map(|(o, out)| format!("    order {o}: {}", out.as_str().unwrap()))
                .collect();
            failures.push(format!(
                "{}: accepted by check, but Werkzeug's answer to {method} {path} depends on the registration order:\n{rules_text}\n{}",
                file.display(),
                by_order.join("\n")
            ));
        }
        // The existing rule: no request decided by a rule Werkzeug would not run.
        let mapping = in_process.unwrap();
        for ((method, path), want) in reqs.iter().zip(answer["file"].as_array().unwrap()) {
            let got = mapping.find(method, path);
            let got_endpoint = got.as_ref().map(|(r, _)| format!("r{}", r.index));
            let got_redirect = got.as_ref().is_some_and(|(_, m)| m.slash_redirect);
            let want_endpoint = want["endpoint"].as_str().map(str::to_string);
            let want_redirect = want["redirect"].as_bool().unwrap();
            if got_endpoint != want_endpoint
                || (got_endpoint.is_some() && got_redirect != want_redirect)
            {
                failures.push(format!(
                    "{}: {method} {path}: the gateway decides by {got_endpoint:?} (slash redirect: {got_redirect}), Werkzeug in the file's order answers {}\n{rules_text}",
                    file.display(),
                    want["outcome"]
                ));
            }
        }
    }
    eprintln!(
        "order differential: {SETS} rule sets, {} requests, {} orders each; {order_dependent} sets order-dependent in Werkzeug ({slash_dependent} through a slash redirect), {accepted} accepted by check, {refused_independent} refused though no order difference was seen, {} failures (Werkzeug {werkzeug_time:?}, check {check_time:?}, both at once)",
        cases.iter().map(|c| c.1.len()).sum::<usize>(),
        2 + SHUFFLES,
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // The generator must produce both kinds, or the test proves nothing.
    assert!(
        order_dependent >= 50,
        "only {order_dependent} order-dependent sets"
    );
    assert!(
        slash_dependent >= 10,
        "only {slash_dependent} through a slash redirect"
    );
    assert!(accepted >= 150, "only {accepted} sets accepted");
}

/// The minimal pairs of issue 44: Werkzeug answers differently in the two orders (proven with
/// Werkzeug itself), and `check` refuses each, naming both rules with their line and column.
/// Their neighbours that Werkzeug routes alike in both orders stay accepted.
#[test]
fn slash_rules_weighed_equally_with_a_rival_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let pair = |a: (&[&str], &str), b: (&[&str], &str)| -> Vec<(String, Vec<String>)> {
        [a, b]
            .iter()
            .map(|(methods, path)| {
                (
                    path.to_string(),
                    methods.iter().map(|m| m.to_string()).collect(),
                )
            })
            .collect()
    };
    const GET: &[&str] = &["GET"];
    let refused = [
        pair(
            (GET, "/console/<v0>/audit/"),
            (GET, "/console/<uuid:v0>/audit"),
        ),
        pair((GET, "/<v0>/"), (GET, "/<uuid:v0>")),
        pair((GET, "/x/<uuid:a>.txt/"), (GET, "/x/<a>.txt")),
        pair((GET, "/s/x<a>/<b>/"), (GET, "/s/x<a>/<uuid:b>")),
        // HEAD comes with GET, in Werkzeug as in the gateway.
        pair((&["HEAD"], "/<v0>/"), (GET, "/<uuid:v0>")),
        // One shared method is enough.
        pair(
            (&["GET", "DELETE"], "/<uuid:v0>/"),
            (&["POST", "DELETE"], "/<v0>"),
        ),
    ];
    let accepted = [
        // No shared method: Werkzeug skips the other method's rule and goes on (then 405).
        pair(
            (GET, "/console/<v0>/audit/"),
            (&["POST"], "/console/<uuid:v0>/audit"),
        ),
        // Equal weights, but no path reaches a rule (or its slash redirect) behind both.
        pair((GET, "/<v0>/"), (GET, "/<uuid:v0>/edit")),
        pair((GET, "/x/<a>/edit/"), (GET, "/x/<uuid:b>/view")),
        // Different weights: Werkzeug's own order.
        pair((GET, "/<int:v0>/"), (GET, "/<v0>")),
        pair((GET, "/x/<a>/"), (GET, "/x/<path:p>")),
        // Values no segment of the other can take: literals, an integer's digits, a uuid's
        // dashes.
        pair((GET, "/x/<a>.txt/"), (GET, "/x/<uuid:a>.json")),
        pair((GET, "/x/x<int:a>/"), (GET, "/x/<int:b>y")),
        pair((GET, "/<v0>/<uuid:a>/"), (GET, "/<uuid:v0>/<int:b>")),
    ];
    let probes = |rules: &[(String, Vec<String>)]| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, _) in rules {
            let filled = path
                .split('/')
                .map(|s| {
                    let mut s = s.to_string();
                    while let (Some(a), Some(b)) = (s.find('<'), s.find('>')) {
                        let v = if s[a..b].contains("int:") { "5" } else { U };
                        s.replace_range(a..=b, v);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join("/");
            let bare = filled.trim_end_matches('/').to_string();
            for p in [bare.clone(), format!("{bare}/")] {
                for m in ["GET", "HEAD", "POST", "DELETE"] {
                    out.push((m.to_string(), p.clone()));
                }
            }
        }
        out
    };
    let all: Vec<_> = refused.iter().chain(&accepted).collect();
    let sets: Vec<serde_json::Value> = all
        .iter()
        .map(|rules| set_json(rules, &probes(rules), 44))
        .collect();
    let answers = werkzeug_in_orders(&sets);
    for (n, (rules, answer)) in all.iter().zip(&answers).enumerate() {
        let dependent = !answer["differs"].as_array().unwrap().is_empty();
        let file = dir.path().join(format!("pair-{n}.toml"));
        std::fs::write(&file, toml_of(rules)).unwrap();
        let out = check(&file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (a, b) = (&rules[0].0, &rules[1].0);
        if n < refused.len() {
            assert!(
                dependent,
                "{a} / {b}: Werkzeug's answer depends on the order"
            );
            assert_eq!(out.status.code(), Some(64), "{a} / {b} refused: {stdout}");
            // At the later rule's path (line 8, col 8), naming both rules where they start.
            let f = file.display();
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{f}:8:8: ")))
                .unwrap_or_else(|| panic!("{a} / {b}: no error at the second rule: {stdout}"));
            for want in [
                format!("{} {b} ({f}:6:1)", rules[1].1.join(",")),
                format!("{} {a} ({f}:1:1)", rules[0].1.join(",")),
                "trailing slash".to_string(),
            ] {
                assert!(line.contains(&want), "{a} / {b}: {want:?} in {line}");
            }
        } else {
            assert!(
                !dependent,
                "{a} / {b}: Werkzeug routes alike in every order: {}",
                answer["differs"]
            );
            assert_eq!(out.status.code(), Some(0), "{a} / {b} accepted: {stdout}");
        }
    }
}
