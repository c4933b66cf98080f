//! How the CLI prints what the daemon answered: shell `export` lines and
//! aligned tables. (JSON is the daemon's own answer, pretty-printed.)

use serde_json::Value;

use super::one_line;

pub(super) use lessor_client::env::shell_quote;

/// `export` lines for an issue response: `LESSOR_LEASE_ID`, then the
/// variables the backend's own tools read. The error never quotes a value.
pub(super) fn env_exports(body: &Value) -> Result<String, String> {
    let vars = lessor_client::env::issued_vars(body)?;
    Ok(vars.iter().map(|(var, value)| format!("export {var}={}\n", shell_quote(value))).collect())
}

/// Fields of a credential in the order a person reads them; any others
/// follow in name order.
const CREDENTIAL_ORDER: &[&str] = &[
    "username",
    "distinguished_name",
    "password",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "expiration",
];

/// `key  value` rows for an issue response.
pub(super) fn creds_table(body: &Value) -> String {
    let mut rows: Vec<Vec<String>> = ["lease_id", "role", "ttl_seconds", "expires_at", "renewable"]
        .iter()
        .map(|key| vec![key.to_string(), cell(body.get(*key))])
        .collect();
    if let Some(Value::Object(credential)) = body.get("credential") {
        let known = CREDENTIAL_ORDER.iter().filter(|k| credential.contains_key(**k)).copied();
        let mut others: Vec<&str> =
            credential.keys().map(String::as_str).filter(|k| !CREDENTIAL_ORDER.contains(k)).collect();
        others.sort_unstable();
        for key in known.chain(others) {
            rows.push(vec![key.to_string(), cell(credential.get(key))]);
        }
    }
    render_table(&rows)
}

/// `static get` as `key  value` rows.
pub(super) fn static_table(body: &Value) -> String {
    let rows =
        ["name", "version", "rotated_at", "next_rotation_at", "previous_username", "previous_valid_until"]
            .iter()
            .map(|key| vec![key.to_string(), cell(body.get(*key))])
            .chain(
                body["credential"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(key, value)| vec![key.clone(), cell(Some(value))]),
            )
            .collect::<Vec<_>>();
    render_table(&rows)
}

/// One row per lease, under a header.
pub(super) fn lease_table(body: &Value) -> Result<String, String> {
    let leases = body.get("leases").and_then(Value::as_array).ok_or("the response has no `leases` list")?;
    let mut rows =
        vec![["LEASE_ID", "ROLE", "USERNAME", "STATE", "EXPIRES_AT", "OWNER"].map(String::from).to_vec()];
    for lease in leases {
        rows.push(vec![
            cell(lease.get("lease_id")),
            cell(lease.get("role")),
            cell(lease.get("username")),
            cell(lease.get("state")),
            cell(lease.get("expires_at")),
            cell(lease.get("owner").and_then(|o| o.get("uid"))),
        ]);
    }
    Ok(render_table(&rows))
}

/// One line per user tidy dropped (or would drop) and per error, each
/// starting with the connection; one summary line when there is nothing.
pub(super) fn tidy_lines(body: &Value) -> Result<String, String> {
    let reports =
        body.get("connections").and_then(Value::as_array).ok_or("the response has no `connections` list")?;
    let mut text = String::new();
    for report in reports {
        let connection = cell(report.get("connection"));
        for (field, verb) in [("dropped", "dropped"), ("would_drop", "would drop"), ("errors", "error:")] {
            for item in report.get(field).and_then(Value::as_array).into_iter().flatten() {
                text.push_str(&format!("{connection}: {verb} {}\n", one_line(&cell(Some(item)))));
            }
        }
    }
    if text.is_empty() {
        let names: Vec<String> = reports.iter().map(|r| cell(r.get("connection"))).collect();
        text = format!("nothing to drop ({})\n", names.join(", "));
    }
    Ok(text)
}

/// A value as a table cell: strings bare, absent or null as `-`, anything
/// else as compact JSON.
pub(super) fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces, without trailing blanks.
pub(super) fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, value) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(value);
            if c + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', widths[c] - value.chars().count()));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
