//! The house's one structural rule, checked on the source: no import cycle between modules
//! (ARCHITECTURE.md). Every `crate::a::b` path in a module's non-test code is an edge from that
//! module to the longest module the path names; a strongly connected component of more than one
//! module is a cycle, and the test names its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/policy/answer.rs` -> `policy::answer`; `src/doors/proxy/mod.rs` -> `doors::proxy`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The module graph: module -> (module it names -> one path that names it).
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for file in &files {
        let m = module_of(src, file);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut edges = BTreeMap::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let path: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                let target = (1..=parts.len())
                    .rev()
                    .map(|k| parts[..k].join("::"))
                    .find(|cand| modules.contains(cand));
                if let Some(t) = target {
                    // A module's own path or its parent's (`crate::doors` in doors::proxy) is no edge.
                    if t != m && !m.starts_with(&format!("{t}::")) {
                        edges.entry(t).or_insert(path.clone());
                    }
                }
            }
        }
        g.insert(m, edges);
    }
    g
}

/// Tarjan's strongly connected components with more than one module.
fn cycles(g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct S<'a> {
        g: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g[v].keys() {
            let Some((w, _)) = s.g.get_key_value(w.as_str()) else {
                continue;
            };
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_module_imports_itself_through_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(
        g.contains_key("policy::answer") && g["doors::forward_auth"].contains_key("policy::answer"),
        "the scan found no module graph: {:?}",
        g.keys().collect::<Vec<_>>()
    );
    let found = cycles(&g);
    let explain: Vec<String> = found
        .iter()
        .map(|comp| {
            let edges: Vec<String> = comp
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|(b, _)| comp.contains(b))
                        .map(move |(b, why)| format!("{a} -> {b} (crate::{why})"))
                })
                .collect();
            edges.join("\n  ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles:\n  {}",
        explain.join("\n\n  ")
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let edge = |to: &str| (to.to_string(), to.to_string());
    let g: BTreeMap<String, BTreeMap<String, String>> = [
        ("a".to_string(), [edge("b")].into()),
        ("b".to_string(), [edge("c")].into()),
        ("c".to_string(), [edge("a")].into()),
        ("d".to_string(), [edge("a")].into()),
    ]
    .into();
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    let mut comp = found[0].clone();
    comp.sort();
    assert_eq!(comp, ["a", "b", "c"]);
}

/// The end of the call whose `(` is at `open`: its matching `)`, skipping string literals
/// (plain and raw) so that a parenthesis inside SQL text does not count.
fn call_end(text: &str, open: usize) -> usize {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && !b[i - 1].is_ascii_alphanumeric()
                && b[i - 1] != b'_' =>
            {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                let body = i + 1 + hashes + 1;
                let close = format!("\"{}", "#".repeat(hashes));
                i = body + text[body..].find(&close).expect("a closed raw string") + close.len();
                continue;
            }
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced call at byte {open}");
}

/// The statements of `text` (`sqlx::query*(...)`) not followed by `.persistent(false)`, as
/// `line: text`.
fn named_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ctor in [
        "sqlx::query(",
        "sqlx::query_as(",
        "sqlx::query_scalar(",
        "sqlx::query_as::<",
        "sqlx::query_scalar::<",
    ] {
        for (at, _) in text.match_indices(ctor) {
            let open = at + text[at..].find('(').unwrap();
            let end = call_end(text, open);
            if !text[end + 1..]
                .trim_start()
                .starts_with(".persistent(false)")
            {
                let line = text[..at].lines().count();
                out.push(format!(
                    "{line}: {}",
                    text[at..=end].lines().next().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// Architecture Invariant (issue 44): no statement leaves a prepared statement behind on its
/// server connection, which a transaction-pooling PgBouncer may hand to another client (whose
/// `sqlx_s_14` would then run with our parameters). Every statement in `src/` is unnamed, and
/// only `stores/db.rs` (which wraps every statement in a transaction) and the change feed's
/// LISTEN pool (a direct connection) name sqlx's pool type.
#[test]
fn every_statement_is_unnamed_and_goes_through_db() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        for s in named_statements(&text) {
            problems.push(format!("{rel}:{s} (add .persistent(false))"));
        }
        let allowed = rel == "stores/db.rs" || rel == "stores/feed.rs";
        if !allowed && text.contains("PgPool") {
            problems.push(format!("{rel} names PgPool: use stores::db::Db"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_statement_check_finds_a_named_statement() {
    let text = "let a = sqlx::query(\"SELECT (1)\").bind(x).fetch_one(&db);\n\
                let b = sqlx::query_scalar::<_, i32>(r#\"SELECT \"(\"\"#).persistent(false).fetch_one(&db);";
    assert_eq!(named_statements(text), ["1: sqlx::query(\"SELECT (1)\")"]);
}
