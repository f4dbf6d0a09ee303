//! Where a suite's test files are: those named (a directory: every `*.test.toml` in it), or
//! the `*.test.toml` beside the mapping; and the files beside it named like one and not, which
//! a suite meant to run would miss.

use std::path::{Path, PathBuf};

/// The test files `paths` name (a directory: every `*.test.toml` in it, recursively), sorted
/// and without duplicates; with none named, the `*.test.toml` files beside `routes`.
pub fn discover(routes: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    if paths.is_empty() {
        match routes.parent() {
            Some(d) if !d.as_os_str().is_empty() => beside(d, false, &mut out)?,
            // The working directory: the files are named as they are there (`routes.test.toml`).
            _ => {
                beside(Path::new("."), false, &mut out)?;
                for p in &mut out {
                    if let Ok(name) = p.strip_prefix(".") {
                        *p = name.to_path_buf();
                    }
                }
            }
        }
    }
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let before = out.len();
            beside(p, true, &mut out)?;
            if out.len() == before {
                return Err(format!("{}: no *.test.toml in this directory", p.display()));
            }
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The files beside `routes` named after it like a test file but not `*.test.toml`
/// (`routes.tests.toml`, `routes_test.toml`, `routes.test.TOML` beside `routes.toml`): a suite
/// that was meant to run and would not be found.
pub fn near_misses(routes: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = match routes.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Named after the mapping (`routes…`): another tool's file (`pytest.toml`) is none.
    let stem = routes
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let lower = name.to_lowercase();
        let file = entry.file_type().is_ok_and(|t| !t.is_dir());
        // "test" or "tests" as a word of the name (`routes.latest.toml` is none).
        let worded = lower
            .split(['.', '_', '-'])
            .any(|w| w == "test" || w == "tests");
        if file
            && lower.starts_with(&stem)
            && worded
            && lower.contains(".toml")
            && !name.ends_with(".test.toml")
            && Some(entry.file_name().as_os_str()) != routes.file_name()
        {
            out.push(PathBuf::from(name));
        }
    }
    out.sort();
    Ok(out)
}

/// The `*.test.toml` files of `dir` (and, `deep`, its subdirectories).
fn beside(dir: &Path, deep: bool, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if kind.is_dir() && deep {
            beside(&path, true, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.toml"))
        {
            out.push(path);
        }
    }
    Ok(())
}
