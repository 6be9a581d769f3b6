//! The source's imports follow the data (README, "Architecture"): kernel ->
//! pipeline -> outputs -> commands, no import against that order, and no
//! two files that import each other, directly or around a loop, in the
//! user-space crate or the eBPF one. Read from the source files themselves
//! (`use` trees and `crate::`/`super::` paths in code), so a new import
//! that breaks the order fails here with the file and the path.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The user-space crate's top-level modules, lowest first: a module may
/// import its own files and those of modules on a lower floor only.
const FLOORS: &[&[&str]] = &[
    &["units"],
    &["kernel"],
    &["pipeline"],
    &["output"],
    &["record", "tui", "flags"],
    &["doctor", "diagnose", "cli", "serve"],
    &["lab"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file (`pipeline/run.rs` -> `pipeline::run`,
/// `tui/mod.rs` -> `tui`, `lib.rs`/`main.rs` -> the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Removes comments, string literals and the unit tests (a `#[cfg(test)]`
/// module ends a file here: its `super` is the file's own module), so that
/// only the file's code is read.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
            }
            // A char literal ('"', '\''), not a lifetime ('a).
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The paths a `use` tree names, its braces expanded:
/// `crate::{a::b, c::{d, e}}` -> `crate::a::b`, `crate::c::d`, `crate::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (prefix, rest) = (&tree[..open], &tree[open + 1..]);
    // The matching brace, and the top-level commas inside.
    let (mut depth, mut parts, mut start, mut close) = (0, Vec::new(), 0, rest.len());
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                close = i;
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&rest[start..close]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// The module paths a file names, from the crate root: its `use` trees and
/// the `crate::`/`super::` paths in its code (a path's tail may be an item;
/// [`Crate::file_of`] finds the file).
fn imports(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("use ") {
        // A `use` item: only `pub`, `pub(crate)` and blanks before it on its line.
        let line_start = code[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = code[line_start..at].trim();
        if !(before.is_empty() || before.starts_with("pub")) {
            continue;
        }
        let end = code[at..].find(';').map_or(code.len(), |e| at + e);
        paths.extend(expand(&code[at + 4..end]));
    }
    for (at, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let end = code[at..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| at + e);
        // `crate::{...}`: a `use` tree, read above.
        if !code[at..end].ends_with("::") {
            paths.push(code[at..end].to_string());
        }
    }
    // A parent module's own children, named without `crate::`/`self::`
    // (`mod aggregate;` ... `aggregate::run(...)`).
    for (at, _) in code.match_indices("mod ") {
        let line_start = code[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = code[line_start..at].trim();
        let Some(name) = code[at + 4..].split(';').next().map(str::trim) else {
            continue;
        };
        if !(before.is_empty() || before.starts_with("pub"))
            || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        for (use_at, _) in code.match_indices(&format!("{name}::")) {
            if use_at == 0
                || !code[..use_at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            {
                paths.push(format!("self::{name}"));
                break;
            }
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let mut segs = p.split("::").filter(|s| !s.is_empty());
            let mut base: Vec<String> = match segs.next()? {
                "crate" => Vec::new(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                "self" => module.to_vec(),
                _ => return None,
            };
            for s in segs {
                match s {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    s => base.push(s.to_string()),
                }
            }
            Some(base)
        })
        .collect()
}

struct Crate {
    /// Module path -> file.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// File -> the files it imports.
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut paths = Vec::new();
        sources(src, &mut paths);
        // The user-space binary's `main.rs` is a crate of its own over the
        // library (`lib.rs`, the root read here).
        if src.join("lib.rs").exists() {
            paths.retain(|p| *p != src.join("main.rs"));
        }
        let files: BTreeMap<Vec<String>, PathBuf> = paths
            .iter()
            .map(|p| (module_of(src, p), p.clone()))
            .collect();
        let mut krate = Crate {
            files,
            edges: BTreeMap::new(),
        };
        for (module, file) in krate.files.clone() {
            let code = code_only(&fs::read_to_string(&file).unwrap());
            let targets = imports(&code, &module)
                .into_iter()
                .filter_map(|p| krate.file_of(&p))
                .filter(|t| *t != file)
                .collect();
            krate.edges.insert(file, targets);
        }
        krate
    }

    /// The file that holds `path`: its longest prefix that is a module.
    fn file_of(&self, path: &[String]) -> Option<PathBuf> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.files.get(&path[..n]).cloned())
    }

    /// Every loop of imports between files, each once.
    fn loops(&self) -> Vec<Vec<PathBuf>> {
        let mut loops = BTreeSet::new();
        for start in self.edges.keys() {
            // Depth-first from `start`, back to it: the loops through it.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, trail)) = stack.pop() {
                for next in &self.edges[&at] {
                    if next == start {
                        let mut l = trail.clone();
                        let first = l.iter().min().unwrap().clone();
                        let i = l.iter().position(|f| *f == first).unwrap();
                        l.rotate_left(i);
                        loops.insert(l);
                    } else if seen.insert(next.clone()) {
                        let mut t = trail.clone();
                        t.push(next.clone());
                        stack.push((next.clone(), t));
                    }
                }
            }
        }
        loops.into_iter().collect()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn show(files: &[PathBuf]) -> String {
    let root = root();
    files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_file_imports_against_the_flow() {
    let src = root().join("fusetrace/src");
    let krate = Crate::read(&src);
    let mut against = Vec::new();
    for (module, file) in &krate.files {
        let Some(own) = module.first() else { continue };
        let Some(own_floor) = floor_of(own) else {
            assert!(
                module.is_empty(),
                "{}: module `{own}` has no floor in FLOORS (tests/layers.rs): give it one",
                file.display()
            );
            continue;
        };
        for target in &krate.edges[file] {
            let theirs = krate
                .files
                .iter()
                .find(|(_, f)| *f == target)
                .and_then(|(m, _)| m.first())
                .unwrap();
            if theirs != own && floor_of(theirs).is_none_or(|f| f >= own_floor) {
                against.push(show(&[file.clone(), target.clone()]));
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the flow (README, Architecture):\n{}",
        against.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_loop() {
    for src in ["fusetrace/src", "fusetrace-ebpf/src"] {
        let loops = Crate::read(&root().join(src)).loops();
        assert!(
            loops.is_empty(),
            "import loops between files:\n{}",
            loops
                .iter()
                .map(|l| show(&[l.as_slice(), &l[..1]].concat()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn the_reader_finds_what_it_must() {
    // `use` trees with nested braces, `super`, and paths in code.
    let module = vec!["tui".to_string(), "view".to_string()];
    let code = code_only(
        "use super::{detail, state::{TopState, View}};\n// use crate::lab;\nlet x = crate::units::format_duration(\"crate::cli\");",
    );
    let got: BTreeSet<Vec<String>> = imports(&code, &module).into_iter().collect();
    let want: BTreeSet<Vec<String>> = [
        vec!["tui", "detail"],
        vec!["tui", "state", "TopState"],
        vec!["tui", "state", "View"],
        vec!["units", "format_duration"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(got, want);
}
