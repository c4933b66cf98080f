//! Placeholders in LDIF values, in both spellings a role may carry:
//! Vault's Go-template actions (`{{.Username}}`, `{{.Password}}`,
//! `{{.RoleName}}`, `{{.IssueTime}}`, … with the pipelines Vault's AD
//! examples use, `{{ printf "\"%s\"" .Password | utf16le | base64 }}`) and
//! lessor's own (`{{name}}`, `{{username}}`, `{{password}}`,
//! `{{expiration}}`), so a Vault role's LDIF carries over unchanged.
//!
//! Only that subset of Go's template language is understood: one field,
//! then functions applied in turn. Anything else is refused when the role
//! is loaded, rather than sent to the directory half-rendered.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};

/// A value an action can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `.Username`, `name`, `username`: the generated username.
    Username,
    /// `.Password`, `password`: the generated password.
    Password,
    /// `.RoleName`: the role's name.
    RoleName,
    /// `.DisplayName`: Vault's token display name; lessor has none and
    /// renders the role's name.
    DisplayName,
    /// `.IssueTime`: RFC 3339.
    IssueTime,
    /// `.IssueTimeSeconds`: Unix seconds.
    IssueTimeSeconds,
    /// `.ExpirationTime`, `expiration`: RFC 3339.
    ExpirationTime,
    /// `.ExpirationTimeSeconds`: Unix seconds.
    ExpirationTimeSeconds,
}

/// A function of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Func {
    /// The text as UTF-16, little-endian (what AD's `unicodePwd` takes).
    Utf16le,
    /// Standard base64 with padding (for `attr:: …` lines).
    Base64,
    Lowercase,
    Uppercase,
    /// `printf "…%s…"`: the value in the format's one `%s`.
    Printf(String),
}

/// One `{{ … }}`: a field, then functions applied left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub field: Field,
    funcs: Vec<Func>,
}

impl Action {
    /// Whether the action is the field alone, with no function applied.
    pub fn is_bare(&self) -> bool {
        self.funcs.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Action(Action),
}

/// A parsed value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub username: &'a str,
    /// `None` outside creation: a template using it is refused at load.
    pub password: Option<&'a str>,
    pub role: &'a str,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Template {
    /// Parses `source`; the error names the action at fault.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = find_close(after).ok_or_else(|| "unclosed `{{`".to_string())?;
            segments.push(Segment::Action(parse_action(&after[..end])?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Self { segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether any action starts from `field`.
    pub fn uses(&self, field: Field) -> bool {
        self.actions().any(|a| a.field == field)
    }

    /// The template's one action, when it is nothing else (`{{.Password}}`).
    pub fn only_action(&self) -> Option<&Action> {
        match self.segments.as_slice() {
            [Segment::Action(a)] => Some(a),
            _ => None,
        }
    }

    fn actions(&self) -> impl Iterator<Item = &Action> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Action(a) => Some(a),
            Segment::Text(_) => None,
        })
    }

    /// Renders the template; `escape` is applied to each action's output
    /// (RFC 4514 escaping in a DN), never to the literal text.
    pub fn render(&self, values: &Values<'_>, escape: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(t) => out.extend_from_slice(t.as_bytes()),
                Segment::Action(a) => out.extend(escape(&a.render(values))),
            }
        }
        out
    }
}

impl Action {
    pub fn render(&self, values: &Values<'_>) -> Vec<u8> {
        let seconds = |t: DateTime<Utc>| t.timestamp().to_string();
        let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut value = match self.field {
            Field::Username => values.username.to_string(),
            Field::Password => values.password.unwrap_or_default().to_string(),
            Field::RoleName | Field::DisplayName => values.role.to_string(),
            Field::IssueTime => rfc3339(values.issued_at),
            Field::IssueTimeSeconds => seconds(values.issued_at),
            Field::ExpirationTime => rfc3339(values.expires_at),
            Field::ExpirationTimeSeconds => seconds(values.expires_at),
        }
        .into_bytes();
        for func in &self.funcs {
            value = match func {
                Func::Utf16le => {
                    String::from_utf8_lossy(&value).encode_utf16().flat_map(u16::to_le_bytes).collect()
                }
                Func::Base64 => base64::engine::general_purpose::STANDARD.encode(&value).into_bytes(),
                Func::Lowercase => value.to_ascii_lowercase(),
                Func::Uppercase => value.to_ascii_uppercase(),
                Func::Printf(format) => {
                    let (before, after) = format.split_once("%s").expect("checked at parse");
                    [before.as_bytes(), &value, after.as_bytes()].concat()
                }
            };
        }
        value
    }
}

/// The `}}` closing an action, skipping any inside a quoted string.
fn find_close(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (Some(b'"'), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, c @ (b'"' | b'`')) => quote = Some(c),
            (None, b'}') if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

const KNOWN: &str = "{{.Username}}, {{.Password}}, {{.RoleName}}, {{.DisplayName}}, {{.IssueTime}}, \
    {{.IssueTimeSeconds}}, {{.ExpirationTime}}, {{.ExpirationTimeSeconds}}, or lessor's {{name}}, \
    {{username}}, {{password}}, {{expiration}}; functions utf16le, base64, lowercase, uppercase, \
    printf \"…%s…\"";

fn parse_action(inner: &str) -> Result<Action, String> {
    let shown = format!("{{{{{inner}}}}}");
    if inner.starts_with('-') || inner.ends_with('-') {
        return Err(format!("`{shown}`: whitespace trimming ({{{{- … -}}}}) is not supported"));
    }
    let commands = split_pipeline(inner).map_err(|e| format!("`{shown}`: {e}"))?;
    let mut field = None;
    let mut funcs = Vec::new();
    for (i, words) in commands.iter().enumerate() {
        let (func, args) = match words.as_slice() {
            [] => return Err(format!("`{shown}`: an empty command in the pipeline")),
            [first, args @ ..] => (first, args),
        };
        if i == 0 {
            if let Some(f) = parse_field(func) {
                if !args.is_empty() {
                    return Err(format!("`{shown}`: a field takes no arguments"));
                }
                field = Some(f);
                continue;
            }
            // `printf "fmt" .Field` as the first command.
            if func == "printf" {
                let [format, arg] = args else {
                    return Err(format!("`{shown}`: printf takes a format and one field here"));
                };
                field = Some(
                    parse_field(arg)
                        .ok_or_else(|| format!("`{shown}`: unknown field {arg}; known: {KNOWN}"))?,
                );
                funcs.push(printf(format).map_err(|e| format!("`{shown}`: {e}"))?);
                continue;
            }
            return Err(format!("`{shown}` does not start with a field; known: {KNOWN}"));
        }
        let parsed = match (func.as_str(), args) {
            ("utf16le", []) => Func::Utf16le,
            ("base64", []) => Func::Base64,
            ("lowercase", []) => Func::Lowercase,
            ("uppercase", []) => Func::Uppercase,
            ("printf", [format]) => printf(format).map_err(|e| format!("`{shown}`: {e}"))?,
            _ => return Err(format!("`{shown}`: unknown function `{}`; known: {KNOWN}", words.join(" "))),
        };
        funcs.push(parsed);
    }
    Ok(Action { field: field.expect("a pipeline has a first command"), funcs })
}

fn parse_field(word: &str) -> Option<Field> {
    Some(match word {
        ".Username" | "name" | "username" => Field::Username,
        ".Password" | "password" => Field::Password,
        ".RoleName" => Field::RoleName,
        ".DisplayName" => Field::DisplayName,
        ".IssueTime" => Field::IssueTime,
        ".IssueTimeSeconds" => Field::IssueTimeSeconds,
        ".ExpirationTime" | "expiration" => Field::ExpirationTime,
        ".ExpirationTimeSeconds" => Field::ExpirationTimeSeconds,
        _ => return None,
    })
}

/// A `printf` format given as a Go string literal, with exactly one `%s`.
fn printf(literal: &str) -> Result<Func, String> {
    let text = if let Some(raw) = literal.strip_prefix('`').and_then(|l| l.strip_suffix('`')) {
        raw.to_string()
    } else if let Some(quoted) = literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                other => return Err(format!("printf: unsupported escape \\{}", other.unwrap_or(' '))),
            }
        }
        out
    } else {
        return Err(format!("printf: the format {literal} is not a quoted string"));
    };
    let literal_percent = text.replace("%%", "");
    if literal_percent.matches("%s").count() != 1 || literal_percent.replace("%s", "").contains('%') {
        return Err("printf: the format must hold exactly one %s (and %% for a percent sign)".into());
    }
    Ok(Func::Printf(text.replace("%%", "%")))
}

/// Splits `a "b c" | d` into commands of words, keeping quoted strings whole.
fn split_pipeline(inner: &str) -> Result<Vec<Vec<String>>, String> {
    let mut commands = vec![Vec::new()];
    let mut chars = inner.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                commands.push(Vec::new());
            }
            '"' | '`' => {
                let mut word = String::from(chars.next().unwrap());
                let mut closed = false;
                while let Some(n) = chars.next() {
                    word.push(n);
                    if n == '\\' && c == '"' {
                        if let Some(e) = chars.next() {
                            word.push(e);
                        }
                    } else if n == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err("unclosed string".into());
                }
                commands.last_mut().unwrap().push(word);
            }
            _ => {
                let mut word = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == '|' || n == '"' {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                commands.last_mut().unwrap().push(word);
            }
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        let t = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        Values { username: "v_ro_x", password: Some("pw"), role: "ro", issued_at: t, expires_at: t }
    }

    fn render(source: &str) -> Vec<u8> {
        Template::parse(source).unwrap().render(&values(), |b| b.to_vec())
    }

    #[test]
    fn vault_and_lessor_spellings_render_alike() {
        assert_eq!(render("cn={{.Username}},ou=p"), b"cn=v_ro_x,ou=p");
        assert_eq!(render("cn={{ name }}/{{username}}"), b"cn=v_ro_x/v_ro_x");
        assert_eq!(render("{{.Password}}{{password}}"), b"pwpw");
        assert_eq!(render("{{.RoleName}} {{.DisplayName}}"), b"ro ro");
        assert_eq!(
            render("{{.ExpirationTime}} {{expiration}}"),
            b"2030-01-02T03:04:05Z 2030-01-02T03:04:05Z"
        );
        assert_eq!(render("{{.IssueTimeSeconds}}"), b"1893553445");
        assert_eq!(render("{{.Username | uppercase}}"), b"V_RO_X");
    }

    #[test]
    fn the_ad_password_pipeline_of_vault_examples() {
        // `"pw"` as UTF-16LE, then base64: what `unicodePwd::` takes.
        let quoted_utf16: Vec<u8> = "\"pw\"".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&quoted_utf16);
        assert_eq!(render(r#"{{ printf "\"%s\"" .Password | utf16le | base64 }}"#), b64.as_bytes());
        assert_eq!(render(r#"{{ .Password | printf "\"%s\"" | utf16le | base64 }}"#), b64.as_bytes());
        assert_eq!(render("{{.Password | utf16le}}"), [b'p', 0, b'w', 0]);
    }

    #[test]
    fn unknown_fields_functions_and_forms_are_refused_by_name() {
        for (source, wanted) in [
            ("{{.Nope}}", "`{{.Nope}}` does not start with a field"),
            ("{{.Username | sha512}}", "unknown function `sha512`"),
            ("{{.Username", "unclosed"),
            ("{{- .Username }}", "trimming"),
            (r#"{{ printf "%s-%s" .Username }}"#, "exactly one %s"),
            (r#"{{ printf "\"%s\"" .Nope }}"#, "unknown field .Nope"),
            ("{{ .Username | }}", "empty command"),
        ] {
            let e = Template::parse(source).unwrap_err();
            assert!(e.contains(wanted), "{source}: {e}");
        }
    }

    #[test]
    fn actions_are_escaped_text_is_not() {
        let t = Template::parse("cn={{.Username}},ou=p").unwrap();
        let v = Values { username: "a,b", ..values() };
        assert_eq!(
            t.render(&v, |b| b
                .iter()
                .flat_map(|&c| if c == b',' { b"\\2c".to_vec() } else { vec![c] })
                .collect()),
            b"cn=a\\2cb,ou=p"
        );
        assert!(t.uses(Field::Username) && !t.uses(Field::Password));
        assert!(Template::parse("{{.Password}}").unwrap().only_action().is_some_and(Action::is_bare));
        assert!(Template::parse("x{{.Password}}").unwrap().only_action().is_none());
    }
}
