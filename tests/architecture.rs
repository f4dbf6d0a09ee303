//! The house's structural rules, checked on the source (ARCHITECTURE.md, "Folders"):
//!
//! - **Floors.** Each top folder of `src/` has a rank ([`FLOORS`], ground first); a module imports
//!   from its own folder and from the folders below it, never from one above. The test names
//!   every upward edge (file, line, path).
//! - **No import cycle between modules.** A strongly connected component of more than one module
//!   is a cycle, and the test names its edges.
//! - **One thing a file.** No file of `src/` is over [`MAX_LINES`] (800) lines; the test names
//!   each that is.
//! - **One owner of SQL.** No statement is issued outside `src/stores/`; the test names each
//!   (file, line, what it found: [`statements_issued`]): a sqlx item that builds or runs a
//!   statement ([`SQLX_STATEMENT_ITEMS`]) named through `sqlx::` or imported from it (the import
//!   and each use of its name), an executor call ([`STATEMENT_CALLS`], and [`EXECUTOR_CALLS`]
//!   whose first argument is a pool, a connection or a transaction), and a string literal that
//!   is SQL text ([`is_sql_text`]: a verb followed by SQL, so that `"DELETE"` as an HTTP method
//!   and log text are not). Calls are read outside string literals, SQL text only inside them.
//! - **Statements pooler-safe.** Every `sqlx::query*` is `.persistent(false)` but
//!   `Db::named_on`'s (named only on the gateway's own sessions), and only
//!   `stores/db.rs` and the feed name `PgPool`.
//!
//! Every `crate::a::b`, `super::a::b` and `self::a::b` path (and `{..}` group after any of them)
//! in a module's non-test code is an edge from that module to the longest module the path names:
//! `super::db::f` in `stores/pool.rs` is the edge `stores::pool -> stores::db`, within the folder
//! as across floors. A path to the module itself or to a folder it is in (`super::*`,
//! `crate::doors` in `doors::proxy`) is no edge. Not read: a path that starts with a child
//! module's bare name (`use forward::f;` in `proxy/mod.rs`); a child's `super::` names its folder,
//! which is no edge, so such a pair cannot form a cycle the test would miss between siblings.
//! Non-test code is the file with its comments and every `#[cfg(test)]` item (a test module, a
//! test-only function or `use`) blanked out, braces matched past strings, characters and
//! comments: the code after a test item is read like the code before it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors of the house, ground first: `runtime` (configuration, metrics, supervision,
/// logging), `policy` (the decision and its vocabulary), `stores` (the database), `jobs` (the
/// background jobs on a timer: the sweep and the alerts, over the stores), `dataplane` (wire
/// mechanics), `gateway` (the shared state and the mapping reload, wiring the policy to the
/// stores), `doors` (transports of the gateway's answers), `cli` (the commands, `serve`
/// assembling everything). A module may import from its own floor and the floors below it.
const FLOORS: &[&str] = &[
    "runtime",
    "policy",
    "stores",
    "jobs",
    "dataplane",
    "gateway",
    "doors",
    "cli",
];

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

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// When a comment, a string (plain, raw, byte) or a character literal starts at `i`: where it
/// ends (exclusive), and whether it is a comment. A lifetime (`'a`) is neither.
fn literal_at(c: &[char], i: usize) -> Option<(usize, bool)> {
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    match c[i] {
        '/' if at(i + 1) == '/' => {
            let mut j = i;
            while j < c.len() && c[j] != '\n' {
                j += 1;
            }
            Some((j, true))
        }
        '/' if at(i + 1) == '*' => {
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 1;
                } else if c[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            Some((j, true))
        }
        '"' => {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            Some((j + 1, false))
        }
        'r' if (i == 0
            || !is_ident(c[i - 1])
            || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2])))) =>
        {
            let hashes = c[i + 1..].iter().take_while(|x| **x == '#').count();
            if at(i + 1 + hashes) != '"' {
                return None;
            }
            let mut j = i + 2 + hashes;
            loop {
                if j >= c.len() {
                    return Some((j, false));
                }
                if c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    return Some((j + 1 + hashes, false));
                }
                j += 1;
            }
        }
        '\'' if at(i + 1) == '\\' => {
            let mut j = i + 3;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            Some((j + 1, false))
        }
        '\'' if at(i + 2) == '\'' => Some((i + 3, false)),
        _ => None,
    }
}

/// The end (exclusive) of the item that starts at `from`: its `;` or its matching `}`, at depth 0
/// of parentheses and brackets (so `[u8; 4]` and `#[test]` do not end it).
fn item_end(c: &[char], from: usize) -> usize {
    let (mut i, mut depth, mut braces) = (from, 0i32, 0i32);
    while i < c.len() {
        if let Some((end, _)) = literal_at(c, i) {
            i = end;
            continue;
        }
        match c[i] {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ';' if depth == 0 && braces == 0 => return i + 1,
            '{' => braces += 1,
            '}' => {
                braces -= 1;
                if braces == 0 && depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// `text` with its comments and every `#[cfg(test)]` item blanked out (spaces; line breaks kept,
/// so line numbers stay those of the file).
fn non_test_code(text: &str) -> String {
    let mut c: Vec<char> = text.chars().collect();
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let blank = |c: &mut [char], from: usize, to: usize| {
        let to = to.min(c.len());
        for x in &mut c[from..to] {
            if *x != '\n' {
                *x = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        if let Some((end, comment)) = literal_at(&c, i) {
            if comment {
                blank(&mut c, i, end);
            }
            i = end;
            continue;
        }
        if c[i..].starts_with(&attr) {
            let end = item_end(&c, i + attr.len());
            blank(&mut c, i, end);
            i = end;
            continue;
        }
        i += 1;
    }
    c.into_iter().collect()
}

/// The paths named from byte `start` of `code` (just after a `crate::`, `super::` or `self::`),
/// each with its byte offset: `a::b` -> `a::b`; `{a::b, c::{d, e}}` -> `a::b`, `c`.
fn named_paths(code: &str, start: usize) -> Vec<(usize, String)> {
    let path_at = |from: usize| -> String {
        code[from..]
            .chars()
            .take_while(|c| is_ident(*c) || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    if !code[start..].starts_with('{') {
        return vec![(start, path_at(start))];
    }
    let mut out = Vec::new();
    let (mut depth, mut item_start) = (0, start + 1);
    for (k, ch) in code[start..].char_indices() {
        let k = start + k;
        match ch {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let lead = code[item_start..k].len() - code[item_start..k].trim_start().len();
                let p = path_at(item_start + lead);
                if !p.is_empty() && p != "self" {
                    out.push((item_start + lead, p));
                }
                item_start = k + 1;
                if ch == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    out
}

/// The inline modules of `code` (`mod name { .. }`, test modules already blanked out): the byte
/// range of each and its name, so a `super::` inside one is read from where it stands.
fn inline_modules(code: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let c: Vec<char> = code.chars().collect();
    let byte: Vec<usize> = code
        .char_indices()
        .map(|(b, _)| b)
        .chain([code.len()])
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if let Some((end, _)) = literal_at(&c, i) {
            i = end;
            continue;
        }
        let word = |j: usize| c[j..].iter().take_while(|x| is_ident(**x)).count();
        if (i == 0 || !is_ident(c[i - 1])) && word(i) == 3 && c[i..i + 3] == ['m', 'o', 'd'] {
            let mut j = i + 3;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let n = word(j);
            let name: String = c[j..j + n].iter().collect();
            j += n;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            if n > 0 && c.get(j) == Some(&'{') {
                let end = item_end(&c, j);
                out.push((byte[i]..byte[end.min(c.len())], name));
            }
        }
        i += 1;
    }
    out
}

/// One import: where it is and the path as written (`crate::a::b`, `super::b`; one item of a
/// group).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    file: String,
    line: usize,
    path: String,
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "src/{}:{}: {}", self.file, self.line, self.path)
    }
}

type Graph = BTreeMap<String, BTreeMap<String, Edge>>;

/// The module graph: module -> (module it names -> the first import that names it).
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for file in &files {
        let m = module_of(src, file);
        if m == "lib" || m == "main" {
            continue;
        }
        let rel = file.strip_prefix(src).unwrap().display().to_string();
        let code = non_test_code(&std::fs::read_to_string(file).unwrap());
        let here: Vec<&str> = m.split("::").collect();
        let inline = inline_modules(&code);
        let mut named = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            if !code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
                for (item, path) in named_paths(&code, at + "crate::".len()) {
                    named.push((item, format!("crate::{path}"), path));
                }
            }
        }
        // `super::` and `self::` read from the module they stand in (an inline module counts):
        // `super::db::x` in `stores::pool` names `stores::db`, `super::super::x` in
        // `doors::proxy::forward` names `doors::x`.
        for prefix in ["super::", "self::"] {
            for (at, _) in code.match_indices(prefix) {
                if code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
                    continue;
                }
                let mut module: Vec<&str> = here.clone();
                module.extend(
                    inline
                        .iter()
                        .filter(|(range, _)| range.contains(&at))
                        .map(|(_, name)| name.as_str()),
                );
                let mut rest = at;
                while code[rest..].starts_with("super::") {
                    rest += "super::".len();
                    if module.pop().is_none() {
                        break;
                    }
                }
                if prefix == "self::" {
                    rest += "self::".len();
                }
                for (item, tail) in named_paths(&code, rest) {
                    let mut path = module.clone();
                    path.extend(tail.split("::").filter(|p| !p.is_empty()));
                    let written = format!("{}{tail}", &code[at..rest]);
                    named.push((item, written, path.join("::")));
                }
            }
        }
        let mut edges = BTreeMap::new();
        for (at, written, path) in named {
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            let target = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|cand| modules.contains(cand));
            if let Some(t) = target {
                // A module's own path or its parent's (`crate::doors` in doors::proxy) is no edge.
                if t != m && !m.starts_with(&format!("{t}::")) {
                    let line = code[..at].matches('\n').count() + 1;
                    edges.entry(t).or_insert(Edge {
                        file: rel.clone(),
                        line,
                        path: written,
                    });
                }
            }
        }
        g.insert(m, edges);
    }
    g
}

/// The floor of a module (its top folder's rank), or None for a folder without one.
fn floor(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap();
    FLOORS.iter().position(|f| *f == top)
}

/// Every import from a lower floor to a higher one, and every module on no floor.
fn upward_edges(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (m, edges) in g {
        let Some(from) = floor(m) else {
            out.push(format!(
                "{m}: its folder has no floor: give it a rank in FLOORS and ARCHITECTURE.md"
            ));
            continue;
        };
        for (t, edge) in edges {
            match floor(t) {
                Some(to) if to > from => out.push(format!(
                    "{edge}: {m} ({}) imports {t} ({}, a higher floor)",
                    FLOORS[from], FLOORS[to]
                )),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn every_import_points_to_its_own_floor_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(
        g.contains_key("policy::answer") && g["doors::forward_auth"].contains_key("policy::answer"),
        "the scan found no module graph: {:?}",
        g.keys().collect::<Vec<_>>()
    );
    let up = upward_edges(&g);
    assert!(
        up.is_empty(),
        "imports from a lower floor to a higher one (floors, ground first: {}):\n  {}",
        FLOORS.join(" < "),
        up.join("\n  ")
    );
}

/// A scratch `src/` with the given files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, files: &[(&str, &str)]) -> Scratch {
        let dir = std::env::temp_dir().join(format!("arch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An upward import injected after a test module (whose own imports of higher floors are
/// allowed) is found and named with its line; so is one in a `crate::{..}` group and one through
/// `super::super::`.
#[test]
fn the_floor_check_finds_an_injected_upward_import() {
    let tree = Scratch::new(
        "floors",
        &[
            ("lib.rs", "pub mod cli;\npub mod doors;\npub mod policy;\n"),
            ("cli/mod.rs", "pub mod serve;\n"),
            ("cli/serve.rs", "use crate::doors::proxy::Door;\n"),
            ("doors/mod.rs", "pub mod proxy;\n"),
            (
                "doors/proxy.rs",
                "use crate::policy::outcome::decide;\npub struct Door;\n",
            ),
            ("policy/mod.rs", "pub mod outcome;\npub mod answer;\n"),
            (
                "policy/outcome.rs",
                "pub fn decide() {}\n\
                 #[cfg(test)]\n\
                 mod tests {\n\
                 \x20   use crate::cli::serve; // '}' \"}\"\n\
                 \x20   const C: char = '}';\n\
                 \x20   const S: &str = r#\"}\"#;\n\
                 }\n\
                 #[cfg(test)]\n\
                 fn only_in_tests() { crate::cli::serve::x(); }\n\
                 // crate::cli::serve in a comment is no import\n\
                 pub fn upward() -> crate::doors::proxy::Door { crate::doors::proxy::Door }\n",
            ),
            (
                "policy/answer.rs",
                "use crate::{\n    policy::outcome::decide,\n    cli::serve,\n};\n\
                 fn f() { super::super::doors::proxy::Door; }\n",
            ),
        ],
    );
    let g = graph(&tree.0);
    let up = upward_edges(&g);
    assert_eq!(
        up,
        [
            "src/policy/answer.rs:3: crate::cli::serve: policy::answer (policy) imports cli::serve (cli, a higher floor)",
            "src/policy/answer.rs:5: super::super::doors::proxy::Door: policy::answer (policy) imports doors::proxy (doors, a higher floor)",
            "src/policy/outcome.rs:11: crate::doors::proxy::Door: policy::outcome (policy) imports doors::proxy (doors, a higher floor)",
        ]
    );
    assert!(g["cli::serve"].contains_key("doors::proxy"));
    assert!(upward_edges(&BTreeMap::from([(
        "attic::box".to_string(),
        BTreeMap::new()
    )]))[0]
        .contains("no floor"));
}

/// Tarjan's strongly connected components with more than one module.
fn cycles<E>(g: &BTreeMap<String, BTreeMap<String, E>>) -> Vec<Vec<String>> {
    struct S<'a, E> {
        g: &'a BTreeMap<String, BTreeMap<String, E>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a, E>(s: &mut S<'a, E>, v: &'a str) {
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
                        .map(move |(b, edge)| format!("{a} -> {b} ({edge})"))
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

/// Within a folder, `super::` paths are edges too: `super::db::idle()` in `stores/pool.rs` and
/// `pub use super::pool::Conn;` in `stores/db.rs` make a cycle (issue 50: the test used to read
/// only the `super::` paths that leave their folder, and missed this one); so do an item of a
/// `super::{..}` group and a `super::super::` inside an inline module. `super::*`, `self::` to
/// the module itself and test code are no edges.
#[test]
fn the_cycle_check_sees_super_paths_within_a_folder() {
    let tree = Scratch::new(
        "super",
        &[
            ("lib.rs", "pub mod stores;\n"),
            (
                "stores/mod.rs",
                "pub mod audit;\npub mod db;\npub mod feed;\npub mod pool;\n",
            ),
            (
                "stores/db.rs",
                "pub use super::pool::Conn;\n\
                 pub fn idle() -> bool { self::young() }\n\
                 fn young() -> bool { true }\n",
            ),
            (
                "stores/pool.rs",
                "use super::*;\n\
                 pub struct Conn;\n\
                 fn stale() -> bool { super::db::idle() }\n",
            ),
            (
                "stores/feed.rs",
                "use super::{\n    audit::Writer,\n};\n\
                 pub fn x() {}\n\
                 #[cfg(test)]\n\
                 mod tests { use super::super::db::idle; }\n",
            ),
            (
                "stores/audit.rs",
                "pub struct Writer;\n\
                 pub mod inner {\n\
                 \x20   pub fn f() { super::super::feed::x(); }\n\
                 }\n",
            ),
        ],
    );
    let g = graph(&tree.0);
    assert_eq!(
        g["stores::pool"]["stores::db"].to_string(),
        "src/stores/pool.rs:3: super::db::idle"
    );
    assert_eq!(
        g["stores::db"]["stores::pool"].to_string(),
        "src/stores/db.rs:1: super::pool::Conn"
    );
    assert_eq!(
        g["stores::feed"]["stores::audit"].to_string(),
        "src/stores/feed.rs:2: super::audit::Writer"
    );
    assert_eq!(
        g["stores::audit"]["stores::feed"].to_string(),
        "src/stores/audit.rs:3: super::super::feed::x"
    );
    assert_eq!(g["stores::pool"].len(), 1, "{:?}", g["stores::pool"]);
    assert_eq!(g["stores::feed"].len(), 1, "{:?}", g["stores::feed"]);
    let mut found: Vec<Vec<String>> = cycles(&g)
        .into_iter()
        .map(|mut comp| {
            comp.sort();
            comp
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ["stores::audit", "stores::feed"],
            ["stores::db", "stores::pool"]
        ]
    );
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
        "sqlx::query_with(",
        "sqlx::query_as_with(",
        "sqlx::query_scalar_with(",
        "sqlx::query_as(",
        "sqlx::query_scalar(",
        "sqlx::query_as::<",
        "sqlx::query_scalar::<",
    ] {
        for (at, _) in text.match_indices(ctor) {
            let open = at + text[at..].find('(').unwrap();
            let end = call_end(text, open);
            let after = text[end + 1..].trim_start();
            if !after.starts_with(".persistent(false)") {
                let line = text[..at].matches('\n').count() + 1;
                out.push(format!(
                    "{line}: {}",
                    text[at..=end].lines().next().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// The one named statement of `src/`: `Db::named_on`'s, in `stores/db.rs` (the request path's
/// lookups and the audit writer's INSERT of fresh rows), sent only once the pool's connections
/// are known to be the gateway's own sessions (issues 51, 67).
const NAMED_LOOKUP: &str = "sqlx::query_with(sql, arguments)\n            .persistent(true)";

/// Architecture Invariant (issue 44): no statement leaves a prepared statement behind on its
/// server connection, which a transaction-pooling PgBouncer may hand to another client (whose
/// `sqlx_s_14` would then run with our parameters). Every statement in `src/` is unnamed but
/// one, `Db::named_on`'s ([`NAMED_LOOKUP`]: named only on connections the probe found to be
/// sessions of the gateway's own, simple queries otherwise), and only `stores/db.rs` (which
/// wraps every statement in a transaction) and the change feed's LISTEN pool (a direct
/// connection) name sqlx's pool type.
#[test]
fn every_statement_is_unnamed_and_goes_through_db() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        let mut named = named_statements(&text);
        if rel == "stores/db.rs" {
            // `Db::lookup`'s, named only on the gateway's own sessions (its verdict).
            let lookup = text
                .match_indices(NAMED_LOOKUP)
                .map(|(at, _)| at)
                .collect::<Vec<_>>();
            assert_eq!(
                lookup.len(),
                1,
                "stores/db.rs: Db::lookup's named statement"
            );
            let line = text[..lookup[0]].matches('\n').count() + 1;
            named.retain(|s| !s.starts_with(&format!("{line}: ")));
        }
        for s in named {
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
    let verdict = "sqlx::query(\"SELECT 1\").persistent(statements.persistent()).execute(c);\n\
                   sqlx::query(\"SELECT 2\").persistent(true).execute(c);";
    assert_eq!(
        named_statements(verdict),
        [
            "1: sqlx::query(\"SELECT 1\")",
            "2: sqlx::query(\"SELECT 2\")"
        ]
    );
    let with = "sqlx::query_with(sql, args).fetch_all(c);\n\
                sqlx::query_as_with::<_, (i32,), _>(sql, args).persistent(false).fetch_all(c);";
    assert_eq!(named_statements(with), ["1: sqlx::query_with(sql, args)"]);
}

/// The sqlx items that build or run a statement: named through `sqlx::` (`sqlx::query_as(..)`,
/// `sqlx::Executor::fetch_one(..)`) or imported from it (`use sqlx::query_scalar;`).
const SQLX_STATEMENT_ITEMS: &[&str] = &[
    "query",
    "query_as",
    "query_scalar",
    "query_with",
    "query_as_with",
    "query_scalar_with",
    "raw_sql",
    "Executor",
    "QueryBuilder",
];

/// Calls that run a statement on whatever they are given: sqlx's executor methods, which no
/// other type of the gateway has, and `Db`'s statement sent as one simple query.
const STATEMENT_CALLS: &[&str] = &[
    ".fetch_one(",
    ".fetch_all(",
    ".fetch_optional(",
    ".fetch_many(",
    ".one_round_trip(",
    "one_round_trip_on(",
];

/// Calls whose name other types share (hyper's `Executor::execute`, a stream's `fetch`): a
/// statement only when the first argument is an executor (a pool, a connection, a transaction).
const EXECUTOR_CALLS: &[&str] = &[".execute(", ".execute_many(", ".fetch("];

/// The verbs a statement's text begins with.
const SQL_VERBS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "SET", "LISTEN", "NOTIFY", "UNLISTEN",
    "COMMIT", "ROLLBACK", "TRUNCATE",
];

/// Words that make the text after a verb SQL (upper case, as the gateway writes its SQL; log text
/// and HTTP methods do not use them so).
const SQL_WORDS: &[&str] = &[
    "FROM",
    "INTO",
    "WHERE",
    "VALUES",
    "JOIN",
    "RETURNING",
    "SET",
    "LOCAL",
    "LIMIT",
    "ORDER",
    "GROUP",
    "UNION",
    "EXISTS",
    "DISTINCT",
    "AS",
    "ON",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "CASE",
    "CONFLICT",
    "COALESCE",
    "TRANSACTION",
];

/// Whether the text of a string literal is a statement: it begins with a verb of [`SQL_VERBS`]
/// followed by SQL: a placeholder (`$1`), a number, `*`, `(`, `;`, a quote, `true`/`false`/
/// `null`, a name with `_` or `.` (a table, a column, a channel) or called (`pg_notify(`), or a
/// word of [`SQL_WORDS`] anywhere after it. `"DELETE"` alone (an HTTP method), `"DELETE /x"` or
/// `"UPDATE failed, retrying"` (log text) are not.
fn is_sql_text(text: &str) -> bool {
    let text = text.trim_start();
    let Some(verb) = SQL_VERBS.iter().find(|v| {
        text.starts_with(**v)
            && text[v.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_whitespace() || c == ';' || c == '\\')
    }) else {
        return false;
    };
    let rest = text[verb.len()..].trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
    let Some(first) = rest.chars().next() else {
        return false;
    };
    let word: String = rest
        .chars()
        .take_while(|c| is_ident(*c) || *c == '.')
        .collect();
    let called = !word.is_empty() && rest[word.len()..].starts_with('(');
    let sql_start = first == '$'
        || first.is_ascii_digit()
        || "*(;'".contains(first)
        || ["true", "false", "null"].contains(&word.as_str())
        || word.contains('_')
        || word.contains('.')
        || called;
    sql_start
        || rest
            .split(|c: char| !is_ident(c))
            .any(|w| SQL_WORDS.contains(&w))
}

/// Whether the first argument of the call whose `(` is at byte `open` of `code` is an executor:
/// a pool, a connection, a transaction or a `Db` (`&pool`, `&mut *tx`, `self.identity.pool()`).
fn executor_argument(code: &str, open: usize) -> bool {
    let arg: String = code[open + 1..]
        .chars()
        .take_while(|c| *c != ',' && *c != ')')
        .collect();
    let arg = arg.trim();
    arg.starts_with("&mut *")
        || arg.split(|c: char| !is_ident(c)).any(|w| {
            let w = w.to_lowercase();
            ["pool", "conn", "tx", "db", "executor"]
                .iter()
                .any(|e| w.contains(e))
        })
}

/// One statement issued where it may not be: where, and what gave it away.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Issued {
    line: usize,
    what: String,
}

/// What in `text` (a file of `src/`) issues a statement, read in its non-test code
/// ([`non_test_code`]): each sqlx item of [`SQLX_STATEMENT_ITEMS`] named through `sqlx::` or
/// imported from it (the import and each use of the name), each call of [`STATEMENT_CALLS`],
/// each call of [`EXECUTOR_CALLS`] on an executor, and each string literal that is SQL text
/// ([`is_sql_text`]). Calls are looked for outside string literals, SQL text only inside them.
fn statements_issued(text: &str) -> Vec<Issued> {
    let c: Vec<char> = non_test_code(text).chars().collect();
    // The code with every string literal blanked (line breaks kept), and each literal's text
    // with the char where it starts.
    let mut bare = c.clone();
    let mut literals: Vec<(usize, String)> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let Some((end, comment)) = literal_at(&c, i) else {
            i += 1;
            continue;
        };
        let end = end.min(c.len());
        if !comment && c[i] != '\'' {
            let open = i + c[i..end].iter().position(|x| *x == '"').unwrap_or(0);
            let hashes = c[i..open].iter().filter(|x| **x == '#').count();
            let close = end.saturating_sub(1 + hashes).max(open + 1);
            literals.push((i, c[open + 1..close].iter().collect()));
            for x in &mut bare[i..end] {
                if *x != '\n' {
                    *x = ' ';
                }
            }
        }
        i = end;
    }
    let bare: String = bare.into_iter().collect();
    let line_of = |at: usize| bare[..at].matches('\n').count() + 1;
    let free_before = |at: usize| !bare[..at].ends_with(|c: char| is_ident(c) || c == ':');
    let mut out = Vec::new();
    let mut found = |at: usize, what: String| {
        out.push(Issued {
            line: line_of(at),
            what,
        })
    };
    for (at, _) in bare.match_indices("sqlx::") {
        let item: String = bare[at + "sqlx::".len()..]
            .chars()
            .take_while(|c| is_ident(*c))
            .collect();
        let an_import = bare[..at].trim_end().ends_with("use");
        if free_before(at) && !an_import && SQLX_STATEMENT_ITEMS.contains(&item.as_str()) {
            found(at, format!("sqlx::{item}"));
        }
    }
    // `use sqlx::{query_scalar, ..};`: the import, and each use of the name it binds.
    for (at, _) in bare.match_indices("use sqlx::") {
        if !free_before(at) {
            continue;
        }
        let end = bare[at..].find(';').map_or(bare.len(), |e| at + e);
        let list = &bare[at + "use sqlx::".len()..end];
        for piece in list.split([',', '{', '}']) {
            let (path, alias) = match piece.split_once(" as ") {
                Some((p, a)) => (p.trim(), a.trim()),
                None => (piece.trim(), piece.trim().rsplit("::").next().unwrap_or("")),
            };
            if !SQLX_STATEMENT_ITEMS.contains(&path.rsplit("::").next().unwrap_or("")) {
                continue;
            }
            found(at, format!("use sqlx::{path}"));
            for (use_at, _) in bare[end..].match_indices(alias) {
                let use_at = end + use_at;
                let after = &bare[use_at + alias.len()..];
                let whole = free_before(use_at)
                    && !bare[..use_at].ends_with('.')
                    && !after.starts_with(is_ident);
                if whole && (after.starts_with('(') || after.starts_with("::")) {
                    found(use_at, format!("{alias} (sqlx::{path})"));
                }
            }
        }
    }
    for call in STATEMENT_CALLS {
        for (at, _) in bare.match_indices(call) {
            if call.starts_with('.') || free_before(at) {
                found(at, format!("{call}..)"));
            }
        }
    }
    for call in EXECUTOR_CALLS {
        for (at, _) in bare.match_indices(call) {
            if executor_argument(&bare, at + call.len() - 1) {
                found(at, format!("{call}..) on an executor"));
            }
        }
    }
    for (at, text) in literals {
        if is_sql_text(&text) {
            // A line continuation (`\` at a line's end) is not part of the text.
            let text = text.replace("\\\n", "\n");
            let shown = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let shown: String = shown.chars().take(60).collect();
            out.push(Issued {
                line: c[..at].iter().filter(|x| **x == '\n').count() + 1,
                what: format!("SQL text \"{shown}\""),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every statement issued outside `src/stores/`, as `src/path:line: what`.
fn statements_outside_stores(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        if rel.starts_with("stores") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for s in statements_issued(&text) {
            out.push(format!("src/{}:{}: {}", rel.display(), s.line, s.what));
        }
    }
    out
}

/// Architecture Invariant (issue 52, "one owner each"): only `stores/` speaks SQL. A door, a job
/// or a command asks a store for a typed answer; a schema change is then found in one folder.
#[test]
fn only_stores_issue_statements() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = statements_outside_stores(&src);
    assert!(
        found.is_empty(),
        "statements issued outside src/stores/ (move each into the store that owns its tables \
         and call a function of it):\n  {}",
        found.join("\n  ")
    );
    // The scan reads the stores' SQL (it is not blind).
    let db = std::fs::read_to_string(src.join("stores/db.rs")).unwrap();
    assert!(
        statements_issued(&db)
            .iter()
            .any(|s| s.what == "SQL text \"SELECT 1\""),
        "the scan found no statement in stores/db.rs: {:?}",
        statements_issued(&db)
    );
}

#[test]
fn the_statement_owner_check_finds_a_query_and_not_an_http_method() {
    let sample = "use sqlx::{Connection, query_scalar as scalar};\n\
                  fn method(m: &str) -> &str { match m { \"DELETE\" => \"DELETE\", _ => \"GET\" } }\n\
                  async fn ready(pool: &Db) {\n\
                  \x20   let n: i32 = sqlx::query_as(\n\
                  \x20       \"SELECT count(*) FROM rbac_roles WHERE name = $1\",\n\
                  \x20   ).persistent(false).fetch_one(pool).await?;\n\
                  \x20   let t: bool = scalar(\"SELECT true\").persistent(false).fetch_one(&mut *tx).await?;\n\
                  \x20   sqlx::query(r#\"\n  INSERT INTO t (a) VALUES ($1)\"#).execute(&mut *tx).await?;\n\
                  \x20   tracing::warn!(\"UPDATE failed, retrying\");\n\
                  \x20   tracing::info!(target: \"sqlx::query\", \"DELETE /x answered\");\n\
                  \x20   let span = db_span(\"SELECT ticket grants\");\n\
                  \x20   counter.fetch_add(1, Relaxed); hyper_executor.execute(fut);\n\
                  \x20   let s = \"SET LOCAL statement_timeout = 5\";\n\
                  }\n\
                  // sqlx::query(\"SELECT 1\") in a comment is no statement\n\
                  #[cfg(test)]\n\
                  mod tests { fn f() { sqlx::query(\"SELECT 1\").execute(&pool); } }\n";
    let found: Vec<String> = statements_issued(sample)
        .into_iter()
        .map(|s| format!("{}: {}", s.line, s.what))
        .collect();
    assert_eq!(
        found,
        [
            "1: use sqlx::query_scalar",
            "4: sqlx::query_as",
            "5: SQL text \"SELECT count(*) FROM rbac_roles WHERE name = $1\"",
            "6: .fetch_one(..)",
            "7: .fetch_one(..)",
            "7: SQL text \"SELECT true\"",
            "7: scalar (sqlx::query_scalar)",
            "8: SQL text \"INSERT INTO t (a) VALUES ($1)\"",
            "8: sqlx::query",
            "9: .execute(..) on an executor",
            "14: SQL text \"SET LOCAL statement_timeout = 5\"",
        ]
    );
    assert!(!is_sql_text("DELETE"));
    assert!(!is_sql_text("SELECT"));
    assert!(is_sql_text("SELECT 1"));
    assert!(is_sql_text("LISTEN rbac_gateway_changes"));
    assert!(is_sql_text("BEGIN; SELECT pg_backend_pid()"));
    assert!(is_sql_text("SELECT pg_notify('rbac_gateway_changes', '')"));
    assert!(!is_sql_text("Deleted: DELETE /x"));
    // In a tree: a store may issue statements; a door may not, and is named with its line.
    let tree = Scratch::new(
        "owner",
        &[
            ("lib.rs", "pub mod doors;\npub mod stores;\n"),
            (
                "stores/db.rs",
                "pub async fn ping(db: &Db) { sqlx::query(\"SELECT 1\").persistent(false).fetch_one(db).await; }\n",
            ),
            (
                "doors/admin.rs",
                "pub async fn ready(pool: &Db) {\n    let _ = pool.ping().await;\n    let _ = sqlx::query_scalar::<_, i32>(\"SELECT 1\").persistent(false).fetch_one(pool).await;\n}\n",
            ),
        ],
    );
    assert_eq!(
        statements_outside_stores(&tree.0),
        [
            "src/doors/admin.rs:3: .fetch_one(..)",
            "src/doors/admin.rs:3: SQL text \"SELECT 1\"",
            "src/doors/admin.rs:3: sqlx::query_scalar",
        ]
    );
}

/// The doors that answer requests (the proxy, forward-auth, the reader API, FreeScout's
/// webhook): where a metric is counted (`.inc()`, `.inc_by(`, `.observe(`) in their non-test
/// code, as `file:line: text`.
fn counts_in_doors(src: &Path) -> Vec<String> {
    let mut files = vec![
        src.join("doors/forward_auth.rs"),
        src.join("doors/rbac_api.rs"),
        src.join("doors/freescout_webhook.rs"),
    ];
    let mut proxy: Vec<_> = std::fs::read_dir(src.join("doors/proxy"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    proxy.sort();
    files.extend(proxy);
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.exists()) {
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        for (i, line) in code.lines().enumerate() {
            let l = line.trim();
            if l.starts_with("//") {
                continue;
            }
            if [".inc()", ".inc_by(", ".observe("]
                .iter()
                .any(|c| l.contains(c))
            {
                let rel = f.strip_prefix(src).unwrap().display();
                out.push(format!("src/{rel}:{}: {l}", i + 1));
            }
        }
    }
    out
}

/// Architecture Invariant (issue 52): the doors that answer requests count nothing; a count is
/// the aftermath's (`policy::answer::carry_out` through the door's `Tally`,
/// `policy/forwarded.rs`), the gateway's state's (`gateway/reader.rs` for the reader API) or the
/// job's (`jobs/ticket_ended.rs` for FreeScout's webhook).
#[test]
fn the_doors_count_nothing() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = counts_in_doors(&src);
    assert!(
        found.is_empty(),
        "a door counts a metric itself (count it in the aftermath or the gateway's state):\n  {}",
        found.join("\n  ")
    );
    // The scan is not blind: a count in a door's file is found, with its line.
    let tree = Scratch::new(
        "counts",
        &[(
            "doors/rbac_api.rs",
            "pub fn respond(gw: &Gateway) {\n    // gw.metrics.requests.inc() in a comment\n    gw.metrics.requests.with_label_values(&[\"api\"]).inc();\n}\n",
        )],
    );
    assert_eq!(
        counts_in_doors(&tree.0),
        ["src/doors/rbac_api.rs:3: gw.metrics.requests.with_label_values(&[\"api\"]).inc();"]
    );
}

/// The repository's top level: the design card's entries (`Cargo.toml`, `src`, `routes.toml`,
/// `migrations`, `tests`, `deploy`, `README.md`) and what a Rust project expects beside them.
/// A new top-level entry is added here on purpose, not by accident.
const TOP_LEVEL: &[&str] = &[
    ".ci",
    // The migrations' bytes as committed: sqlx's checksum of each must not change with a checkout.
    ".gitattributes",
    ".gitignore",
    "ARCHITECTURE.md",
    "Cargo.lock",
    "Cargo.toml",
    "README.md",
    "benches",
    "deploy",
    "docs",
    "examples",
    "migrations",
    "routes.toml",
    // Console's tests of routes.toml (issue 70), found beside it by `rbac-gateway test`.
    "routes.test.toml",
    "scripts",
    "src",
    "tests",
    // What a Rust project may add.
    ".cargo",
    "build.rs",
    "clippy.toml",
    "rust-toolchain.toml",
    "rustfmt.toml",
];

/// The files git tracks: every top-level entry is in [`TOP_LEVEL`], and none is binary (a NUL
/// byte in its first 8000, git's own test): a wheel, an archive or a build output comes from its
/// registry or the build, never from the tree (issue 50: a wheel sat at the root, unused).
/// Outside a git checkout (a crate unpacked from its tarball) there is nothing to check.
#[test]
fn the_tree_tracks_known_top_level_entries_and_no_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output();
    let files = match listed {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        _ => {
            eprintln!("not a git checkout: the tracked files are not checked");
            return;
        }
    };
    let mut problems = Vec::new();
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let top = file.split('/').next().unwrap();
        if !TOP_LEVEL.contains(&top) {
            problems.push(format!(
                "{file}: {top} is not a known top-level entry (TOP_LEVEL)"
            ));
        }
        // A file deleted but not yet staged is listed and absent.
        if let Ok(bytes) = std::fs::read(root.join(file)) {
            if bytes.iter().take(8000).any(|b| *b == 0) {
                problems.push(format!("{file}: binary (keep binaries out of the tree)"));
            }
        }
    }
    assert!(
        files.contains("src/lib.rs"),
        "git ls-files listed no source: {files:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Most lines a file of `src/` may have: past it, a file is more than one thing (issue 52:
/// `stores/audit.rs` split where its seam was, into the writer and the spool).
const MAX_LINES: usize = 800;

/// The files of `src/` longer than [`MAX_LINES`], as `src/path: n lines`.
fn long_files(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            (lines > MAX_LINES).then(|| {
                format!(
                    "src/{}: {lines} lines",
                    file.strip_prefix(src).unwrap().display()
                )
            })
        })
        .collect()
}

#[test]
fn no_source_file_is_over_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long = long_files(&src);
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split each where its seam is):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_length_check_names_a_long_file() {
    let tree = Scratch::new(
        "long",
        &[
            ("lib.rs", "pub mod stores;\n"),
            ("stores/short.rs", &"// a line\n".repeat(MAX_LINES)),
            ("stores/long.rs", &"// a line\n".repeat(MAX_LINES + 1)),
        ],
    );
    assert_eq!(long_files(&tree.0), ["src/stores/long.rs: 801 lines"]);
}

/// The README is for operators and fits in this many lines (issue 52): a deployment target's
/// page goes to `docs/deploy/`, a reference to `docs/`, and the README links them.
const README_MAX_LINES: usize = 700;

#[test]
fn the_readme_fits_in_700_lines() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let lines = std::fs::read_to_string(readme).unwrap().lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move a deployment target's \
         text to docs/deploy/ or a reference to docs/, and link it"
    );
}

/// The Heroku launcher installs its SIGTERM/SIGINT and SIGHUP traps before it starts the gateway
/// and Console: a signal in between would meet bash's default, end the launcher and leave both
/// running (Heroku restarts a dyno, and sends SIGTERM, at any time; SIGHUP is documented as the
/// mapping's reload). `tests/api/heroku.rs` runs the launcher; this holds the order.
#[test]
fn the_heroku_launcher_traps_its_signals_before_it_starts_anything() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/heroku/bin/rbac-gateway-heroku");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| found(l.trim()))
            .unwrap_or_else(|| panic!("{}: no {what}", path.display()))
    };
    let term = first("SIGTERM trap", &|l| {
        l.starts_with("trap ") && l.ends_with(" TERM INT")
    });
    let hup = first("SIGHUP trap", &|l| {
        l.starts_with("trap ") && l.ends_with(" HUP")
    });
    let gateway = first("start of the gateway", &|l| l == "gw=$!");
    let console = first("start of Console", &|l| l == "\"$@\" &");
    for (name, trap) in [("SIGTERM", term), ("SIGHUP", hup)] {
        assert!(
            trap < gateway && trap < console,
            "{}: the {name} trap (line {}) comes after a process is started (lines {}, {})",
            path.display(),
            trap + 1,
            gateway + 1,
            console + 1
        );
    }
}

/// The ratchet of issue 67: `scripts/bench/instructions.sh --check` (in CI) reads its budgets
/// from this file; a budget it cannot read would fail only there, minutes into CI.
#[test]
fn the_instruction_budget_names_every_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/instructions-budget.toml");
    let text = std::fs::read_to_string(&path).expect("scripts/bench/instructions-budget.toml");
    let doc: toml::Table = text.parse().expect("the budget file is TOML");
    for key in ["date", "commit"] {
        assert!(
            doc.get(key).and_then(|v| v.as_str()).is_some(),
            "no {key} in the budget file"
        );
    }
    let positive =
        |v: Option<&toml::Value>| v.and_then(toml::Value::as_integer).is_some_and(|n| n > 0);
    assert!(
        positive(doc.get("nginx")),
        "no nginx figure in the budget file"
    );
    let budget = doc
        .get("budget")
        .and_then(|v| v.as_table())
        .expect("a [budget] table");
    for case in ["allowed", "denied", "lone", "authz", "cold"] {
        assert!(positive(budget.get(case)), "no budget for {case}");
    }
    assert_eq!(
        budget.len(),
        5,
        "a case instructions.sh does not measure: {budget:?}"
    );
}
