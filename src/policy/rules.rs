//! The `[[policies]]` of the config, compiled: which identities a policy
//! matches and what it allows, and who the admins are.
//!
//! A policy matches an identity when every key of its `match` does (keys
//! left out match anything; an empty `match` is refused at load). Globs are
//! shell-style (`*`, `?`, `[a-z]`, `{a,b}`); in `exe` and `cgroup` a `*`
//! stays within one path segment, so `/usr/bin/*` does not match
//! `/usr/bin/x/y`. `group` matches the primary group or any supplementary
//! one, by name. `systemd_unit`, `user_unit` and `cgroup` are what
//! [`Identity`] trusts of the cgroup path (never a name the caller made in
//! a delegated subtree). `host = true` matches callers on the host only (the
//! daemon's pid and user namespaces, no container cgroup); `host = false`
//! only callers elsewhere.

use globset::{GlobBuilder, GlobMatcher};

use super::identity::{Container, Identity};

/// What a policy grants.
#[derive(Debug, Clone)]
pub enum Permission {
    /// `creds:<role glob>`: issue dynamic credentials of matching roles.
    Creds(Pattern),
    /// `static:<name glob>`: read matching static accounts' credentials.
    Static(Pattern),
    /// `rotate:<name glob>`: ask for a rotation of matching static accounts.
    Rotate(Pattern),
    /// `metrics`: read `GET /v1/metrics` (counts over every lease and
    /// account).
    Metrics,
    /// `admin`: everything, including the operator actions.
    Admin,
}

impl Permission {
    /// Parses `creds:…`, `static:…`, `rotate:…` or `admin`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "admin" => return Ok(Self::Admin),
            "metrics" => return Ok(Self::Metrics),
            _ => {}
        }
        let (kind, glob) = text.split_once(':').ok_or_else(|| unknown(text))?;
        let pattern = Pattern::new(glob, false)?;
        match kind {
            "creds" => Ok(Self::Creds(pattern)),
            "static" => Ok(Self::Static(pattern)),
            "rotate" => Ok(Self::Rotate(pattern)),
            _ => Err(unknown(text)),
        }
    }
}

fn unknown(text: &str) -> String {
    format!("unknown permission {text:?} (known: creds:<role>, static:<account>, rotate:<account>, metrics, admin)")
}

/// A glob with the text it came from, for messages.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    /// `path`: a `*` does not cross `/`.
    pub fn new(text: &str, path: bool) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(path)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("{text:?} is not a valid glob: {}", e.kind()))?;
        Ok(Self { text: text.to_string(), matcher: glob.compile_matcher() })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }
}

/// The `match` of a policy; `None` keys match anything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub uid: Option<u32>,
    pub user: Option<Pattern>,
    pub gid: Option<u32>,
    pub group: Option<Pattern>,
    pub exe: Option<Pattern>,
    pub systemd_unit: Option<Pattern>,
    pub user_unit: Option<Pattern>,
    pub cgroup: Option<Pattern>,
    /// `Some(true)`: on the host only; `Some(false)`: elsewhere only.
    pub host: Option<bool>,
    /// What the container engine must say of the caller's container.
    pub container: ContainerMatch,
}

/// The container keys of a `match`: each is checked against what the
/// engine said ([`Identity::container`]); without that, none matches.
#[derive(Debug, Clone, Default)]
pub struct ContainerMatch {
    pub name: Option<Pattern>,
    pub image: Option<Pattern>,
    pub image_digest: Option<Pattern>,
    /// Label and the glob its value must match.
    pub labels: Vec<(String, Pattern)>,
    pub k8s_namespace: Option<Pattern>,
    pub k8s_pod: Option<Pattern>,
    pub k8s_service_account: Option<Pattern>,
    pub k8s_container: Option<Pattern>,
}

impl ContainerMatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.image.is_none()
            && self.image_digest.is_none()
            && self.labels.is_empty()
            && self.k8s_namespace.is_none()
            && self.k8s_pod.is_none()
            && self.k8s_service_account.is_none()
            && self.k8s_container.is_none()
    }

    fn matches(&self, container: Option<&Container>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(c) = container else { return false };
        text(&self.name, Some(&c.name))
            && text(&self.image, Some(&c.image))
            && text(&self.image_digest, c.image_digest.as_deref())
            && self.labels.iter().all(|(key, p)| c.label(key).is_some_and(|v| p.matches(v)))
            && text(&self.k8s_namespace, c.k8s_namespace())
            && text(&self.k8s_pod, c.k8s_pod())
            && text(&self.k8s_service_account, c.service_account.as_deref())
            && text(&self.k8s_container, c.k8s_container())
    }
}

/// A key left out matches anything; one given matches only a value that
/// was read and fits.
fn text(pattern: &Option<Pattern>, value: Option<&str>) -> bool {
    pattern.as_ref().is_none_or(|p| value.is_some_and(|v| p.matches(v)))
}

impl Matcher {
    pub fn is_empty(&self) -> bool {
        self.uid.is_none()
            && self.user.is_none()
            && self.gid.is_none()
            && self.group.is_none()
            && self.exe.is_none()
            && self.systemd_unit.is_none()
            && self.user_unit.is_none()
            && self.cgroup.is_none()
            && self.host.is_none()
            && self.container.is_empty()
    }

    pub fn matches(&self, who: &Identity) -> bool {
        self.uid.is_none_or(|uid| uid == who.uid)
            && self.gid.is_none_or(|gid| gid == who.gid || who.groups.contains(&gid))
            && text(&self.user, who.user.as_deref())
            && self.group.as_ref().is_none_or(|p| {
                who.group.as_deref().is_some_and(|g| p.matches(g))
                    || who.group_names.iter().any(|g| p.matches(g))
            })
            && text(&self.exe, who.exe.as_deref())
            && text(&self.systemd_unit, who.systemd_unit.as_deref())
            && text(&self.user_unit, who.user_unit.as_deref())
            && text(&self.cgroup, who.cgroup.as_deref())
            && self.host.is_none_or(|host| host == who.on_host())
            && self.container.matches(who.container.as_deref())
    }
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub matcher: Matcher,
    pub allow: Vec<Permission>,
    /// The most live leases all callers under this policy may hold.
    pub max_leases: Option<usize>,
}

impl Policy {
    pub fn grants_admin(&self) -> bool {
        self.allow.iter().any(|p| matches!(p, Permission::Admin))
    }

    pub fn grants(&self, wanted: impl Fn(&Permission) -> bool) -> bool {
        self.allow.iter().any(|p| matches!(p, Permission::Admin) || wanted(p))
    }
}

/// Who is an admin by identity alone, before any policy: `server.admins`.
///
/// Every entry holds on the host only (the daemon's pid and user
/// namespaces, outside any container's cgroup) unless it says `host =
/// false` itself: root in a container is uid 0 to the kernel, and is not
/// the host's root.
#[derive(Debug, Clone)]
pub enum Admins {
    /// The default: root and the user the daemon runs as, on the host.
    RootAndDaemon,
    /// Exactly these entries; may be empty.
    Listed(Vec<Matcher>),
}

/// Whether an identity is an admin by `server.admins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCheck {
    Admin,
    NotAdmin,
    /// It would be, were it on the host: why it is not.
    NotOnHost(String),
}

impl Admins {
    pub fn check(&self, who: &Identity) -> AdminCheck {
        // Would an entry match where the caller stands aside, and does one
        // hold where it stands?
        let (near, holds) = match self {
            Self::RootAndDaemon => {
                let near = who.uid == 0 || who.uid == current_uid();
                (near, near && who.on_host())
            }
            Self::Listed(entries) => {
                let near = entries.iter().any(|m| Matcher { host: None, ..m.clone() }.matches(who));
                let holds = entries.iter().any(|m| m.matches(who) && (m.host.is_some() || who.on_host()));
                (near, holds)
            }
        };
        match (holds, near, &who.confined) {
            (true, _, _) => AdminCheck::Admin,
            (false, true, Some(why)) => AdminCheck::NotOnHost(why.clone()),
            _ => AdminCheck::NotAdmin,
        }
    }

    pub fn contains(&self, who: &Identity) -> bool {
        self.check(who) == AdminCheck::Admin
    }
}

pub(crate) fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, user: &str, exe: &str) -> Identity {
        Identity {
            uid,
            gid: 100,
            user: Some(user.into()),
            group: Some("users".into()),
            groups: vec![100, 27],
            group_names: vec!["users".into(), "sudo".into()],
            exe: Some(exe.into()),
            cgroup: Some("/system.slice/web.service".into()),
            systemd_unit: Some("web.service".into()),
            ..Identity::default()
        }
    }

    #[test]
    fn every_key_of_a_match_must_hold() {
        let m = Matcher {
            user: Some(Pattern::new("www-*", false).unwrap()),
            exe: Some(Pattern::new("/usr/bin/*", true).unwrap()),
            ..Matcher::default()
        };
        assert!(m.matches(&who(33, "www-data", "/usr/bin/python3")));
        assert!(!m.matches(&who(33, "www-data", "/usr/bin/x/python3")), "* stays in one segment");
        assert!(!m.matches(&who(33, "app", "/usr/bin/python3")));
        let unknown_exe = Identity { exe: None, ..who(33, "www-data", "") };
        assert!(!m.matches(&unknown_exe), "a key that cannot be read does not match");
    }

    #[test]
    fn groups_match_primary_or_supplementary_by_name_or_gid() {
        let by_name = Matcher { group: Some(Pattern::new("sudo", false).unwrap()), ..Matcher::default() };
        assert!(by_name.matches(&who(1000, "a", "/x")));
        let by_gid = Matcher { gid: Some(27), ..Matcher::default() };
        assert!(by_gid.matches(&who(1000, "a", "/x")));
        let other = Matcher { group: Some(Pattern::new("wheel", false).unwrap()), ..Matcher::default() };
        assert!(!other.matches(&who(1000, "a", "/x")));
        let unit =
            Matcher { systemd_unit: Some(Pattern::new("web.*", false).unwrap()), ..Matcher::default() };
        assert!(unit.matches(&who(1000, "a", "/x")));
    }

    #[test]
    fn admins_hold_on_the_host_unless_an_entry_says_host_false() {
        let root = Identity { uid: 0, user: Some("root".into()), ..Identity::default() };
        let contained = Identity {
            confined: Some("it runs in container 4f1c0e2d9b8a's cgroup".into()),
            cgroup: Some("/system.slice/docker-4f1c.scope".into()),
            ..root.clone()
        };
        assert_eq!(Admins::RootAndDaemon.check(&root), AdminCheck::Admin);
        assert!(
            matches!(Admins::RootAndDaemon.check(&contained), AdminCheck::NotOnHost(why) if why.contains("container"))
        );
        let by_uid = Admins::Listed(vec![Matcher { uid: Some(0), ..Matcher::default() }]);
        assert_eq!(by_uid.check(&root), AdminCheck::Admin);
        assert!(matches!(by_uid.check(&contained), AdminCheck::NotOnHost(_)));
        // An entry that names where it holds: this container's root only.
        let this_container = Admins::Listed(vec![Matcher {
            user: Some(Pattern::new("root", false).unwrap()),
            cgroup: Some(Pattern::new("/system.slice/docker-*.scope", true).unwrap()),
            host: Some(false),
            ..Matcher::default()
        }]);
        assert_eq!(this_container.check(&contained), AdminCheck::Admin);
        assert_eq!(this_container.check(&root), AdminCheck::NotAdmin, "the host's root has no such cgroup");
        assert_eq!(Admins::Listed(Vec::new()).check(&root), AdminCheck::NotAdmin);
    }

    #[test]
    fn permissions_parse_or_say_what_is_known() {
        assert!(matches!(Permission::parse("admin"), Ok(Permission::Admin)));
        assert!(matches!(Permission::parse("creds:app_*"), Ok(Permission::Creds(p)) if p.matches("app_ro")));
        let e = Permission::parse("read:app").unwrap_err();
        assert!(e.contains("unknown permission \"read:app\""), "{e}");
        assert!(Permission::parse("creds:").is_err());
        assert!(Permission::parse("creds:[").unwrap_err().contains("not a valid glob"));
    }
}
