//! Statement templates in Vault's syntax: `{{name}}`, `{{username}}`,
//! `{{password}}`, `{{expiration}}`, so existing Vault roles carry over.
//!
//! Templates are parsed once at config load, so an unknown placeholder is a
//! config error rather than a failed issuance. A rendered statement may hold
//! a password, so rendering returns a [`SecretString`].

use secrecy::SecretString;

/// A value a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{name}}` or `{{username}}`: the generated username.
    Name,
    /// `{{password}}`: the password, or what the plugin sends instead of it.
    Password,
    /// `{{expiration}}`: when the lease ends.
    Expiration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Value(Placeholder),
}

/// A parsed statement template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub name: &'a str,
    pub password: Option<&'a str>,
    pub expiration: Option<&'a str>,
}

impl Template {
    /// Parses `source`; the error names the offending placeholder.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| "unclosed `{{`".to_string())?;
            let value = match after[..end].trim() {
                "name" | "username" => Placeholder::Name,
                "password" => Placeholder::Password,
                "expiration" => Placeholder::Expiration,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{{{other}}}}}` (known: {{{{name}}}}, {{{{username}}}}, {{{{password}}}}, {{{{expiration}}}})"
                    ))
                }
            };
            segments.push(Segment::Value(value));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Self { source: source.to_string(), segments })
    }

    /// Whether the template refers to `placeholder`.
    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.segments.contains(&Segment::Value(placeholder))
    }

    /// The template as written, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the statement. A placeholder without a value renders empty.
    pub fn render(&self, values: &Values<'_>) -> SecretString {
        let mut out = String::with_capacity(self.source.len() + 64);
        for segment in &self.segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Value(Placeholder::Name) => out.push_str(values.name),
                Segment::Value(Placeholder::Password) => out.push_str(values.password.unwrap_or("")),
                Segment::Value(Placeholder::Expiration) => out.push_str(values.expiration.unwrap_or("")),
            }
        }
        SecretString::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn renders_vault_placeholders() {
        let t = Template::parse(
            "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' VALID UNTIL '{{ expiration }}' -- {{username}}",
        )
        .unwrap();
        assert!(t.uses(Placeholder::Password));
        let s = t.render(&Values { name: "v_x", password: Some("pw"), expiration: Some("2030-01-01") });
        assert_eq!(s.expose_secret(), "CREATE ROLE \"v_x\" PASSWORD 'pw' VALID UNTIL '2030-01-01' -- v_x");
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        let e = Template::parse("GRANT x TO {{nmae}}").unwrap_err();
        assert!(e.contains("{{nmae}}"), "{e}");
        assert!(Template::parse("GRANT x TO {{name").is_err());
        assert!(!Template::parse("SELECT 1").unwrap().uses(Placeholder::Name));
    }
}
