//! The manual (`docs/`, an mdBook) against the code, so its reference
//! pages cannot drift from what the code does.
//!
//! - `docs/src/reference/config.md` is generated from
//!   `schemas/config.schema.json` (which `src/config/tests.rs` keeps equal to
//!   the config types);
//! - the generated part of `docs/src/reference/cli.md` is the `--help` of
//!   every subcommand of the built `lessor`, found by walking the help
//!   itself, so a new subcommand shows up without anyone listing it;
//! - the route table of `docs/src/reference/api.md` must hold exactly the
//!   routes, with their methods, that the routers in `src/` register;
//! - the metrics table of `docs/src/reference/metrics.md` must hold exactly
//!   the metrics `src/` defines, and the Grafana dashboard and the
//!   Prometheus alert rules under `docs/src/operations/` must parse and
//!   query no metric that does not exist;
//! - every relative link of the book and of the README leads to a file
//!   that exists and, for a `#fragment`, to a heading in it, and every
//!   chapter is in `SUMMARY.md`.
//!
//! A generated page that differs is rewritten by running the test with
//! `LESSOR_BLESS_DOCS=1` (`LESSOR_BLESS_DOCS=1 cargo test --test docs`);
//! without it the test fails and says so. Plain text and std (and
//! serde_json) only, apart from running the built binary for its help and
//! Python's `yaml` for the rule file (the venv of `scripts/test` has it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

const BLESS: &str = "LESSOR_BLESS_DOCS";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares `page` with what it should be; with `LESSOR_BLESS_DOCS=1`
/// rewrites it instead.
fn check_generated(page: &Path, expected: &str) {
    let actual = fs::read_to_string(page).unwrap_or_default();
    if actual == expected {
        return;
    }
    if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
        fs::write(page, expected).unwrap_or_else(|e| panic!("write {}: {e}", page.display()));
        eprintln!("rewrote {}", page.display());
        return;
    }
    let first = actual
        .lines()
        .zip(expected.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
    panic!(
        "{} is out of date (first difference at line {}: {:?} should be {:?}).\n\
         Regenerate it with `{BLESS}=1 cargo test --test docs` and commit the result.",
        page.strip_prefix(root()).unwrap_or(page).display(),
        first + 1,
        actual.lines().nth(first).unwrap_or("<end of file>"),
        expected.lines().nth(first).unwrap_or("<end of file>"),
    );
}

/// Replaces the text between `<!-- {marker} -->`'s line and `<!-- /{marker} -->`.
fn with_section(page: &str, marker: &str, body: &str) -> String {
    let open = format!("<!-- {marker}");
    let close = format!("<!-- /{marker} -->");
    let start = page.find(&open).unwrap_or_else(|| panic!("no {open} … --> line"));
    let start = start + page[start..].find('\n').expect("a line after the marker") + 1;
    let end = page[start..].find(&close).unwrap_or_else(|| panic!("no {close} line")) + start;
    format!("{}{}{}", &page[..start], body, &page[end..])
}

/// The text between the marker lines.
fn section<'a>(page: &'a str, marker: &str) -> &'a str {
    let open = format!("<!-- {marker}");
    let close = format!("<!-- /{marker} -->");
    let start = page.find(&open).unwrap_or_else(|| panic!("no {open} … --> line"));
    let end = page.find(&close).unwrap_or_else(|| panic!("no {close} line"));
    &page[start..end]
}

// ---------------------------------------------------------------------------
// The configuration reference, generated from the JSON Schema.

#[test]
fn config_reference_is_generated_from_the_schema() {
    let schema: Value =
        serde_json::from_str(&read(&root().join("schemas/config.schema.json"))).expect("schema JSON");
    let page = ConfigPage::new(&schema).render();
    check_generated(&root().join("docs/src/reference/config.md"), &page);
}

/// Renders the schema as one section per top-level key, each a table of
/// keys, then the tables used inside them (a policy's `match`).
struct ConfigPage<'a> {
    definitions: &'a Map<String, Value>,
    out: String,
    /// Nested tables met so far, by definition name, with their anchor.
    nested: BTreeMap<String, String>,
    /// Nested tables still to render, in the order they were met.
    pending: Vec<(String, &'a Value)>,
}

/// Top-level keys in the order a config file is usually written; any
/// other comes after them, alphabetically.
const CONFIG_ORDER: &[&str] = &["server", "connections", "roles", "static_accounts", "policies", "plugins"];

impl<'a> ConfigPage<'a> {
    fn new(schema: &'a Value) -> Self {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let definitions = schema["definitions"].as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        let mut page =
            ConfigPage { definitions, out: String::new(), nested: BTreeMap::new(), pending: Vec::new() };
        page.out.push_str(CONFIG_INTRO);
        let top = schema["properties"].as_object().expect("top-level properties");
        let mut keys: Vec<&String> = top.keys().collect();
        keys.sort_by_key(|k| {
            (CONFIG_ORDER.iter().position(|o| o == k).unwrap_or(CONFIG_ORDER.len()), k.as_str())
        });
        for key in keys {
            page.top_level(key, &top[key.as_str()]);
        }
        if !page.pending.is_empty() {
            page.out.push_str("\n## Tables inside other keys\n");
        }
        while !page.pending.is_empty() {
            let (name, definition) = page.pending.remove(0);
            page.out.push_str(&format!("\n### `{name}`\n\n"));
            if let Some(description) = definition.get("description").and_then(Value::as_str) {
                page.out.push_str(&format!("{}\n\n", paragraph(description)));
            }
            page.table(definition);
        }
        page
    }

    fn render(self) -> String {
        self.out
    }

    fn top_level(&mut self, key: &str, property: &'a Value) {
        let (heading, definition) = if let Some(items) = property.get("items") {
            (format!("[[{key}]]"), self.resolve(items))
        } else if let Some(values) = property.get("additionalProperties").filter(|v| v.is_object()) {
            (format!("[{key}.NAME]"), self.resolve(values))
        } else {
            (format!("[{key}]"), self.resolve(property))
        };
        self.out.push_str(&format!("\n## `{heading}`\n\n"));
        if let Some(description) = property.get("description").and_then(Value::as_str) {
            self.out.push_str(&format!("{}\n\n", paragraph(description)));
        }
        self.table(definition);
    }

    /// A `$ref`, `allOf: [one]` or plain schema, followed to its definition.
    fn resolve(&self, schema: &'a Value) -> &'a Value {
        if let Some(name) = schema.get("$ref").and_then(Value::as_str) {
            let name = name.trim_start_matches("#/definitions/");
            return self.definitions.get(name).unwrap_or_else(|| panic!("no definition {name}"));
        }
        match schema.get("allOf").and_then(Value::as_array) {
            Some(all) if all.len() == 1 => self.resolve(&all[0]),
            _ => schema,
        }
    }

    fn table(&mut self, definition: &'a Value) {
        let Some(properties) = definition.get("properties").and_then(Value::as_object) else {
            self.out.push_str("(no keys)\n");
            return;
        };
        let required: BTreeSet<&str> = definition
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut nested = Vec::new();
        // Two columns: a table of four overflows the page on the long
        // defaults and types, and squeezes the description out of sight.
        let mut rows = String::from("| key | type, default and meaning |\n|---|---|\n");
        for (key, property) in properties {
            let kind = self.kind(property, &mut nested);
            let default = if required.contains(key.as_str()) {
                ", required".to_owned()
            } else {
                match property.get("default") {
                    None | Some(Value::Null) => String::new(),
                    Some(value) => format!(", default `{}`", toml_value(value)),
                }
            };
            let mut description =
                property.get("description").and_then(Value::as_str).unwrap_or("").to_owned();
            if let Some(values) = self.enum_values(property) {
                description.push_str("\n\n");
                description.push_str(&values);
            }
            let meaning = if description.trim().is_empty() {
                String::new()
            } else {
                format!("<br>{}", cell(&description))
            };
            rows.push_str(&format!("| `{key}` | *{kind}{default}*{meaning} |\n"));
        }
        self.out.push_str(&rows);
        if definition.get("additionalProperties") == Some(&Value::Bool(true)) {
            self.out.push_str(
                "\nKeys not listed here are the plugin's own: it checks them when the config is \
                 loaded (the LDAP plugin's, and an external plugin's; see its chapter).\n",
            );
        }
        self.pending.extend(nested);
    }

    /// The type column: `string`, `duration`, `array of string`, one of a
    /// list of values, or a table (rendered below, once).
    fn kind(&mut self, schema: &'a Value, nested: &mut Vec<(String, &'a Value)>) -> String {
        if let Some(name) = schema.get("$ref").and_then(Value::as_str) {
            let name = name.trim_start_matches("#/definitions/");
            let definition = self.resolve(schema);
            if name == "Duration" {
                return "duration".to_owned();
            }
            if definition.get("properties").is_some() {
                let anchor = snake(name);
                if !self.nested.contains_key(name) {
                    self.nested.insert(name.to_owned(), anchor.clone());
                    nested.push((anchor.clone(), definition));
                }
                return format!("table ([`{anchor}`](#{anchor}))");
            }
            if self.enum_values(schema).is_some() {
                return "string (one of the values listed)".to_owned();
            }
            return self.kind(definition, nested);
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
                let kinds: Vec<String> = options
                    .iter()
                    .filter(|o| o.get("type") != Some(&Value::String("null".into())))
                    .map(|o| self.kind(o, nested))
                    .collect();
                let mut unique: Vec<String> = Vec::new();
                for kind in kinds {
                    if !unique.contains(&kind) {
                        unique.push(kind);
                    }
                }
                return unique.join(" or ");
            }
        }
        if schema.get("enum").is_some() {
            return "string".to_owned();
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let types: Vec<String> = types
            .into_iter()
            .filter(|t| *t != "null")
            .map(|t| match t {
                "array" => match schema.get("items") {
                    Some(items) => format!("array of {}", self.kind(items, nested)),
                    None => "array".to_owned(),
                },
                "object" => match schema.get("additionalProperties").filter(|v| v.is_object()) {
                    Some(values) => format!("table of {}", self.kind(values, nested)),
                    None => "table".to_owned(),
                },
                other => other.to_owned(),
            })
            .collect();
        if types.is_empty() {
            "any".to_owned()
        } else {
            types.join(" or ")
        }
    }

    /// For a key whose values are a closed list: each value and what it
    /// means, as a bullet list.
    fn enum_values(&self, schema: &'a Value) -> Option<String> {
        let definition = self.resolve(schema);
        let definition = match definition.get("anyOf").and_then(Value::as_array) {
            // `Option<Enum>`: anyOf [ref, null].
            Some(options) => options.iter().find(|o| o.get("$ref").is_some()).map(|o| self.resolve(o))?,
            None => definition,
        };
        let options = definition.get("oneOf").and_then(Value::as_array)?;
        let mut lines = Vec::new();
        for option in options {
            let value = option
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .and_then(Value::as_str)?;
            match option.get("description").and_then(Value::as_str) {
                Some(description) => lines.push(format!("- `{value}`: {description}")),
                None => lines.push(format!("- `{value}`")),
            }
        }
        Some(lines.join("\n"))
    }
}

const CONFIG_INTRO: &str = "# Configuration reference

<!-- Generated from schemas/config.schema.json by tests/docs.rs: do not edit.
     After a change to the config types: LESSOR_BLESS_DOCS=1 cargo test --test docs -->

Every key of lessor's TOML config, generated from its JSON Schema,
`schemas/config.schema.json`, which is itself generated from the config
types (`lessor config schema` prints it). What the keys are for, with
examples, is in [Configuration](../configuration.md) and the backends'
chapters. Durations are strings such as `90s`, `15m`, `1h30m` or `2d`
(units `ms s m h d`). A key marked `[postgres]`, `[mysql]`, `[redis]` or
`[aws]` is read by that plugin only.

This page is generated: `cargo test --test docs` fails when it differs
from the schema, and `LESSOR_BLESS_DOCS=1 cargo test --test docs` writes
it anew (as it does `reference/cli.md`'s generated part).
";

/// A schema description as a paragraph of its own.
fn paragraph(text: &str) -> String {
    escape_brackets(text.trim())
}

/// `[postgres]` outside code is not a link: escaped, so neither mdBook nor
/// the link checker reads it as one.
fn escape_brackets(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(
            |(i, piece)| {
                if i % 2 == 0 {
                    piece.replace('[', "\\[").replace(']', "\\]")
                } else {
                    piece.to_owned()
                }
            },
        )
        .collect::<Vec<_>>()
        .join("`")
}

/// A description as one table cell: paragraphs joined with `<br><br>`,
/// lists with `<br>`, pipes escaped.
fn cell(text: &str) -> String {
    escape_brackets(text.trim())
        .replace('|', "\\|")
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join("<br>"))
        .collect::<Vec<_>>()
        .join("<br><br>")
}

/// A default value as it would be written in the TOML file.
fn toml_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter().map(|(k, v)| format!("{k} = {}", toml_value(v))).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// `MatchConfig` → `match`: the name a nested table's heading gets.
fn snake(definition: &str) -> String {
    let name = definition.strip_suffix("Config").unwrap_or(definition);
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

// ---------------------------------------------------------------------------
// The CLI reference: the help of every subcommand of the built binary.

#[test]
fn cli_reference_holds_the_help_of_every_subcommand() {
    let mut body = String::new();
    let mut seen = Vec::new();
    help_tree(&mut Vec::new(), &mut body, &mut seen);
    assert!(seen.len() > 10, "found only {seen:?} in `lessor --help`");
    let page_path = root().join("docs/src/reference/cli.md");
    let page = read(&page_path);
    check_generated(&page_path, &with_section(&page, "cli", &body));
}

/// Appends the help of `lessor <path>` and then of each of its subcommands.
fn help_tree(path: &mut Vec<String>, out: &mut String, seen: &mut Vec<String>) {
    let help = lessor_help(path);
    let name = std::iter::once("lessor".to_owned()).chain(path.iter().cloned()).collect::<Vec<_>>().join(" ");
    out.push_str(&format!("\n### `{name}`\n\n```text\n{}\n```\n", help.trim_end()));
    seen.push(name);
    for sub in subcommands(&help) {
        path.push(sub);
        help_tree(path, out, seen);
        path.pop();
    }
}

/// `lessor <path> --help`, with nothing from the environment that would
/// show in it (an `env = "LESSOR_…"` argument prints the variable's value).
fn lessor_help(path: &[String]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lessor"));
    command.args(path).arg("--help");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LESSOR_") {
            command.env_remove(&key);
        }
    }
    command.env("COLUMNS", "100").env("TERM", "dumb").env("NO_COLOR", "1");
    let output = command.output().expect("run lessor --help");
    assert!(
        output.status.success(),
        "lessor {} --help failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The names under `Commands:` in clap's help, without clap's own `help`.
fn subcommands(help: &str) -> Vec<String> {
    let Some(start) = help.lines().position(|l| l.trim_end() == "Commands:") else {
        return Vec::new();
    };
    help.lines()
        .skip(start + 1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// The socket API reference against the routers.

#[test]
fn api_reference_lists_every_route_and_no_other() {
    let code = routes_in_code();
    assert!(code.contains_key("/v1/creds/{role}"), "found no route in src/: {code:?}");
    let page = read(&root().join("docs/src/reference/api.md"));
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in section(&page, "routes").lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let methods = code_spans(cells[0]).into_iter().collect();
        let route = code_spans(cells[1]).into_iter().next().unwrap_or_else(|| panic!("no route in {row}"));
        assert!(documented.insert(route.clone(), methods).is_none(), "{route} is listed twice");
    }
    let mut problems = Vec::new();
    for (route, methods) in &code {
        match documented.get(route) {
            None => problems.push(format!("{route} ({}) is not in the table", join(methods))),
            Some(listed) if listed != methods => {
                problems.push(format!("{route}: the table says {}, the code {}", join(listed), join(methods)))
            }
            Some(_) => {}
        }
    }
    for route in documented.keys().filter(|r| !code.contains_key(*r)) {
        problems.push(format!("{route} is in the table but no router registers it"));
    }
    assert!(
        problems.is_empty(),
        "docs/src/reference/api.md's route table and the routers differ:\n  {}",
        problems.join("\n  ")
    );
}

/// Every `.route("PATH", …)` in `src/` (tests aside), with its methods:
/// `get(…)`, `.post(…)`, `on(filter, …)` with `MethodFilter::X` or a `let`
/// binding of them, and `any(…)` as `ANY`.
fn routes_in_code() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut routes = BTreeMap::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "tests.rs")
            || file.components().any(|c| c.as_os_str() == "tests")
        {
            continue;
        }
        let text = strip_comments(&read(&file));
        let filters = method_filters(&text);
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            let call = balanced(&rest[at + ".route".len()..]);
            rest = &rest[at + ".route(".len()..];
            let path = call.split('"').nth(1).expect("a route's path is a string literal").to_owned();
            let after_path = &call[call.find(',').map_or(call.len(), |i| i + 1)..];
            let mut methods = BTreeSet::new();
            for word in words(after_path) {
                let upper = word.to_uppercase();
                match word.as_str() {
                    "get" | "post" | "put" | "delete" | "patch" | "head" | "options" | "any" => {
                        // Only as a call: `get(handler)`, not `secrets::get_thing`.
                        let call = format!("{word}(");
                        if after_path.contains(&call) {
                            methods.insert(upper);
                        }
                    }
                    _ => {
                        if let Some(bound) = filters.get(&word) {
                            methods.extend(bound.iter().cloned());
                        }
                    }
                }
            }
            for filter in method_filter_names(after_path) {
                methods.insert(filter);
            }
            assert!(!methods.is_empty(), "no method found for route {path} in {}", file.display());
            routes.entry(path).or_insert_with(BTreeSet::new).extend(methods);
        }
    }
    routes
}

/// `let update = MethodFilter::PUT.or(MethodFilter::POST);` → update: PUT, POST.
fn method_filters(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut filters = BTreeMap::new();
    for line in text.lines() {
        let Some(at) = line.find("let ") else { continue };
        if let Some((name, value)) = line[at + "let ".len()..].split_once('=') {
            let names = method_filter_names(value);
            if !names.is_empty() {
                filters.insert(name.trim().trim_start_matches("mut ").to_owned(), names);
            }
        }
    }
    filters
}

fn method_filter_names(text: &str) -> BTreeSet<String> {
    text.split("MethodFilter::")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_alphabetic()).next())
        .map(str::to_owned)
        .collect()
}

/// From an opening `(`, the text up to its matching `)`, strings skipped.
fn balanced(text: &str) -> &str {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=i];
                }
            }
            _ => {}
        }
    }
    text
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Drops `//` comments (outside strings), so a commented-out route or
/// metric does not count.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                match bytes[i] {
                    b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                    b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
                    _ => {}
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The contents of the `` `…` `` spans of a piece of markdown.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------
// Metrics: the reference page, the dashboard and the alert rules.

/// Every metric `src/` defines: the names in `src/metrics.rs` and any
/// `counter!`/`gauge!`/`histogram!` given a literal `lessor_…` name
/// elsewhere.
fn metrics_in_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = strip_comments(&read(&file));
        let is_metrics = file.ends_with("src/metrics.rs");
        for line in text.lines() {
            let defines = (is_metrics && line.contains("const ") && line.contains(": &str"))
                || ["counter!(", "gauge!(", "histogram!("].iter().any(|m| line.contains(m));
            if !defines {
                continue;
            }
            for literal in line.split('"').skip(1).step_by(2) {
                if literal.starts_with("lessor_")
                    && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    names.insert(literal.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn metrics_reference_lists_every_metric_and_no_other() {
    let code = metrics_in_code();
    assert!(code.contains("lessor_leases_issued_total"), "found no metric in src/: {code:?}");
    let page = read(&root().join("docs/src/reference/metrics.md"));
    let documented: BTreeSet<String> = page
        .lines()
        .filter(|l| l.starts_with("| `lessor_"))
        .filter_map(|l| code_spans(l).into_iter().next())
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/src/reference/metrics.md and src/ differ: not in the table {missing:?}; in the table but not defined {unknown:?}"
    );
}

/// The metric names a PromQL expression reads (a histogram's `_bucket`,
/// `_sum` and `_count` series count as the histogram).
fn metrics_in_query(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("lessor_") {
        let before = rest[..at].chars().last();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn grafana_dashboard_is_json_and_queries_only_real_metrics() {
    let path = root().join("docs/src/operations/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    let code = metrics_in_code();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "only {} queries in the dashboard", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metrics_in_query(expr);
        assert!(!names.is_empty(), "a dashboard query reads no lessor metric: {expr}");
        for name in names {
            assert!(code.contains(&name), "the dashboard queries {name}, which src/ does not define: {expr}");
            used.insert(name);
        }
    }
    // Every panel has a place on the grid and a data source.
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["gridPos"].is_object(), "a panel without gridPos: {panel}");
        if panel["type"] != "row" {
            assert!(panel["datasource"].is_object(), "a panel without a datasource: {}", panel["title"]);
        }
    }
    let unused: Vec<_> = code.difference(&used).collect();
    eprintln!("metrics no dashboard panel shows: {unused:?}");
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn alert_rules_are_yaml_and_query_only_real_metrics() {
    let path = root().join("docs/src/operations/alerts.yml");
    // YAML is read by Python's `yaml` (PyYAML), which the venv of
    // scripts/test has (moto needs it) and Debian's python3-yaml provides:
    // no YAML crate is added to the build for one test.
    let python = std::env::var("LESSOR_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&python)
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("run {python} (set LESSOR_TEST_PYTHON, or run through scripts/test): {e}")
        });
    assert!(
        output.status.success(),
        "{} is not valid YAML, or {python} has no yaml module (run through scripts/test): {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let rules: Value = serde_json::from_slice(&output.stdout).expect("the rules as JSON");
    let code = metrics_in_code();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups: a list") {
        assert!(group["name"].is_string(), "a group without a name");
        for rule in group["rules"].as_array().expect("rules: a list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert with a name");
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert}: no expr"));
            let names = metrics_in_query(expr);
            assert!(!names.is_empty(), "{alert} reads no lessor metric");
            for name in names {
                assert!(code.contains(&name), "{alert} queries {name}, which src/ does not define");
            }
            assert!(rule["labels"]["severity"].is_string(), "{alert}: no severity label");
            assert!(rule["annotations"]["summary"].is_string(), "{alert}: no summary");
        }
    }
    // What the issue asks the rules to watch.
    for needed in ["LessorIrrevocableLeases", "LessorRevocationLag", "LessorStoreUnavailable"] {
        assert!(alerts.contains(needed), "no alert {needed} in {}", path.display());
    }
}

// ---------------------------------------------------------------------------
// Links: every relative link of the book and the README resolves.

#[test]
fn every_internal_link_resolves_and_every_chapter_is_in_the_summary() {
    let src = root().join("docs/src");
    let mut pages = Vec::new();
    markdown_files(&src, &mut pages);
    let summary = read(&src.join("SUMMARY.md"));
    let in_summary: BTreeSet<String> =
        links(&summary).into_iter().map(|l| l.split('#').next().unwrap_or("").to_owned()).collect();
    let mut problems = Vec::new();
    for page in &pages {
        let relative = page.strip_prefix(&src).expect("under docs/src").to_string_lossy().into_owned();
        if relative != "SUMMARY.md" && !in_summary.contains(&relative) {
            problems.push(format!("docs/src/{relative} is not in SUMMARY.md"));
        }
    }
    pages.push(root().join("README.md"));
    let mut ids_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for page in &pages {
        let text = expand_includes(page, &read(page));
        let dir = page.parent().expect("a folder");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = match link.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() { page.clone() } else { normalize(&dir.join(file)) };
            let shown = page.strip_prefix(root()).unwrap_or(page).display().to_string();
            if !target.is_file() {
                problems.push(format!("{shown}: {link}: no such file"));
                continue;
            }
            if page.starts_with(&src) && !target.starts_with(&src) {
                problems.push(format!("{shown}: {link}: leaves the book (the built book would not have it)"));
            }
            if let Some(fragment) = fragment {
                if target.extension().is_some_and(|e| e == "md") {
                    let ids = ids_cache
                        .entry(target.clone())
                        .or_insert_with(|| heading_ids(&expand_includes(&target, &read(&target))));
                    if !ids.contains(fragment) {
                        problems.push(format!("{shown}: {link}: no heading with id {fragment:?}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "broken links in the manual:\n  {}", problems.join("\n  "));
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> =
        fs::read_dir(dir).expect("read docs/src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// mdBook's `{{#include FILE}}` and `{{#include FILE:FROM:TO}}` (lines,
/// 1-based, either end open), so that included headings count.
fn expand_includes(page: &Path, text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let include = line.trim().strip_prefix("{{#include ").and_then(|l| l.strip_suffix("}}"));
        match include {
            // A file included inside a code block is code: no headings.
            Some(spec) if !in_code => {
                let mut parts = spec.trim().split(':');
                let file = parts.next().expect("a file");
                let from: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1);
                let to: Option<usize> = parts.next().and_then(|p| p.parse().ok());
                let path = normalize(&page.parent().expect("a folder").join(file));
                let included = read(&path);
                for (n, line) in included.lines().enumerate() {
                    if n + 1 >= from && to.is_none_or(|to| n < to) {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The markdown of `text` without fenced code blocks and inline code.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || line.starts_with("    ") && !line.trim_start().starts_with(['-', '|', '*']) {
            continue;
        }
        // Inline code spans: drop every other backtick-delimited piece.
        let pieces: Vec<&str> = line.split('`').collect();
        if pieces.len() % 2 == 1 {
            out.extend(pieces.iter().step_by(2).copied());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The targets of the `[text](target)` links of a markdown text.
fn links(text: &str) -> Vec<String> {
    let text = prose(text);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = tail[..end].split_whitespace().next().unwrap_or("").to_owned();
        if !target.is_empty() {
            out.push(target);
        }
        rest = &tail[end..];
    }
    out
}

/// The ids mdBook gives the headings of a page: the heading's text,
/// lowercased, spaces as `-`, anything but letters, digits, `_` and `-`
/// dropped, and `-1`, `-2` … after a repeated one.
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        let Some(title) = line[hashes..].strip_prefix(' ') else { continue };
        // Link text stays, link targets go: `[a](b)` → `a`.
        let mut plain = String::new();
        let mut rest = title;
        while let Some(at) = rest.find("](") {
            plain.push_str(&rest[..at]);
            rest = rest[at..].find(')').map_or("", |end| &rest[at + end + 1..]);
        }
        plain.push_str(rest);
        let id: String = plain
            .trim()
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_lowercase().next().unwrap_or(c))
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let mut unique = id.clone();
        let mut n = 1;
        while ids.contains(&unique) {
            unique = format!("{id}-{n}");
            n += 1;
        }
        ids.insert(unique);
    }
    ids
}
