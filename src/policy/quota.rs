//! `max_leases`: how many live leases (any state but `revoked`) one role
//! and all callers under one policy may hold at once. A runaway client
//! then meets a 429, not the backend's connection or user limits.
//!
//! The counts live in memory: set from the store once at start-up (only
//! when a limit is configured), taken when an issuance starts and given
//! back when its lease is revoked or dropped. Only limited roles and
//! policies are counted.

use std::collections::HashMap;
use std::sync::Mutex;

/// Limits and what is held against them.
#[derive(Debug, Default)]
pub struct Quotas {
    roles: HashMap<String, usize>,
    policies: HashMap<String, usize>,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    roles: HashMap<String, usize>,
    policies: HashMap<String, usize>,
}

/// An issuance refused for a limit (429).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} holds {held} live leases, its max_leases is {max}; revoke some (or wait for them to expire) first")]
pub struct OverQuota {
    pub what: String,
    pub held: usize,
    pub max: usize,
}

impl Quotas {
    pub fn new(roles: HashMap<String, usize>, policies: HashMap<String, usize>) -> Self {
        Self { roles, policies, held: Mutex::default() }
    }

    /// Whether any limit is configured (and the counts must be loaded).
    pub fn is_configured(&self) -> bool {
        !self.roles.is_empty() || !self.policies.is_empty()
    }

    /// Counts a lease already in the store (start-up).
    pub fn count(&self, role: &str, policy: Option<&str>, n: usize) {
        let mut held = self.held.lock().unwrap();
        if self.roles.contains_key(role) {
            *held.roles.entry(role.to_string()).or_default() += n;
        }
        if let Some(policy) = policy.filter(|p| self.policies.contains_key(*p)) {
            *held.policies.entry(policy.to_string()).or_default() += n;
        }
    }

    /// Takes one lease of `role` under `policy`, or says which limit it
    /// would break. Checked and taken under one lock, so concurrent
    /// issuances cannot overshoot.
    pub fn take(&self, role: &str, policy: Option<&str>) -> Result<(), OverQuota> {
        let mut held = self.held.lock().unwrap();
        let role_limit = self.roles.get(role).map(|max| (*max, held.roles.get(role).copied().unwrap_or(0)));
        if let Some((max, now)) = role_limit.filter(|(max, now)| now >= max) {
            return Err(OverQuota { what: format!("role {role:?}"), held: now, max });
        }
        let policy_limit = policy.and_then(|p| {
            self.policies.get(p).map(|max| (p, *max, held.policies.get(p).copied().unwrap_or(0)))
        });
        if let Some((name, max, now)) = policy_limit.filter(|(_, max, now)| now >= max) {
            return Err(OverQuota { what: format!("policy {name:?}"), held: now, max });
        }
        if role_limit.is_some() {
            *held.roles.entry(role.to_string()).or_default() += 1;
        }
        if let Some((name, ..)) = policy_limit {
            *held.policies.entry(name.to_string()).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back what [`take`](Self::take) took: the lease is gone.
    pub fn give_back(&self, role: &str, policy: Option<&str>) {
        let mut held = self.held.lock().unwrap();
        if let Some(n) = held.roles.get_mut(role) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = policy.and_then(|p| held.policies.get_mut(p)) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_and_frees_up_on_give_back() {
        let q = Quotas::new([("app".to_string(), 2)].into(), [("web".to_string(), 3)].into());
        q.take("app", Some("web")).unwrap();
        q.take("app", Some("web")).unwrap();
        let e = q.take("app", Some("web")).unwrap_err();
        assert_eq!((e.held, e.max), (2, 2));
        assert!(e.to_string().contains("role \"app\" holds 2 live leases, its max_leases is 2"), "{e}");
        q.take("other", Some("web")).unwrap();
        let e = q.take("other", Some("web")).unwrap_err();
        assert!(e.to_string().starts_with("policy \"web\" holds 3"), "{e}");
        q.give_back("app", Some("web"));
        q.take("other", Some("web")).unwrap();
        q.count("app", None, 5);
        assert!(q.take("app", None).is_err());
        // Unlimited roles and policies are not counted at all.
        q.take("free", None).unwrap();
        assert!(!q.held.lock().unwrap().roles.contains_key("free"));
    }
}
