//! No import circle between the modules of a crate: dependencies point one
//! way, so a change low in a crate cannot reach back up through it.
//!
//! For every crate of the workspace (the `members` of the root
//! `Cargo.toml`), each file under `src/` belongs to its top-level module
//! (`src/api/routes.rs` to `api`); every `crate::<name>` it mentions, in a
//! `use` line or a path (grouped ones too, `use crate::{a, b::C}`), is an
//! edge to module `<name>`, or to the module a name re-exported by
//! `lib.rs` comes from (`crate::PgConnectionOptions` is `config`). Comments,
//! strings and `$crate` are skipped, and `super::` stays inside a module by
//! the house style. Every strongly connected component of more than one
//! module is a circle, reported with the edges that make it and the line of
//! each.
//!
//! Plain text and std only: no build of the crates it reads, so it runs in
//! milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Circles a crate may keep, each as the modules of one strongly connected
/// component; a component passes only when it lies inside one of these.
/// There are none, and none may be added: break the circle instead.
const ROOT_ALLOWED: &[&[&str]] = &[];

#[test]
fn no_new_circle_between_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let members = workspace_members(root);
    for expected in [".", "client"] {
        assert!(members.iter().any(|m| m == expected), "no workspace member {expected:?} in {members:?}");
    }
    assert!(members.iter().any(|m| m.starts_with("plugins/")), "no plugin crate in {members:?}");

    let mut failures = Vec::new();
    for member in &members {
        let src = root.join(member).join("src");
        if !src.is_dir() {
            continue;
        }
        let allowed: &[&[&str]] = if member == "." { ROOT_ALLOWED } else { &[] };
        let graph = Graph::read(&src);
        let circles = graph.circles();
        for circle in &circles {
            if !allowed.iter().any(|a| circle.iter().all(|m| a.contains(&m.as_str()))) {
                failures.push(format!("{member}/src: {}", graph.describe(circle)));
            }
        }
        for a in allowed {
            let matched: BTreeSet<&str> =
                circles.iter().flatten().map(String::as_str).filter(|m| a.contains(m)).collect();
            if matched.len() < a.len() {
                eprintln!("{member}/src: allowed circle {a:?} is now {matched:?}: shrink the allow-list");
            }
        }
    }
    assert!(failures.is_empty(), "import circles between modules:\n\n{}", failures.join("\n\n"));
}

/// The `members` list of the workspace's `Cargo.toml`.
fn workspace_members(root: &Path) -> Vec<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let start = manifest.find("members").expect("a members list in Cargo.toml");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("members = [")..list.find(']').expect("members = [...]")];
    list.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The modules of one crate and the references between them.
struct Graph {
    /// Each edge `from -> to`, with the places (`file:line`, the first in
    /// each file) that make it.
    edges: BTreeMap<(String, String), Vec<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        files.sort();

        let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
        // Names the crate root imports (`pub use config::PgRole;`), so that
        // `crate::PgRole` counts as a reference to `config`.
        let mut reexports = BTreeMap::new();
        let mut sources = Vec::new();
        for file in &files {
            let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let tokens = tokenize(&text);
            match module_of(src, file) {
                None => reexports.extend(root_imports(&tokens, &modules)),
                Some(module) => sources.push((module, file, tokens)),
            }
        }

        let mut edges = BTreeMap::new();
        for (module, file, tokens) in &sources {
            for (name, line) in crate_references(tokens) {
                let target = if modules.contains(&name) { Some(&name) } else { reexports.get(&name) };
                if let Some(target) = target.filter(|t| *t != module) {
                    let file = file.strip_prefix(src).unwrap_or(file).display().to_string();
                    let places: &mut Vec<String> = edges.entry((module.clone(), target.clone())).or_default();
                    if !places.iter().any(|p| p.starts_with(&format!("{file}:"))) {
                        places.push(format!("{file}:{line}"));
                    }
                }
            }
        }
        Graph { edges }
    }

    /// The strongly connected components of more than one module.
    fn circles(&self) -> Vec<Vec<String>> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            next.entry(from).or_default().push(to);
            next.entry(to).or_default();
        }
        let mut tarjan = Tarjan {
            next: &next,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            found: Vec::new(),
        };
        for node in next.keys() {
            if !tarjan.index.contains_key(node) {
                tarjan.visit(node);
            }
        }
        let mut circles: Vec<Vec<String>> = tarjan
            .found
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut c: Vec<String> = c.into_iter().map(str::to_owned).collect();
                c.sort();
                c
            })
            .collect();
        circles.sort();
        circles
    }

    /// A circle's modules and the edges between them, one a line.
    fn describe(&self, circle: &[String]) -> String {
        let mut out = format!("circle between {}:", circle.join(", "));
        for ((from, to), places) in &self.edges {
            if circle.contains(from) && circle.contains(to) {
                out.push_str(&format!("\n  {from} -> {to} ({})", places.join(", ")));
            }
        }
        out
    }
}

/// Tarjan's algorithm for strongly connected components.
struct Tarjan<'a> {
    next: &'a BTreeMap<&'a str, Vec<&'a str>>,
    index: BTreeMap<&'a str, usize>,
    low: BTreeMap<&'a str, usize>,
    stack: Vec<&'a str>,
    found: Vec<Vec<&'a str>>,
}

impl<'a> Tarjan<'a> {
    fn visit(&mut self, node: &'a str) {
        let index = self.index.len();
        self.index.insert(node, index);
        self.low.insert(node, index);
        self.stack.push(node);
        for &to in &self.next[node] {
            if !self.index.contains_key(to) {
                self.visit(to);
                let low = self.low[node].min(self.low[to]);
                self.low.insert(node, low);
            } else if self.stack.contains(&to) {
                let low = self.low[node].min(self.index[to]);
                self.low.insert(node, low);
            }
        }
        if self.low[node] == index {
            let mut component = Vec::new();
            loop {
                let member = self.stack.pop().expect("node on the stack");
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.found.push(component);
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate roots
/// (`lib.rs`, `main.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return Some(first.to_owned());
    }
    match first.strip_suffix(".rs")? {
        "lib" | "main" => None,
        module => Some(module.to_owned()),
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The file's identifiers, `::` and punctuation with their line numbers;
/// comments, string and character literals and lifetimes left out.
fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skips to just past `end`, counting lines on the way.
    let skip_to = |i: &mut usize, line: &mut usize, end: &str| {
        let end: Vec<char> = end.chars().collect();
        while *i < chars.len() && !chars[*i..].starts_with(&end) {
            if chars[*i] == '\n' {
                *line += 1;
            }
            *i += 1;
        }
        *i += end.len();
    };
    // Skips a quoted string from just past its opening `"` to just past
    // its closing one, escapes included, counting lines on the way.
    let skip_string = |i: &mut usize, line: &mut usize| {
        while *i < chars.len() && chars[*i] != '"' {
            if chars[*i] == '\\' {
                *i += 1;
            }
            if chars.get(*i) == Some(&'\n') {
                *line += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let rest = &chars[i..];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            // Block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            skip_string(&mut i, &mut line);
        } else if c == '\'' {
            if rest.get(1) == Some(&'\\') {
                i += 3;
                skip_to(&mut i, &mut line, "'");
            } else if rest.get(2) == Some(&'\'') {
                i += 3;
            } else {
                // A lifetime: its name is read as an identifier, harmless.
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // Raw and byte strings: r"..", r#".."#, b"..", br#".."#.
            let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "b" | "c" | "cr") && chars.get(i + hashes) == Some(&'"') {
                let raw = word.contains('r');
                i += hashes + 1;
                if raw {
                    let end = format!("\"{}", "#".repeat(hashes));
                    skip_to(&mut i, &mut line, &end);
                } else {
                    skip_string(&mut i, &mut line);
                }
            } else {
                tokens.push((Token::Ident(word), line));
            }
        } else if rest.starts_with(&[':', ':']) {
            tokens.push((Token::Path, line));
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push((Token::Punct(c), line));
            }
            i += 1;
        }
    }
    tokens
}

fn ident(tokens: &[(Token, usize)], at: usize) -> Option<&str> {
    match tokens.get(at) {
        Some((Token::Ident(name), _)) => Some(name),
        _ => None,
    }
}

/// The first name after each `crate::` (every branch of a group), with its
/// line.
fn crate_references(tokens: &[(Token, usize)]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for at in 0..tokens.len() {
        let after_dollar = at > 0 && tokens[at - 1].0 == Token::Punct('$');
        if ident(tokens, at) == Some("crate")
            && !after_dollar
            && tokens.get(at + 1).map(|t| &t.0) == Some(&Token::Path)
        {
            for path in use_tree(tokens, &mut (at + 2)) {
                if let Some(first) = path.first() {
                    out.push((first.clone(), tokens[at].1));
                }
            }
        }
    }
    out
}

/// The names a crate root brings in with `use` (public or not: both are
/// visible to its modules as `crate::name`), each with the module it comes
/// from.
fn root_imports(tokens: &[(Token, usize)], modules: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for at in 0..tokens.len() {
        if ident(tokens, at) != Some("use") {
            continue;
        }
        for mut path in use_tree(tokens, &mut (at + 1)) {
            if matches!(path.first().map(String::as_str), Some("crate" | "self")) {
                path.remove(0);
            }
            let Some(module) = path.first().filter(|m| modules.contains(*m)) else { continue };
            let name = path.last().expect("a path has a name");
            if name != "*" {
                out.push((name.clone(), module.clone()));
            }
        }
    }
    out
}

/// Reads a use tree (`a::b::{c, d as e, f::*}`) from `at` and returns
/// each of its leaves as a path; an alias replaces the leaf's last name.
/// It stops at the first token that cannot continue the tree, so a plain
/// path (`crate::client::CONNECT_TIMEOUT.min(..)`) reads as one leaf.
fn use_tree(tokens: &[(Token, usize)], at: &mut usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        match tokens.get(*at).map(|t| &t.0) {
            Some(Token::Ident(name)) => {
                prefix.push(name.clone());
                *at += 1;
                if ident(tokens, *at) == Some("as") {
                    if let Some(alias) = ident(tokens, *at + 1) {
                        *prefix.last_mut().expect("a name") = alias.to_owned();
                    }
                    *at += 2;
                    return vec![prefix];
                }
                if tokens.get(*at).map(|t| &t.0) != Some(&Token::Path) {
                    return vec![prefix];
                }
                *at += 1;
            }
            Some(Token::Punct('*')) => {
                *at += 1;
                prefix.push("*".to_owned());
                return vec![prefix];
            }
            Some(Token::Punct('{')) => {
                *at += 1;
                let mut leaves = Vec::new();
                loop {
                    match tokens.get(*at).map(|t| &t.0) {
                        None => break,
                        Some(Token::Punct('}')) => {
                            *at += 1;
                            break;
                        }
                        Some(Token::Punct(',')) => *at += 1,
                        Some(_) => {
                            let before = *at;
                            for leaf in use_tree(tokens, at) {
                                let mut path = prefix.clone();
                                // `a::{self}` is `a` itself.
                                path.extend(leaf.into_iter().filter(|n| n != "self"));
                                leaves.push(path);
                            }
                            if *at == before {
                                *at += 1;
                            }
                        }
                    }
                }
                return leaves;
            }
            _ => return if prefix.is_empty() { Vec::new() } else { vec![prefix] },
        }
    }
}

#[test]
fn reads_references_and_reexports() {
    let file = r##"
        //! See [`crate::docs`].
        use crate::{config::{A, B as C}, store::*, self as me};
        use crate::tls;
        /* crate::commented /* nested crate::too */ */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::quoted \" crate::still";
            let _ = r#"crate::raw"#;
            let _ = crate::client::TIMEOUT.min(crate::Reexported::new());
            macro_rules! m { () => { $crate::macro_path } }
            '\''
        }
    "##;
    let tokens = tokenize(file);
    let names: Vec<(String, usize)> = crate_references(&tokens);
    let names: Vec<(&str, usize)> = names.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    assert_eq!(
        names,
        [("config", 3), ("config", 3), ("store", 3), ("me", 3), ("tls", 4), ("client", 9), ("Reexported", 9)]
    );

    let root =
        "pub use config::{Reexported, inner::{Deep as Shallow}}; use std::sync::Arc; pub use self::tls::*;";
    let modules = ["config".to_owned(), "tls".to_owned()].into();
    let imports = root_imports(&tokenize(root), &modules);
    let expected =
        [("Reexported", "config"), ("Shallow", "config")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(imports, expected);
}
