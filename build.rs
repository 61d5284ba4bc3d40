//! Build-time work: rebuilds the crate when a migration changes, and joins
//! the browser client's ES modules into the one file tidings serves.
//!
//! `sqlx::migrate!()` (src/db.rs) embeds `migrations/` at compile time, but
//! Cargo does not know the macro read that directory: without the
//! `rerun-if-changed` line, a new migration file reaches the binary only
//! once some Rust source changes too. sqlx's documentation recommends
//! exactly this line.
//!
//! The client (`web/tidings.js` and the modules it imports from
//! `web/tidings/`) is written as plain ES modules and served as one file,
//! `$OUT_DIR/tidings.js` (the `web` module serving it says why). The join
//! must never rewrite code: it comments out the static `import` lines,
//! drops the `export` keyword from the parts' top-level declarations, and
//! puts the parts in the order a browser would evaluate them, each under a
//! marker that says which file it is and how its line numbers map. Anything
//! the join could get wrong - another import form, a name imported that the
//! module named does not export, two parts declaring one name - fails the
//! build instead of producing a file that behaves unlike its sources.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=web/tidings.js");
    println!("cargo:rerun-if-changed=web/tidings");

    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let joined = join(&root, Path::new("web/tidings.js")).and_then(|text| {
        std::fs::write(out.join("tidings.js"), text).map_err(|e| format!("writing OUT_DIR: {e}"))
    });
    if let Err(error) = joined {
        eprintln!("error: the browser client cannot be joined: {error}");
        std::process::exit(1);
    }
}

/// One module as the join sees it.
struct Module {
    /// Relative to the crate root, with `/`: what markers and errors show.
    name: String,
    /// The text to serve: imports commented out, parts' `export`s dropped.
    text: String,
    /// Top-level `function`/`class`/`const`/`let`/`var` names.
    declared: Vec<String>,
    exported: BTreeSet<String>,
    imports: Vec<Import>,
}

struct Import {
    names: Vec<String>,
    from: String,
    line: usize,
}

/// The entry module and everything it imports, as one module's text.
fn join(root: &Path, entry: &Path) -> Result<String, String> {
    let entry = slashed(entry);
    let mut modules = BTreeMap::new();
    let mut order = Vec::new();
    visit(
        root,
        &entry,
        &entry,
        &mut modules,
        &mut Vec::new(),
        &mut order,
    )?;

    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for module in modules.values() {
        for name in &module.declared {
            if let Some(other) = owners.insert(name, &module.name) {
                return Err(format!(
                    "`{name}` is declared in both {other} and {}: one file needs another name",
                    module.name
                ));
            }
        }
        let local = |n: &String| {
            module.declared.contains(n) || module.imports.iter().any(|i| i.names.contains(n))
        };
        if let Some(stray) = module
            .exported
            .iter()
            .find(|n| *n != "default" && !local(n))
        {
            return Err(format!(
                "{} exports `{stray}`, which it neither declares nor imports",
                module.name
            ));
        }
        for import in &module.imports {
            let target = &modules[&import.from];
            if let Some(missing) = import.names.iter().find(|n| !target.exported.contains(*n)) {
                return Err(format!(
                    "{}:{}: imports `{missing}` from {}, which does not export it",
                    module.name, import.line, target.name
                ));
            }
        }
    }

    let mut out = String::from(
        "// tidings.js, served as one file: web/tidings.js and the modules it imports,\n\
         // joined when tidings was built. Each part starts at a marker naming its\n\
         // file; its imports are commented out, its code is as written.\n",
    );
    for name in &order {
        let module = &modules[name];
        let here = out.lines().count() + 2;
        let _ = writeln!(
            out,
            "\n// ---- {name} (its line N is line N + {} here) ----",
            here
        );
        out.push_str(&module.text);
    }
    Ok(out)
}

/// Reads `name` and, first, what it imports: `order` ends up as a browser
/// evaluates them (a module after its imports; a cycle back to a module
/// still being visited is left to that module, as a browser does).
fn visit(
    root: &Path,
    entry: &str,
    name: &str,
    modules: &mut BTreeMap<String, Module>,
    visiting: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), String> {
    if modules.contains_key(name) || visiting.iter().any(|v| v == name) {
        return Ok(());
    }
    let source =
        std::fs::read_to_string(root.join(name)).map_err(|e| format!("reading {name}: {e}"))?;
    let module = parse(name, &source, name == entry)?;
    visiting.push(name.to_owned());
    for import in &module.imports {
        visit(root, entry, &import.from, modules, visiting, order)?;
    }
    visiting.pop();
    modules.insert(name.to_owned(), module);
    order.push(name.to_owned());
    Ok(())
}

const DECLARATIONS: [&str; 7] = [
    "async function ",
    "function* ",
    "function ",
    "class ",
    "const ",
    "let ",
    "var ",
];

/// Only lines at column 0 are looked at: top-level statements, formatted
/// as this project formats them. So no line of a template literal may
/// start with `import ` or `export ` (most such lines fail the checks here).
fn parse(name: &str, source: &str, is_entry: bool) -> Result<Module, String> {
    let mut module = Module {
        name: name.to_owned(),
        text: String::with_capacity(source.len()),
        declared: Vec::new(),
        exported: BTreeSet::new(),
        imports: Vec::new(),
    };
    let mut import: Option<(usize, String)> = None;
    for (index, line) in source.lines().enumerate() {
        let number = index + 1;
        let at = || format!("{name}:{number}");
        if import.is_some() || line.starts_with("import ") {
            let (start, text) = import.get_or_insert_with(|| (number, String::new()));
            text.push_str(line);
            text.push('\n');
            module.text.push_str("// ");
            module.text.push_str(line);
            module.text.push('\n');
            if line.trim_end().ends_with(';') {
                let (names, from) =
                    import_statement(text).map_err(|e| format!("{name}:{start}: {e}"))?;
                let from = resolve(name, &from).map_err(|e| format!("{name}:{start}: {e}"))?;
                module.imports.push(Import {
                    names,
                    from,
                    line: *start,
                });
                import = None;
            }
            continue;
        }
        let mut kept = line;
        if let Some(rest) = line.strip_prefix("export ") {
            if rest.starts_with('{') && is_entry {
                let list = rest
                    .strip_suffix("};")
                    .and_then(|r| r.strip_prefix('{'))
                    .filter(|list| !list.contains(" from ") && !list.contains(" as "))
                    .ok_or_else(|| format!("{}: only `export {{ a, b }};` on one line", at()))?;
                module
                    .exported
                    .extend(identifiers(list).map_err(|e| format!("{}: {e}", at()))?);
            } else if rest.starts_with("default ") && is_entry {
                module.exported.insert("default".to_owned());
            } else {
                let declared = declaration(rest).ok_or_else(|| {
                    let allowed = if is_entry {
                        "`export {…};`, `export default` or "
                    } else {
                        ""
                    };
                    format!(
                        "{}: only {allowed}`export` before a declaration can be joined",
                        at()
                    )
                })?;
                module.exported.insert(declared);
                if !is_entry {
                    kept = rest;
                }
            }
        }
        if let Some(declared) = declaration(line.strip_prefix("export ").unwrap_or(line)) {
            module.declared.push(declared);
        }
        module.text.push_str(kept);
        module.text.push('\n');
    }
    if import.is_some() {
        return Err(format!("{name}: an import statement without its `;`"));
    }
    Ok(module)
}

/// The name a top-level declaration line declares, if it is one.
fn declaration(line: &str) -> Option<String> {
    let rest = DECLARATIONS
        .iter()
        .find_map(|keyword| line.strip_prefix(keyword))?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `import { a, b } from './x.js';` (on one line or several): the names
/// and the specifier. Nothing else: a default, namespace or renamed import
/// would need the join to rename things.
fn import_statement(text: &str) -> Result<(Vec<String>, String), String> {
    let shape = "only `import { a, b } from './relative.js';` can be joined";
    let inner = text
        .trim()
        .strip_prefix("import")
        .ok_or(shape)?
        .trim_start();
    let (list, rest) = inner
        .strip_prefix('{')
        .and_then(|r| r.split_once('}'))
        .ok_or(shape)?;
    let spec = rest
        .trim()
        .strip_prefix("from")
        .and_then(|r| r.trim().strip_suffix(';'))
        .map(str::trim)
        .ok_or(shape)?;
    let quoted = |q: char| spec.strip_prefix(q).and_then(|s| s.strip_suffix(q));
    let spec = quoted('\'').or_else(|| quoted('"')).ok_or(shape)?;
    if !(spec.starts_with("./") || spec.starts_with("../")) || !spec.ends_with(".js") {
        return Err(format!("{shape} (not `{spec}`)"));
    }
    Ok((identifiers(list)?, spec.to_owned()))
}

fn identifiers(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            let plain = n
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
            if plain {
                Ok(n.to_owned())
            } else {
                Err(format!("`{n}`: only plain names (no `as`) can be joined"))
            }
        })
        .collect()
}

/// `spec` relative to the module `from`, as a crate-relative path.
fn resolve(from: &str, spec: &str) -> Result<String, String> {
    let joined = Path::new(from).parent().unwrap_or(Path::new("")).join(spec);
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir if !parts.is_empty() => {
                parts.pop();
            }
            Component::CurDir => {}
            _ => return Err(format!("`{spec}` leaves the crate")),
        }
    }
    Ok(slashed(&parts.iter().collect::<PathBuf>()))
}

fn slashed(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}
