//! `cargo xtask imports`: the file-level import graph of every crate in the workspace, and
//! its loops.
//!
//! A file imports another when it names a path into it (`use crate::a::b`, `super::x`,
//! `crate::a::f()` in code). A module naming its own descendants is composition, not an
//! import, and is left out; a descendant naming its ancestor is kept, so a child reaching back
//! into its parent shows as a loop. In-file `#[cfg(test)]` modules are left out: they are the
//! file's own tests. Every group of files that reach each other is reported as a loop.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::build::{step, workspace_root};

/// One crate's source files by module path (`[]` is the crate root).
struct CrateFiles {
    name: String,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

pub fn run(root: Option<&Path>) -> anyhow::Result<()> {
    step("file-level import graph (loops are errors)");
    let loops = find_all_loops(root.unwrap_or(&workspace_root()))?;
    if loops.is_empty() {
        println!("no import loops");
        return Ok(());
    }
    for (krate, files) in &loops {
        println!("loop in {krate}: {}", files.join(" -> "));
    }
    bail!("{} import loop(s)", loops.len())
}

/// Every loop of every crate under `root` (directories with a Cargo.toml and a src/).
pub fn find_all_loops(root: &Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut loops = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .with_context(|| format!("listing {}", root.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.join("src").is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        for krate in crate_roots(&dir)? {
            let graph = import_graph(&krate)?;
            for component in strongly_connected(&graph) {
                let files = component
                    .iter()
                    .map(|module| display_file(&krate, module, &dir))
                    .collect();
                loops.push((krate.name.clone(), files));
            }
        }
    }
    Ok(loops)
}

fn display_file(krate: &CrateFiles, module: &[String], dir: &Path) -> String {
    krate
        .modules
        .get(module)
        .and_then(|path| path.strip_prefix(dir).ok())
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| module.join("::"))
}

/// The library and binary module trees of a crate directory: `src/lib.rs` with its modules,
/// and `src/main.rs` with the modules it declares itself.
fn crate_roots(dir: &Path) -> anyhow::Result<Vec<CrateFiles>> {
    let src = dir.join("src");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut roots = Vec::new();
    for root_file in ["lib.rs", "main.rs"] {
        let root = src.join(root_file);
        if root.is_file() {
            let mut modules = BTreeMap::new();
            collect_modules(&root, &src, Vec::new(), &mut modules)?;
            roots.push(CrateFiles {
                name: format!("{name} ({root_file})"),
                modules,
            });
        }
    }
    Ok(roots)
}

/// Follows `mod x;` declarations from `file` (module path `path`, children in `dir`).
fn collect_modules(
    file: &Path,
    dir: &Path,
    path: Vec<String>,
    modules: &mut BTreeMap<Vec<String>, PathBuf>,
) -> anyhow::Result<()> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    modules.insert(path.clone(), file.to_path_buf());
    for child in declared_modules(&strip_tests(&strip_comments(&text))) {
        let candidates = [
            dir.join(format!("{child}.rs")),
            dir.join(&child).join("mod.rs"),
        ];
        let Some(child_file) = candidates.into_iter().find(|f| f.is_file()) else {
            continue; // an inline module: part of this file
        };
        let mut child_path = path.clone();
        child_path.push(child.clone());
        collect_modules(&child_file, &dir.join(&child), child_path, modules)?;
    }
    Ok(())
}

/// Names of `mod x;` declarations (not inline `mod x { .. }`).
fn declared_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for statement in text.split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice()
            && is_ident(name)
        {
            names.push((*name).to_string());
        }
    }
    names
}

fn is_ident(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Edges between module paths of one crate.
fn import_graph(
    krate: &CrateFiles,
) -> anyhow::Result<BTreeMap<Vec<String>, BTreeSet<Vec<String>>>> {
    let mut graph = BTreeMap::new();
    for (module, file) in &krate.modules {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let code = strip_tests(&strip_comments(&text));
        let mut targets = BTreeSet::new();
        for path in referenced_paths(&code) {
            if let Some(target) = resolve(krate, module, &path) {
                let is_descendant = target.len() > module.len() && target.starts_with(module);
                if target != *module && !is_descendant {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    Ok(graph)
}

/// The file module a path starting with `crate`, `super` or `self` lands in.
fn resolve(krate: &CrateFiles, from: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => from.to_vec(),
        _ => return None,
    };
    let mut rest = path;
    if path[0] == "crate" || path[0] == "self" {
        rest = &path[1..];
    }
    while let Some(first) = rest.first() {
        if first == "super" {
            base.pop()?;
            rest = &rest[1..];
        } else {
            break;
        }
    }
    let mut full = base;
    full.extend(rest.iter().cloned());
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|candidate| krate.modules.contains_key(candidate))
}

/// Every `crate::..`, `super::..` and `self::..` path in code, `use` trees expanded.
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            let end = tokens[i..]
                .iter()
                .position(|t| t == ";")
                .map_or(tokens.len(), |p| i + p);
            expand_use(&tokens[i + 1..end], Vec::new(), &mut paths);
            i = end;
            continue;
        }
        let starts_path = matches!(tokens[i].as_str(), "crate" | "super" | "self")
            && tokens.get(i + 1).is_some_and(|t| t == "::");
        let after_path_sep = i > 0 && tokens[i - 1] == "::";
        if starts_path && !after_path_sep {
            let mut path = vec![tokens[i].clone()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|t| t == "::")
                && tokens.get(j + 1).is_some_and(|t| is_ident(t))
            {
                path.push(tokens[j + 1].clone());
                j += 2;
            }
            paths.push(path);
            i = j;
            continue;
        }
        i += 1;
    }
    paths
}

/// Expands one `use` tree (`a::{b, c::d}`) into full paths.
fn expand_use(tokens: &[String], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "::" | "pub" => i += 1,
            "{" => {
                let mut depth = 0;
                let mut start = i + 1;
                for j in i..tokens.len() {
                    match tokens[j].as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                expand_use(&tokens[start..j], path.clone(), out);
                                return;
                            }
                        }
                        "," if depth == 1 => {
                            expand_use(&tokens[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            "as" => break,
            word if is_ident(word) => {
                path.push(word.to_string());
                i += 1;
            }
            _ => i += 1,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&next) = chars.peek() {
                if next.is_alphanumeric() || next == '_' {
                    word.push(next);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".to_string());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens
}

/// The code without comments, string and char literals (paths inside them are not imports).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for next in chars.by_ref() {
                    if last == '*' && next == '/' {
                        break;
                    }
                    last = next;
                }
            }
            '"' => {
                let mut escaped = false;
                for next in chars.by_ref() {
                    if next == '"' && !escaped {
                        break;
                    }
                    escaped = next == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The file without its `#[cfg(test)]` items (they follow the code they test).
fn strip_tests(code: &str) -> String {
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_string(),
        None => code.to_string(),
    }
}

/// Tarjan's strongly connected components with more than one member.
fn strongly_connected(
    graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        components: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a Vec<String>) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        state.on_stack.insert(node);
        if let Some(targets) = state.graph.get(node) {
            for target in targets {
                let Some((target, _)) = state.graph.get_key_value(target) else {
                    continue;
                };
                if !state.index.contains_key(target) {
                    visit(state, target);
                    let low = state.low[target].min(state.low[node]);
                    state.low.insert(node, low);
                } else if state.on_stack.contains(target) {
                    let low = state.index[target].min(state.low[node]);
                    state.low.insert(node, low);
                }
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.components.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn use_trees_expand_into_paths() {
        let code = "use crate::{a::b, c::{d, e as f}}; use super::g; fn x() { crate::h::i(); }";
        let paths = referenced_paths(code);
        assert_eq!(
            paths,
            vec![
                strings(&["crate", "a", "b"]),
                strings(&["crate", "c", "d"]),
                strings(&["crate", "c", "e"]),
                strings(&["super", "g"]),
                strings(&["crate", "h", "i"]),
            ]
        );
    }

    #[test]
    fn comments_strings_and_tests_are_not_imports() {
        let code =
            "// use crate::a;\nlet s = \"crate::b\";\n#[cfg(test)]\nmod tests { use crate::c; }";
        assert!(referenced_paths(&strip_tests(&strip_comments(code))).is_empty());
    }

    #[test]
    fn loops_are_found_and_chains_are_not() {
        let node = |n: &str| strings(&[n]);
        let mut graph = BTreeMap::new();
        graph.insert(node("a"), BTreeSet::from([node("b")]));
        graph.insert(node("b"), BTreeSet::from([node("c")]));
        graph.insert(node("c"), BTreeSet::from([node("a")]));
        graph.insert(node("d"), BTreeSet::from([node("a")]));
        assert_eq!(
            strongly_connected(&graph),
            vec![vec![node("a"), node("b"), node("c")]]
        );
        graph.insert(node("c"), BTreeSet::new());
        assert!(strongly_connected(&graph).is_empty());
    }
}
