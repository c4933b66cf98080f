//! `lessor.toml(5)`, rendered from the config's JSON Schema
//! ([`crate::config::json_schema`], committed as
//! `schemas/config.schema.json`). The schema's descriptions are the doc
//! comments of the config types, so the page documents exactly the keys
//! the parser accepts, in the words of the code; a key added to the config
//! is on the page at the next build.
//!
//! Layout: one section per top-level key, headed the way the key is
//! written in TOML (`[server]`, `[roles.NAME]`, `[[policies]]`), with one
//! tagged paragraph per key of its table: the key, its type, its default,
//! its description; the values of an enumeration and the keys of a nested
//! table (a policy's `match`) indented below it.

use serde_json::{Map, Value};

use roff::{bold, italic, roman, Inline, Roff};

/// The sections in reading order; top-level keys not named here follow
/// in the schema's order, so none is ever left out.
const ORDER: &[&str] =
    &["server", "connections", "roles", "static_accounts", "policies", "credentials", "plugins"];

/// The page's roff source.
pub(super) fn render(schema: &Value) -> String {
    let empty = Map::new();
    let definitions = schema["definitions"].as_object().unwrap_or(&empty);
    let page = Page { definitions };
    let mut roff = Roff::new();
    let source = format!("lessor {}", env!("CARGO_PKG_VERSION"));
    roff.control("TH", ["lessor.toml", "5", super::man::NO_DATE, &source, super::man::MANUAL]);
    roff.control("SH", ["NAME"]);
    roff.text([roman("lessor.toml - configuration file of the lessor credential broker")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([italic("/etc/lessor/lessor.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    let mut intro = schema["description"].as_str().unwrap_or_default().to_string();
    intro.push_str(
        " It is TOML, read by `lessor serve --config FILE`. A key the daemon does not know is an \
         error, not a warning, and so is a value out of range: `lessor config check FILE` reports \
         every problem, one per line, without starting anything.",
    );
    page.paragraphs(&mut roff, &intro);
    page.paragraphs(
        &mut roff,
        "Durations are written `90s`, `15m`, `1h30m` or `2d`. Keys marked [postgres], [mysql], \
         [aws] or [redis] belong to the plugin of that name and are accepted only in its \
         connections and roles. This page is made from the config's JSON Schema, which \
         `lessor config schema` prints (for editors that complete and check TOML against one).",
    );
    let empty = Map::new();
    let top = schema["properties"].as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = ORDER.iter().filter_map(|k| top.get_key_value(*k).map(|(k, _)| k)).collect();
    keys.extend(top.keys().filter(|k| !ORDER.contains(&k.as_str())));
    for key in keys {
        page.section(&mut roff, key, &top[key.as_str()]);
    }
    roff.control("SH", ["FILES"]);
    roff.control("TP", []).text([italic("/etc/lessor/lessor.toml")]);
    roff.text([roman("The file the packaged lessor.service reads; the package ships it commented out.")]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "lessor(1), lessor-serve(1), lessor-config-check(1), lessor-config-schema(1), systemd.exec(5)",
    )]);
    roff.render()
}

struct Page<'a> {
    definitions: &'a Map<String, Value>,
}

impl Page<'_> {
    /// One top-level key: its heading as written in TOML, its description,
    /// then the keys of its table.
    fn section(&self, roff: &mut Roff, key: &str, schema: &Value) {
        let (heading, table) =
            if let Some(table) = schema.get("additionalProperties").and_then(|s| self.table(s)) {
                (format!("[{key}.NAME]"), Some(table))
            } else if let Some(table) = schema.get("items").and_then(|s| self.table(s)) {
                (format!("[[{key}]]"), Some(table))
            } else if let Some(table) = self.table(schema) {
                (format!("[{key}]"), Some(table))
            } else {
                (key.to_string(), None)
            };
        roff.control("SH", [heading.as_str()]);
        self.paragraphs(roff, description(schema));
        match table {
            Some(table) => {
                // The table's own description, unless it only repeats the
                // heading or the key's description.
                let own = description(table);
                let bare = own.replace('`', "");
                let bare = bare.trim().trim_end_matches('.');
                if !bare.is_empty() && bare != heading && own != description(schema) {
                    self.paragraphs(roff, own);
                }
                self.keys(roff, table, 0);
            }
            None => self.key(roff, key, schema, false, 0),
        }
    }

    /// The keys of a table, required ones first.
    fn keys(&self, roff: &mut Roff, table: &Value, depth: usize) {
        let empty = Map::new();
        let properties = table["properties"].as_object().unwrap_or(&empty);
        let required: Vec<&str> = table["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut names: Vec<&String> = properties.keys().collect();
        names.sort_by_key(|name| (!required.contains(&name.as_str()), name.as_str()));
        for name in names {
            self.key(roff, name, &properties[name.as_str()], required.contains(&name.as_str()), depth);
        }
    }

    /// One key: name, type, default, description, then the values of its
    /// enumeration or the keys of its nested table.
    fn key(&self, roff: &mut Roff, name: &str, schema: &Value, required: bool, depth: usize) {
        let mut about = format!(" ({}", self.type_name(schema));
        if required {
            about.push_str(", required");
        }
        if let Some(default) = schema.get("default").and_then(default_text) {
            about.push_str(&format!(", default {default}"));
        }
        about.push(')');
        roff.control("TP", []);
        roff.text([bold(name), roman(about)]);
        self.paragraphs_in(roff, description(schema), true);
        let target = self.resolve(schema);
        let values = self.values(target);
        if !values.is_empty() {
            roff.control("RS", []);
            for (value, meaning) in values {
                roff.control("TP", []);
                roff.text([bold(value)]);
                self.paragraphs_in(roff, meaning, true);
            }
            roff.control("RE", []);
        } else if let Some(table) = self.table(schema).filter(|_| depth < 2) {
            roff.control("RS", []);
            self.keys(roff, table, depth + 1);
            roff.control("RE", []);
        }
    }

    /// The definition behind `$ref`, `allOf: [$ref]` or `anyOf: [$ref, null]`.
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/definitions/")) {
            return self.definitions.get(name).map_or(schema, |d| self.resolve(d));
        }
        for combinator in ["allOf", "anyOf"] {
            if let Some([only]) = non_null(schema.get(combinator)).as_deref() {
                return self.resolve(only);
            }
        }
        schema
    }

    /// The table (an object schema with properties) `schema` stands for.
    fn table<'s>(&'s self, schema: &'s Value) -> Option<&'s Value> {
        let target = self.resolve(schema);
        target.get("properties").is_some_and(Value::is_object).then_some(target)
    }

    /// The values of an enumeration, each with its meaning.
    fn values<'s>(&self, schema: &'s Value) -> Vec<(String, &'s str)> {
        let mut values = Vec::new();
        for variant in schema["oneOf"].as_array().into_iter().flatten() {
            for value in variant["enum"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                values.push((value.to_string(), description(variant)));
            }
        }
        values
    }

    /// A short type: `string`, `duration`, `integer`, `array of string`,
    /// `table of string`, `integer or string or table`.
    fn type_name(&self, schema: &Value) -> String {
        if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/definitions/")) {
            return match self.definitions.get(name) {
                Some(_) if name == "Duration" => "duration".to_string(),
                Some(definition) => self.type_name(definition),
                None => name.to_string(),
            };
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            if let Some(members) = non_null(schema.get(combinator)) {
                let mut names: Vec<String> = Vec::new();
                for name in members.iter().map(|m| self.type_name(m)) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                return names.join(" or ");
            }
        }
        let kinds: Vec<&str> = match &schema["type"] {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).filter(|k| *k != "null").collect(),
            _ if schema.get("enum").is_some() => vec!["string"],
            _ => vec![],
        };
        let names: Vec<String> = kinds
            .into_iter()
            .map(|kind| match kind {
                "array" => match schema.get("items") {
                    Some(items) => format!("array of {}", self.type_name(items)),
                    None => "array".to_string(),
                },
                "object" => match schema.get("additionalProperties").filter(|a| a.is_object()) {
                    Some(values) if schema.get("properties").is_none() => {
                        format!("table of {}", self.type_name(values))
                    }
                    _ => "table".to_string(),
                },
                "number" => "number".to_string(),
                other => other.to_string(),
            })
            .collect();
        if names.is_empty() {
            "value".to_string()
        } else {
            names.join(" or ")
        }
    }

    fn paragraphs(&self, roff: &mut Roff, text: &str) {
        self.paragraphs_in(roff, text, false);
    }

    /// `text`'s paragraphs (blank-line separated), with `code` in bold.
    /// Inside a tagged paragraph (`.TP`), `.sp` separates them without
    /// leaving its indentation.
    fn paragraphs_in(&self, roff: &mut Roff, text: &str, tagged: bool) {
        for (i, paragraph) in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).enumerate() {
            if i > 0 || !tagged {
                roff.control(if tagged { "sp" } else { "PP" }, []);
            }
            roff.text(inlines(&paragraph.replace('\n', " ")));
        }
    }
}

/// The members of a combinator other than `{"type": "null"}`.
fn non_null(members: Option<&Value>) -> Option<Vec<&Value>> {
    let members = members?.as_array()?;
    Some(members.iter().filter(|m| m.get("type").and_then(Value::as_str) != Some("null")).collect())
}

fn description(schema: &Value) -> &str {
    schema["description"].as_str().unwrap_or_default()
}

/// A default worth printing, as it would be written in TOML.
fn default_text(default: &Value) -> Option<String> {
    match default {
        Value::Null => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Object(map) if map.is_empty() => None,
        Value::String(text) => Some(format!("\"{text}\"")),
        other => Some(other.to_string()),
    }
}

/// Text with its `code` spans in bold.
fn inlines(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        render(&serde_json::from_str(&crate::config::json_schema()).unwrap())
    }

    #[test]
    fn every_top_level_key_has_a_section_in_toml_syntax() {
        let page = page();
        for heading in [".SH [server]", ".SH [connections.NAME]", ".SH [roles.NAME]", ".SH [[policies]]"] {
            assert!(page.contains(heading), "no `{heading}` in the page");
        }
    }

    #[test]
    fn keys_carry_type_default_and_description() {
        let page = page();
        assert!(page.contains("\\fBsocket_mode\\fR (string, default \"0660\")"), "{page}");
        assert!(page.contains("\\fBrequest_timeout\\fR (duration, default \"30s\")"), "{page}");
        assert!(page.contains("\\fBconnection\\fR (string, required)"), "{page}");
        // An enumeration lists its values; a nested table its keys.
        assert!(page.contains("\\fBalternating\\fR"), "{page}");
        assert!(page.contains("\\fBsystemd_unit\\fR"), "{page}");
    }

    #[test]
    fn code_spans_are_bold_and_text_cannot_become_a_request() {
        let inl = inlines("a `b` c");
        let mut roff = Roff::new();
        roff.text(inl);
        assert!(roff.to_roff().contains("a \\fBb\\fR c"), "{}", roff.to_roff());
        let mut roff = Roff::new();
        roff.text(inlines(".SH not a heading"));
        assert!(!roff.to_roff().starts_with(".SH"), "{}", roff.to_roff());
    }
}
