//! The library's modules import one another without a circle: calls go one
//! way (STYLE.md, "Calls go one way"), so each module can be read, tested
//! and changed knowing only what is below it.
//!
//! The graph is read from the sources as they are compiled into the library
//! (test-only code left out): an edge goes from a module to every module a
//! `use` or a path in its code names (`crate::a::b`, `super::c`, a child
//! module's name), except its own ancestors: a part using what its package
//! defines for all its parts (`super::Shared`) is the package's shape. A
//! circle fails the test with the modules on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles other work is breaking (their owners remove them from this list
/// when they are gone; a circle not listed here fails the test).
const KNOWN_CIRCLES: &[&[&str]] = &[];

/// A module's path from the crate root (`[]` for `lib.rs`).
type ModulePath = Vec<String>;

fn name(module: &ModulePath) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.join("::")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// The code of a file as tokens: comments, string and character literals
/// dropped (a doc comment naming `crate::x` is not an import).
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#' | '"')) && raw_string_end(&chars, i).is_some()
        {
            i = raw_string_end(&chars, i).unwrap_or(chars.len());
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'); a lifetime is left
            // as its name.
            if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Where the raw string starting at `start` (`r"`, `r#"`, ...) ends.
fn raw_string_end(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

fn is_punct(token: Option<&Token>, c: char) -> bool {
    token == Some(&Token::Punct(c))
}

/// The index after the item starting at `start`: its `;`, or its braced
/// body.
fn item_end(tokens: &[Token], start: usize) -> usize {
    let mut depth = 0i32;
    let mut i = start;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')' | ']') => depth -= 1,
            Token::Punct(';') if depth == 0 => return i + 1,
            Token::Punct('{') if depth == 0 => {
                let mut braces = 0;
                while i < tokens.len() {
                    match tokens[i] {
                        Token::Punct('{') => braces += 1,
                        Token::Punct('}') => {
                            braces -= 1;
                            if braces == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether `#[cfg(test)]` starts at `i`.
fn is_cfg_test(tokens: &[Token], i: usize) -> bool {
    let expected = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    tokens.get(i..i + expected.len()) == Some(&expected[..])
}

/// The tokens without the items under `#[cfg(test)]`.
fn without_tests(tokens: &[Token]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if is_cfg_test(tokens, i) {
            i = item_end(tokens, i + 7);
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}

/// The `mod name;` declarations (modules in files of their own).
fn declared_modules(tokens: &[Token]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if token != &Token::Ident("mod".into()) {
            continue;
        }
        if let (Some(Token::Ident(name)), true) =
            (tokens.get(i + 1), is_punct(tokens.get(i + 2), ';'))
        {
            out.push(name.clone());
        }
    }
    out
}

/// Every path a `use` tree names, expanded (`a::{b, c::d}` is `a::b` and
/// `a::c::d`), from `tokens[i]` (just after `use`); returns the index
/// after the tree.
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(i) {
            Some(Token::PathSep) => i += 1,
            Some(Token::Ident(word)) if word == "as" => {
                i += 2;
                out.push(path);
                return i;
            }
            Some(Token::Ident(word)) => {
                path.push(word.clone());
                i += 1;
            }
            Some(Token::Punct('{')) => {
                i += 1;
                while i < tokens.len() && !is_punct(tokens.get(i), '}') {
                    i = use_tree(tokens, i, &path, out);
                    if is_punct(tokens.get(i), ',') {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some(Token::Punct('*')) => {
                out.push(path);
                return i + 1;
            }
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

/// The paths a file's code names: `use` trees, and paths starting with
/// `crate`, `super`, `self` or one of `children`.
fn named_paths(tokens: &[Token], children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let after_sep = i > 0 && tokens[i - 1] == Token::PathSep;
        match &tokens[i] {
            Token::Ident(word) if word == "use" && !after_sep => {
                i = use_tree(tokens, i + 1, &[], &mut out);
                continue;
            }
            Token::Ident(word)
                if !after_sep
                    && tokens.get(i + 1) == Some(&Token::PathSep)
                    && (matches!(word.as_str(), "crate" | "super" | "self")
                        || children.contains(word)) =>
            {
                let mut path = vec![word.clone()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::PathSep) {
                    match tokens.get(j + 1) {
                        Some(Token::Ident(next)) => path.push(next.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                out.push(path);
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The module `path` names from `module`, as deep as known modules go;
/// `None` for a path outside the crate.
fn resolve(
    module: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let (mut base, mut rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (module.clone(), &path[1..]),
        Some("super") => {
            let mut base = module.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        Some(_) => (module.clone(), path),
        None => return None,
    };
    let mut first = true;
    while let Some(segment) = rest.first() {
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if !modules.contains(&deeper) {
            break;
        }
        base = deeper;
        rest = &rest[1..];
        first = false;
    }
    // A bare name that is not a child module is another crate's.
    let relative = !matches!(path[0].as_str(), "crate" | "self" | "super");
    if relative && first {
        return None;
    }
    Some(base)
}

struct Crate {
    /// Each module's code, test-only items left out.
    code: BTreeMap<ModulePath, Vec<Token>>,
}

impl Crate {
    /// The modules `lib.rs` reaches through `mod name;`, read from `src`.
    fn read(src: &Path) -> Crate {
        let mut code = BTreeMap::new();
        let mut pending: Vec<(ModulePath, PathBuf, PathBuf)> =
            vec![(Vec::new(), src.join("lib.rs"), src.to_owned())];
        while let Some((module, file, dir)) = pending.pop() {
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let tokens = without_tests(&tokens(&source));
            for child in declared_modules(&tokens) {
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(&child).join("mod.rs");
                let (child_file, child_dir) = if flat.exists() {
                    (flat, dir.join(&child))
                } else if nested.exists() {
                    (nested, dir.join(&child))
                } else {
                    panic!("module {child} of {}: no file", file.display());
                };
                let mut path = module.clone();
                path.push(child);
                pending.push((path, child_file, child_dir));
            }
            code.insert(module, tokens);
        }
        Crate { code }
    }

    /// Module → the modules it names.
    fn edges(&self) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
        let modules: BTreeSet<ModulePath> = self.code.keys().cloned().collect();
        let mut edges = BTreeMap::new();
        for (module, tokens) in &self.code {
            let children: BTreeSet<String> = modules
                .iter()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .filter_map(|m| m.last().cloned())
                .collect();
            let targets: BTreeSet<ModulePath> = named_paths(tokens, &children)
                .iter()
                .filter_map(|path| resolve(module, path, &modules))
                // A module looking up at its ancestors (`super::Shared`)
                // uses what its package defines for all its parts: that
                // is the package's shape, not a circle.
                .filter(|target| !module.starts_with(target))
                .collect();
            edges.insert(module.clone(), targets);
        }
        edges
    }
}

/// The groups of modules that reach one another (strongly connected, more
/// than one module), each sorted.
fn circles(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> BTreeSet<Vec<String>> {
    let reach = |from: &ModulePath| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(module) = stack.pop() {
            for next in edges.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&ModulePath, BTreeSet<ModulePath>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut out = BTreeSet::new();
    for (module, reached) in &reachable {
        if !reached.contains(*module) {
            continue;
        }
        let group: Vec<String> = reached
            .iter()
            .filter(|other| reachable.get(other).is_some_and(|r| r.contains(*module)))
            .map(name)
            .collect();
        out.insert(group);
    }
    out
}

#[test]
fn the_library_modules_import_one_another_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let library = Crate::read(&src);
    assert!(
        library.code.len() > 30,
        "only {} modules found: the reader is broken",
        library.code.len()
    );
    let edges = library.edges();
    let known: BTreeSet<Vec<String>> = KNOWN_CIRCLES
        .iter()
        .map(|c| c.iter().map(|m| (*m).to_owned()).collect())
        .collect();
    let found = circles(&edges);
    let new: Vec<&Vec<String>> = found.iter().filter(|c| !known.contains(*c)).collect();
    let describe = |circle: &Vec<String>| {
        let lines: Vec<String> = circle
            .iter()
            .map(|m| {
                let module: ModulePath = if m == "lib" {
                    Vec::new()
                } else {
                    m.split("::").map(str::to_owned).collect()
                };
                let inside: Vec<String> = edges[&module]
                    .iter()
                    .map(name)
                    .filter(|n| circle.contains(n))
                    .collect();
                format!("  {m} -> {}", inside.join(", "))
            })
            .collect();
        lines.join("\n")
    };
    assert!(
        new.is_empty(),
        "import circles:\n{}",
        new.iter()
            .map(|c| describe(c))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    for gone in known.difference(&found) {
        println!("KNOWN_CIRCLES lists {gone:?}, which is gone: remove it");
    }
}

#[test]
fn the_library_carries_no_fuzz_harness() {
    // The harness is the crate mist-fuzzing (tests/fuzzing): a module of
    // the library would be built into every mist and be part of its API.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let fuzz: Vec<String> = Crate::read(&src)
        .code
        .keys()
        .map(name)
        .filter(|m| m.contains("fuzz"))
        .collect();
    assert!(fuzz.is_empty(), "fuzzing modules in the library: {fuzz:?}");
}

#[test]
fn the_reader_sees_imports_of_every_form() {
    let source = r#"
        //! Names `crate::ignored` in a comment.
        use crate::a::{b::{self, C}, d};
        use super::e as f;
        pub use child::Thing;
        fn g() { let s = "crate::in_a_string"; crate::h::call(); other::x(); }
        #[cfg(test)]
        mod tests { use crate::only_in_tests; }
    "#;
    let tokens = without_tests(&tokens(source));
    let children = BTreeSet::from(["child".to_owned()]);
    let paths: BTreeSet<String> = named_paths(&tokens, &children)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    let expected = [
        "crate::a::b::self",
        "crate::a::b::C",
        "crate::a::d",
        "super::e",
        "child::Thing",
        "crate::h::call",
    ];
    assert_eq!(
        paths,
        expected
            .iter()
            .map(|p| (*p).to_owned())
            .collect::<BTreeSet<_>>()
    );

    let module = |path: &str| -> ModulePath { path.split("::").map(str::to_owned).collect() };
    let modules: BTreeSet<ModulePath> = ["a", "a::b", "x", "x::child"].map(module).into();
    let from = module("x");
    let to = |path: &str| resolve(&from, &module(path), &modules).map(|m| name(&m));
    assert_eq!(to("crate::a::b::C").as_deref(), Some("a::b"));
    assert_eq!(to("super::a").as_deref(), Some("a"));
    assert_eq!(to("child::Thing").as_deref(), Some("x::child"));
    assert_eq!(to("tokio::spawn"), None);

    let edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = [
        (module("a"), BTreeSet::from([module("a::b")])),
        (module("a::b"), BTreeSet::from([module("x")])),
        (module("x"), BTreeSet::from([module("a")])),
        (module("x::child"), BTreeSet::from([module("x")])),
    ]
    .into();
    assert_eq!(
        circles(&edges),
        BTreeSet::from([vec!["a".to_owned(), "a::b".to_owned(), "x".to_owned()]])
    );
}
