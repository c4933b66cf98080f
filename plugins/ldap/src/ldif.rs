//! LDIF change records (RFC 2849) with placeholders in their values: a
//! role's `creation_ldif`, `deletion_ldif` and `rollback_ldif`, as Vault's
//! LDAP secrets engine takes them.
//!
//! The LDIF is parsed once, at load, *before* anything is substituted:
//! records, change types and attribute names come from the operator's text
//! only, and a rendered value can never add a line, a record or an
//! attribute. Each value is rendered on its own: in a DN (and in an
//! attribute that holds DNs, such as `member`) every substituted value is
//! escaped as RFC 4514 says.
//!
//! What is understood: records separated by blank lines, `#` comments,
//! folded lines (a continuation starts with one space), `version: 1`,
//! `attr: value` and `attr:: base64`, `changetype: add | modify | delete`
//! (a record without one adds its entry), and `add:` / `delete:` /
//! `replace:` groups ended by `-` in a modify. `modrdn`, controls and
//! `attr:< url` values are refused.
//!
//! Passwords: a `userPassword: {{.Password}}` line is written as the hash
//! of `password_hash` for an OpenLDAP server, never as the plaintext; with
//! `schema = "ad"`, `unicodePwd: {{.Password}}` is written as AD wants it
//! (the quoted password in UTF-16LE), and Vault's own spelling,
//! `unicodePwd:: {{ printf "\"%s\"" .Password | utf16le | base64 }}`, gives
//! the same bytes. The password may appear in no other attribute, nor in a
//! DN: it would be stored there in clear.

use std::collections::HashSet;

use base64::Engine as _;
use ldap3::Mod;

use crate::password::Schema;
use crate::template::{Field, Template, Values};

/// Which list an LDIF is, for the checks that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Creation,
    Deletion,
    Rollback,
}

/// How a value is turned into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// The rendered template, as text (or base64-decoded for `::`).
    None,
    /// OpenLDAP `userPassword: {{.Password}}`: the hash lessor computed.
    HashedPassword,
    /// AD `unicodePwd: {{.Password}}`: the quoted UTF-16LE password.
    UnicodePwd,
}

#[derive(Debug, Clone)]
struct Value {
    template: Template,
    base64: bool,
    /// Holds DNs: substituted values are RFC 4514-escaped.
    dn: bool,
    special: Special,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModOp {
    Add,
    Delete,
    Replace,
}

#[derive(Debug, Clone)]
struct Modification {
    op: ModOp,
    attr: String,
    values: Vec<Value>,
}

#[derive(Debug, Clone)]
enum Change {
    Add(Vec<(String, Vec<Value>)>),
    Modify(Vec<Modification>),
    Delete,
}

#[derive(Debug, Clone)]
struct Record {
    /// The record's first line, for messages.
    line: usize,
    dn: Value,
    change: Change,
}

/// A parsed LDIF template.
#[derive(Debug, Clone)]
pub struct Ldif {
    records: Vec<Record>,
}

/// What lessor writes for the password: computed only when the LDIF asks.
#[derive(Default, Clone, Copy)]
pub struct Secrets<'a> {
    /// The `userPassword` hash (OpenLDAP).
    pub hashed: Option<&'a str>,
    /// The `unicodePwd` bytes (AD).
    pub unicode_pwd: Option<&'a [u8]>,
}

impl std::fmt::Debug for Secrets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("hashed", &self.hashed.map(|_| "[redacted]"))
            .field("unicode_pwd", &self.unicode_pwd.map(|_| "[redacted]"))
            .finish()
    }
}

/// One LDAP operation, rendered. Its values may hold a password hash, so
/// `Debug` shows the operation and its DN only.
pub enum Op {
    Add { dn: String, attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> },
    Modify { dn: String, mods: Vec<Mod<Vec<u8>>> },
    Delete { dn: String },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Op {
    pub fn dn(&self) -> &str {
        match self {
            Self::Add { dn, .. } | Self::Modify { dn, .. } | Self::Delete { dn } => dn,
        }
    }

    /// `add cn=…`, for messages (never a value).
    pub fn describe(&self) -> String {
        let verb = match self {
            Self::Add { .. } => "add",
            Self::Modify { .. } => "modify",
            Self::Delete { .. } => "delete",
        };
        format!("{verb} {}", self.dn())
    }
}

/// Attributes whose values are DNs: what is substituted into them is
/// escaped as in a `dn:` line.
const DN_ATTRIBUTES: &[&str] = &[
    "member",
    "uniquemember",
    "owner",
    "manager",
    "seealso",
    "roleoccupant",
    "secretary",
    "memberof",
    "distinguishedname",
];

/// Attributes a password placeholder may be written to.
const PASSWORD_ATTRIBUTES: &[&str] = &["userpassword", "unicodepwd"];

impl Ldif {
    /// Parses `source` for `schema`; the error says which record and line.
    pub fn parse(source: &str, schema: Schema, purpose: Purpose) -> Result<Self, String> {
        let lines = unfold(source);
        let mut records = Vec::new();
        let mut block: Vec<(usize, String)> = Vec::new();
        let mut first = true;
        for (number, line) in lines.into_iter().chain([(0, String::new())]) {
            if line.trim().is_empty() {
                if !block.is_empty() {
                    let taken = std::mem::take(&mut block);
                    // `version: 1` may stand alone before the first record.
                    let rest: Vec<_> = if first && taken[0].1.to_ascii_lowercase().starts_with("version:") {
                        check_version(&taken[0])?;
                        taken.into_iter().skip(1).collect()
                    } else {
                        taken
                    };
                    first = false;
                    if !rest.is_empty() {
                        records.push(parse_record(&rest, schema, records.len() + 1)?);
                    }
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            block.push((number, line));
        }
        if records.is_empty() {
            return Err("holds no LDIF record (a record starts with `dn: …`)".into());
        }
        let ldif = Self { records };
        let uses_name = ldif.records.iter().any(|r| r.values().any(|v| v.template.uses(Field::Username)));
        if !uses_name {
            return Err(
                "never uses {{.Username}} (or {{name}}), so it cannot act on the generated user".into()
            );
        }
        if purpose == Purpose::Creation && ldif.first_add().is_none() {
            return Err("adds no entry: the first record with `changetype: add` (or none) is the user's entry, whose DN the credential carries".into());
        }
        if purpose != Purpose::Creation {
            if let Some(r) =
                ldif.records.iter().find(|r| r.values().any(|v| v.template.uses(Field::Password)))
            {
                return Err(format!(
                    "record at line {}: {{{{.Password}}}} is only known to creation_ldif",
                    r.line
                ));
            }
        }
        Ok(ldif)
    }

    fn first_add(&self) -> Option<&Record> {
        self.records.iter().find(|r| matches!(r.change, Change::Add(_)))
    }

    /// Whether rendering needs the `userPassword` hash.
    pub fn needs_hash(&self) -> bool {
        self.records.iter().any(|r| r.values().any(|v| v.special == Special::HashedPassword))
    }

    /// Whether rendering needs the `unicodePwd` bytes.
    pub fn needs_unicode_pwd(&self) -> bool {
        self.records.iter().any(|r| r.values().any(|v| v.special == Special::UnicodePwd))
    }

    /// The DN of the user's entry: the first record that adds one.
    pub fn entry_dn(&self, values: &Values<'_>) -> Option<Result<String, String>> {
        self.first_add().map(|r| render_dn(&r.dn, values, r.line))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The operations, with `values` and `secrets` substituted.
    pub fn render(&self, values: &Values<'_>, secrets: &Secrets<'_>) -> Result<Vec<Op>, String> {
        self.records.iter().map(|r| r.render(values, secrets)).collect()
    }
}

impl Record {
    fn values(&self) -> impl Iterator<Item = &Value> {
        let own: Box<dyn Iterator<Item = &Value>> = match &self.change {
            Change::Add(attrs) => Box::new(attrs.iter().flat_map(|(_, v)| v.iter())),
            Change::Modify(mods) => Box::new(mods.iter().flat_map(|m| m.values.iter())),
            Change::Delete => Box::new(std::iter::empty()),
        };
        std::iter::once(&self.dn).chain(own)
    }

    fn render(&self, values: &Values<'_>, secrets: &Secrets<'_>) -> Result<Op, String> {
        let dn = render_dn(&self.dn, values, self.line)?;
        let value = |v: &Value| render_value(v, values, secrets, self.line);
        Ok(match &self.change {
            Change::Add(attrs) => Op::Add {
                dn,
                attrs: attrs
                    .iter()
                    .map(|(name, vs)| {
                        Ok((name.clone().into_bytes(), vs.iter().map(value).collect::<Result<_, _>>()?))
                    })
                    .collect::<Result<_, String>>()?,
            },
            Change::Modify(mods) => Op::Modify {
                dn,
                mods: mods
                    .iter()
                    .map(|m| {
                        let name = m.attr.clone().into_bytes();
                        let set: HashSet<Vec<u8>> = m.values.iter().map(value).collect::<Result<_, _>>()?;
                        Ok(match m.op {
                            ModOp::Add => Mod::Add(name, set),
                            ModOp::Delete => Mod::Delete(name, set),
                            ModOp::Replace => Mod::Replace(name, set),
                        })
                    })
                    .collect::<Result<_, String>>()?,
            },
            Change::Delete => Op::Delete { dn },
        })
    }
}

fn render_dn(dn: &Value, values: &Values<'_>, line: usize) -> Result<String, String> {
    let bytes = render_value(dn, values, &Secrets::default(), line)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("record at line {line}: the DN is not UTF-8"))?;
    check_dn(&text).map_err(|e| format!("record at line {line}: the DN {text:?} {e}"))?;
    Ok(text)
}

fn render_value(
    v: &Value,
    values: &Values<'_>,
    secrets: &Secrets<'_>,
    line: usize,
) -> Result<Vec<u8>, String> {
    match v.special {
        Special::HashedPassword => {
            return secrets
                .hashed
                .map(|h| h.as_bytes().to_vec())
                .ok_or_else(|| "no password hash to write".into())
        }
        Special::UnicodePwd => {
            return secrets.unicode_pwd.map(<[u8]>::to_vec).ok_or_else(|| "no unicodePwd to write".into())
        }
        Special::None => {}
    }
    let escape: fn(&[u8]) -> Vec<u8> = if v.dn { escape_dn_value } else { <[u8]>::to_vec };
    let rendered = v.template.render(values, escape);
    if v.base64 {
        let text: Vec<u8> = rendered.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
        // The decoded value may be a password: the message never quotes it.
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| format!("record at line {line}: a `::` value is not valid base64 once rendered"))
    } else {
        Ok(rendered)
    }
}

fn escape_dn_value(raw: &[u8]) -> Vec<u8> {
    ldap3::dn_escape(String::from_utf8_lossy(raw)).into_owned().into_bytes()
}

/// Joins folded lines (RFC 2849: a line starting with one space continues
/// the previous one); each logical line keeps its first line's number.
fn unfold(source: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        match (raw.strip_prefix(' '), out.last_mut()) {
            (Some(rest), Some((_, last))) if !last.is_empty() => last.push_str(rest),
            _ => out.push((i + 1, raw.to_string())),
        }
    }
    out
}

fn check_version((line, text): &(usize, String)) -> Result<(), String> {
    match text.split_once(':').map(|(_, v)| v.trim()) {
        Some("1") => Ok(()),
        _ => Err(format!("line {line}: only `version: 1` is known")),
    }
}

/// `name: value` → (name, value, base64?).
fn split_line(line: usize, text: &str) -> Result<(&str, &str, bool), String> {
    let (name, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("line {line}: expected `attribute: value`, found {:?}", shorten(text)))?;
    if !is_attribute(name) {
        return Err(format!("line {line}: {:?} is not an attribute name", shorten(name)));
    }
    if let Some(b64) = rest.strip_prefix(':') {
        return Ok((name, b64.trim(), true));
    }
    if rest.starts_with('<') {
        return Err(format!("line {line}: `{name}:<` (a value read from a URL) is not supported"));
    }
    Ok((name, rest.trim_start_matches(' '), false))
}

/// Text of the operator's LDIF for a message, cut short (it is not a secret
/// in itself, but a line may be long).
fn shorten(text: &str) -> String {
    text.chars().take(60).collect()
}

pub(crate) fn is_attribute(name: &str) -> bool {
    let mut parts = name.split(';');
    let base = parts.next().unwrap_or_default();
    let descr = base.starts_with(|c: char| c.is_ascii_alphabetic())
        && base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid =
        !base.is_empty() && base.split('.').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    (descr || oid) && parts.all(|o| !o.is_empty() && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

fn base_name(attr: &str) -> String {
    attr.split(';').next().unwrap_or_default().to_ascii_lowercase()
}

fn parse_value(line: usize, attr: &str, text: &str, base64: bool, schema: Schema) -> Result<Value, String> {
    let template = Template::parse(text).map_err(|e| format!("line {line}: {e}"))?;
    let name = base_name(attr);
    if base64 && template.segments().iter().all(|s| matches!(s, crate::template::Segment::Text(_))) {
        base64::engine::general_purpose::STANDARD
            .decode(text.split_whitespace().collect::<String>())
            .map_err(|_| format!("line {line}: the `{attr}::` value is not valid base64"))?;
    }
    let mut special = Special::None;
    if template.uses(Field::Password) {
        if !PASSWORD_ATTRIBUTES.contains(&name.as_str()) {
            return Err(format!(
                "line {line}: {{{{.Password}}}} in `{attr}` would be stored there in clear; it belongs in userPassword (or unicodePwd for AD)"
            ));
        }
        let bare = !base64 && template.only_action().is_some_and(|a| a.is_bare());
        match (schema, name.as_str()) {
            (Schema::OpenLdap, "userpassword") if bare => special = Special::HashedPassword,
            (Schema::OpenLdap, "userpassword") => {
                return Err(format!(
                    "line {line}: write `{attr}: {{{{.Password}}}}` alone: lessor sends the password_hash of it, never the plaintext"
                ))
            }
            (Schema::Ad, "unicodepwd") if bare => special = Special::UnicodePwd,
            _ => {}
        }
    }
    Ok(Value { template, base64, dn: DN_ATTRIBUTES.contains(&name.as_str()), special })
}

fn parse_record(lines: &[(usize, String)], schema: Schema, index: usize) -> Result<Record, String> {
    let (first_line, first) = &lines[0];
    let (name, text, base64) = split_line(*first_line, first)?;
    if !name.eq_ignore_ascii_case("dn") {
        return Err(format!("record {index} (line {first_line}): starts with `{name}:`, not `dn:`"));
    }
    let mut dn = parse_value(*first_line, "dn", text, base64, schema)?;
    dn.dn = true;
    if dn.template.uses(Field::Password) {
        return Err(format!("line {first_line}: a DN may not hold the password"));
    }
    let mut rest = &lines[1..];
    if let Some((line, text)) = rest.first() {
        if text.to_ascii_lowercase().starts_with("control:") {
            return Err(format!("line {line}: LDIF controls are not supported"));
        }
    }
    let mut changetype = "add".to_string();
    if let Some((line, text)) = rest.first() {
        let (name, value, _) = split_line(*line, text)?;
        if name.eq_ignore_ascii_case("changetype") {
            changetype = value.trim().to_ascii_lowercase();
            rest = &rest[1..];
        }
    }
    let change = match changetype.as_str() {
        "add" => {
            let mut attrs: Vec<(String, Vec<Value>)> = Vec::new();
            for (line, text) in rest {
                let (name, value, base64) = split_line(*line, text)?;
                let value = parse_value(*line, name, value, base64, schema)?;
                match attrs.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some((_, values)) => values.push(value),
                    None => attrs.push((name.to_string(), vec![value])),
                }
            }
            if attrs.is_empty() {
                return Err(format!("record {index} (line {first_line}): an added entry needs attributes"));
            }
            Change::Add(attrs)
        }
        "delete" => {
            if let Some((line, _)) = rest.first() {
                return Err(format!("line {line}: a `changetype: delete` record has no further lines"));
            }
            Change::Delete
        }
        "modify" => Change::Modify(parse_mods(rest, schema)?),
        "modrdn" | "moddn" => {
            return Err(format!(
                "record {index} (line {first_line}): changetype {changetype} is not supported"
            ))
        }
        other => {
            return Err(format!(
                "record {index} (line {first_line}): unknown changetype {other:?} (add, modify or delete)"
            ))
        }
    };
    Ok(Record { line: *first_line, dn, change })
}

fn parse_mods(lines: &[(usize, String)], schema: Schema) -> Result<Vec<Modification>, String> {
    let mut mods = Vec::new();
    let mut current: Option<Modification> = None;
    for (line, text) in lines {
        if text.trim_end() == "-" {
            let done = current
                .take()
                .ok_or_else(|| format!("line {line}: `-` without an add:, delete: or replace:"))?;
            mods.push(done);
            continue;
        }
        let (name, value, base64) = split_line(*line, text)?;
        match &mut current {
            None => {
                let op = match name.to_ascii_lowercase().as_str() {
                    "add" => ModOp::Add,
                    "delete" => ModOp::Delete,
                    "replace" => ModOp::Replace,
                    other => {
                        return Err(format!(
                            "line {line}: expected add:, delete: or replace:, found `{other}:`"
                        ))
                    }
                };
                let attr = value.trim();
                if !is_attribute(attr) {
                    return Err(format!("line {line}: {:?} is not an attribute name", shorten(attr)));
                }
                current = Some(Modification { op, attr: attr.to_string(), values: Vec::new() });
            }
            Some(m) => {
                if !name.eq_ignore_ascii_case(&m.attr) {
                    return Err(format!(
                        "line {line}: `{name}:` inside the change of `{}` (end each change with a line `-`)",
                        m.attr
                    ));
                }
                m.values.push(parse_value(*line, name, value, base64, schema)?);
            }
        }
    }
    // The last `-` is often left out; take the change as ended.
    if let Some(m) = current {
        mods.push(m);
    }
    if mods.is_empty() {
        return Err("a `changetype: modify` record changes nothing".into());
    }
    for m in &mods {
        if m.op == ModOp::Add && m.values.is_empty() {
            return Err(format!("`add: {}` gives no value", m.attr));
        }
    }
    Ok(mods)
}

/// A DN as RFC 4514 writes one: RDNs separated by `,`, each one or more
/// `type=value` joined by `+`, with `\` escapes.
pub fn check_dn(dn: &str) -> Result<(), String> {
    if dn.trim().is_empty() {
        return Err("is empty".into());
    }
    let mut rdns = vec![Vec::new()];
    let mut ava = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                ava.push(c);
                ava.push(chars.next().ok_or("ends with a lone backslash")?);
            }
            ',' | ';' => {
                rdns.last_mut().unwrap().push(std::mem::take(&mut ava));
                rdns.push(Vec::new());
            }
            '+' => rdns.last_mut().unwrap().push(std::mem::take(&mut ava)),
            _ => ava.push(c),
        }
    }
    rdns.last_mut().unwrap().push(ava);
    for ava in rdns.iter().flatten() {
        let (kind, value) =
            ava.split_once('=').ok_or_else(|| format!("has {:?}, not type=value", ava.trim()))?;
        if !is_attribute(kind.trim()) {
            return Err(format!("has {:?}, not an attribute type", kind.trim()));
        }
        if value.trim().is_empty() {
            return Err(format!("gives {} no value", kind.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
