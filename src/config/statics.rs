//! `[static_accounts.NAME]`: long-lived accounts lessor rotates (DESIGN §7),
//! their schedules, and the checks that make a loaded account usable.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{check_range, ConnectionConfig, Duration, TidySettings, TEN_YEARS};

/// How an account's password changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One user whose password is changed in place: consumers holding the
    /// old one fail until they re-read. No overlap is possible.
    Single,
    /// Two users: the one not in use gets the new password, is tested, and
    /// becomes current; the other keeps working for `overlap`.
    Alternating,
    /// One user that holds two passwords at once (Redis ACL): the new one
    /// is added, tested, and becomes current; the old one is taken away
    /// after `overlap`. No second user is needed.
    DualPassword,
    /// An AWS IAM user's two access keys: a new key is made, tested, and
    /// becomes current; the old one is deleted after `overlap`.
    AccessKey,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Alternating => "alternating",
            Self::DualPassword => "dual_password",
            Self::AccessKey => "access_key",
        }
    }
}

/// `[static_accounts.NAME]`: an account that exists in the backend already
/// and whose password lessor owns and rotates.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticAccountConfig {
    /// The connection (`[connections.NAME]`) whose backend the account lives in.
    pub connection: String,
    /// `single` (one user, password changed in place), `alternating` (two
    /// users, both valid during the overlap), `dual_password` (one user
    /// with both passwords during the overlap, Redis), or `access_key` (an
    /// AWS IAM user's two access keys).
    pub strategy: Strategy,
    /// The existing users: one for `single` and `dual_password`, two for
    /// `alternating`, the IAM user's name for `access_key`.
    pub usernames: Vec<String>,
    /// When to rotate: a cron expression in UTC, 5 fields (minute hour
    /// day-of-month month day-of-week) or 6 (with seconds first). Day names
    /// (`MON-FRI`) read the same everywhere; numbers follow the `cron`
    /// crate (1 = Sunday). Not with `rotation_period`.
    pub schedule: Option<String>,
    /// Rotate this long after the last rotation. Not with `schedule`.
    /// With neither, the account rotates only when an operator says so.
    pub rotation_period: Option<Duration>,
    /// A scheduled rotation that cannot start within this long of its slot
    /// (the daemon was down) waits for the next slot instead. Default: a
    /// missed rotation runs once at start-up.
    pub window: Option<Duration>,
    /// How long the previous credential keeps working after a rotation
    /// (`alternating` only; `single` has none).
    #[serde(default = "default_overlap")]
    pub overlap: Duration,
    /// A random delay of up to this long added to each scheduled rotation,
    /// so accounts on one schedule do not all rotate at the same second.
    #[serde(default = "default_jitter")]
    pub jitter: Duration,
    /// Length of generated passwords (16–128).
    #[serde(default = "default_password_length")]
    pub password_length: usize,
}

fn default_overlap() -> Duration {
    Duration::from_secs(3600)
}
fn default_jitter() -> Duration {
    Duration::ZERO
}
fn default_password_length() -> usize {
    lessor_plugin::names::DEFAULT_PASSWORD_LEN
}

/// When an account rotates by itself.
#[derive(Debug, Clone)]
pub enum RotationSchedule {
    /// A cron schedule, with the text it was written as.
    Cron(Box<cron::Schedule>, String),
    /// A fixed time after the last rotation.
    Period(Duration),
    /// Only when an operator says so.
    Manual,
}

impl RotationSchedule {
    /// The next slot after the rotation at `last` (or, when the account has
    /// never rotated, the first slot after `now`).
    pub fn next_after(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(schedule, _) => schedule.after(&last.unwrap_or(now)).next(),
            Self::Period(period) => last.unwrap_or(now).checked_add_signed(period.to_chrono()),
            Self::Manual => None,
        }
    }

    /// For `static get`: what the schedule is.
    pub fn describe(&self) -> String {
        match self {
            Self::Cron(_, text) => format!("cron {text:?} (UTC)"),
            Self::Period(period) => format!("every {period}"),
            Self::Manual => "on demand only".into(),
        }
    }
}

/// A static account ready to rotate.
#[derive(Debug, Clone)]
pub struct StaticAccount {
    pub name: String,
    pub connection: String,
    pub strategy: Strategy,
    pub usernames: Vec<String>,
    pub schedule: RotationSchedule,
    pub window: Option<Duration>,
    pub overlap: Duration,
    pub jitter: Duration,
    pub password_length: usize,
}

/// Parses a 5- or 6-field cron expression (a 5-field one runs at second 0).
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {text}"),
        6 | 7 => text.to_string(),
        n => {
            return Err(format!(
                "{text:?} has {n} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
            ))
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("{text:?} is not a cron expression: {e}"))
}

/// Checks every `[static_accounts.NAME]` against the config's connections
/// and their tidy settings; what only the connection's plugin can check is
/// `crate::setup::Connection::check_static`. Returns every account, those
/// with problems included.
pub(super) fn check(
    accounts: &BTreeMap<String, StaticAccountConfig>,
    connections: &BTreeMap<String, ConnectionConfig>,
    tidy: &BTreeMap<String, TidySettings>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, StaticAccount> {
    let mut valid = BTreeMap::new();
    let mut owner_of: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (name, account) in accounts {
        let key = format!("static_accounts.{name}");
        if !super::is_valid_name(name) {
            // Still kept: a policy naming it is not told it names nothing.
            errors.push(ConfigError::new(&key, "name may hold only letters, digits, '_' and '-'"));
        }
        let wanted = match account.strategy {
            Strategy::Single | Strategy::DualPassword | Strategy::AccessKey => 1,
            Strategy::Alternating => 2,
        };
        if account.usernames.len() != wanted {
            errors.push(ConfigError::new(
                format!("{key}.usernames"),
                format!(
                    "strategy {} takes {wanted} username(s), not {}",
                    account.strategy.as_str(),
                    account.usernames.len()
                ),
            ));
        }
        if account.usernames.len() == 2 && account.usernames[0] == account.usernames[1] {
            errors.push(ConfigError::new(format!("{key}.usernames"), "the two usernames must differ"));
        }
        let schedule = match (&account.schedule, account.rotation_period) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(&key, "set schedule or rotation_period, not both"));
                RotationSchedule::Manual
            }
            (Some(text), None) => match parse_cron(text) {
                Ok(schedule) => RotationSchedule::Cron(Box::new(schedule), text.clone()),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{key}.schedule"), e));
                    RotationSchedule::Manual
                }
            },
            (None, Some(period)) => {
                check_range(
                    errors,
                    &format!("{key}.rotation_period"),
                    period,
                    Duration::from_secs(1),
                    TEN_YEARS,
                );
                RotationSchedule::Period(period)
            }
            (None, None) => RotationSchedule::Manual,
        };
        check_range(errors, &format!("{key}.overlap"), account.overlap, Duration::ZERO, TEN_YEARS);
        check_range(errors, &format!("{key}.jitter"), account.jitter, Duration::ZERO, TEN_YEARS);
        if let Some(window) = account.window {
            check_range(errors, &format!("{key}.window"), window, Duration::from_secs(1), TEN_YEARS);
        }
        if account.strategy == Strategy::Single && !account.overlap.as_std().is_zero() {
            errors.push(ConfigError::new(
                format!("{key}.overlap"),
                "strategy single changes the password in place, so no overlap is possible: set overlap = \"0s\" \
                 (or use alternating)",
            ));
        }
        if !(16..=128).contains(&account.password_length) {
            errors.push(ConfigError::new(format!("{key}.password_length"), "must be between 16 and 128"));
        }
        if !connections.contains_key(&account.connection) {
            errors.push(ConfigError::new(
                format!("{key}.connection"),
                format!("unknown connection {:?}", account.connection),
            ));
        }
        for (i, username) in account.usernames.iter().enumerate() {
            if let Some(other) = owner_of.insert((account.connection.as_str(), username.as_str()), name) {
                errors.push(ConfigError::new(
                    format!("{key}.usernames[{i}]"),
                    format!("{username:?} is also an account of static_accounts.{other}"),
                ));
            }
            if let Some(tidy) = tidy.get(&account.connection) {
                if username.starts_with(&tidy.prefix) {
                    errors.push(ConfigError::new(
                        format!("connections.{}.tidy_prefix", account.connection),
                        format!(
                            "{:?} matches {username:?}, a user of static_accounts.{name}: tidy would drop it",
                            tidy.prefix
                        ),
                    ));
                }
            }
        }
        valid.insert(
            name.clone(),
            StaticAccount {
                name: name.clone(),
                connection: account.connection.clone(),
                strategy: account.strategy,
                usernames: account.usernames.clone(),
                schedule,
                window: account.window,
                overlap: account.overlap,
                jitter: account.jitter,
                password_length: account.password_length,
            },
        );
    }
    valid
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn cron_takes_five_or_six_fields_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 2, 59, 30).unwrap();
        let daily = RotationSchedule::Cron(Box::new(parse_cron("0 3 * * *").unwrap()), "0 3 * * *".into());
        assert_eq!(daily.next_after(Some(at), at), Some(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap()));
        let every_5s = parse_cron("*/5 * * * * *").unwrap();
        assert_eq!(every_5s.after(&at).next(), Some(Utc.with_ymd_and_hms(2026, 12, 1, 2, 59, 35).unwrap()));
        for bad in ["", "* * *", "61 * * * *", "a b c d e"] {
            assert!(parse_cron(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_period_counts_from_the_last_rotation() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let period = RotationSchedule::Period(Duration::from_secs(86_400));
        assert_eq!(
            period.next_after(Some(at), at + chrono::Duration::hours(5)),
            Some(at + chrono::Duration::days(1))
        );
        assert_eq!(RotationSchedule::Manual.next_after(Some(at), at), None);
    }
}
