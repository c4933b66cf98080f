//! The engine: the `Plugin` trait for [`AwsPlugin`], dispatching to the
//! STS half (`sts`), the IAM-user half (`iam_user`) and static access keys
//! (`access_keys`), all built on the connection (`connection`), and the
//! operator's "revoke older sessions" action.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, CreateRequest, Created, LeaseRef, Plugin,
    PluginError, RoleSettings,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tracing::debug;

use crate::config::{AwsRole, CredentialType, MAX_NAME_LEN};
use crate::connection::AwsPlugin;
use crate::error::classify;
use crate::sts::{revoke_policy, to_chrono};

/// The inline policy `revoke_sessions` puts on an IAM role.
pub const REVOKE_POLICY_NAME: &str = "lessor-revoke-older-sessions";

#[async_trait]
impl Plugin for AwsPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { renewable: true, revocable: true, max_username_len: MAX_NAME_LEN }
    }

    fn role_capabilities(&self, settings: &RoleSettings) -> Capabilities {
        match downcast_role::<AwsRole>(settings) {
            Ok(role) if role.credential_type.is_sts() => {
                Capabilities { renewable: false, revocable: false, max_username_len: MAX_NAME_LEN }
            }
            _ => self.capabilities(),
        }
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        &["access_key"]
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(Arc::new(AwsRole::parse(role, options)?))
    }

    fn check_ttls(
        &self,
        role: &str,
        settings: &RoleSettings,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<(), ConfigError> {
        let settings = downcast_role::<AwsRole>(settings)
            .map_err(|e| ConfigError::new(format!("roles.{role}"), e.to_string()))?;
        settings.check_ttls(role, default_ttl, max_ttl)
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let clients = self.clients().await;
        let sts = &clients.sts;
        let identity =
            sts.get_caller_identity().send().await.map_err(|e| classify(&e, "verify (GetCallerIdentity)"))?;
        debug!(operation = "verify", connection = %self.settings.name, arn = identity.arn().unwrap_or("?"), "verified");
        Ok(())
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let role: &AwsRole = downcast_role(request.settings)?;
        if role.credential_type.is_sts() {
            self.create_sts(role, request).await
        } else {
            self.create_user(role, request).await
        }
    }

    /// IAM users: the lease alone is extended (an access key has no expiry
    /// of its own). STS roles are not renewable; the broker refuses first.
    async fn renew(&self, lease: &LeaseRef<'_>, expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        if credential_type_of(lease)?.is_some_and(CredentialType::is_sts) {
            return Err(PluginError::Unsupported { operation: "renew" });
        }
        debug!(operation = "renew", connection = %self.settings.name, role = lease.role, username = lease.username, %expires_at, "lease extended");
        Ok(())
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        if credential_type_of(lease)?.is_some_and(CredentialType::is_sts) {
            // AWS honours the token until it expires; only the lease ends.
            debug!(operation = "revoke", connection = %self.settings.name, role = lease.role, lease_id = lease.lease_id, "STS credential: expiry-only, nothing to delete");
            return Ok(());
        }
        // With neither settings nor plugin data (a pending lease of a role
        // no longer configured), an IAM user may exist: look.
        debug!(operation = "revoke", connection = %self.settings.name, role = lease.role, username = lease.username, "deleting IAM user");
        self.delete_user(lease.username, lease.lease_id, "revoke").await
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let iam = self.iam().await;
        let users = iam
            .list_users()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| classify(&e, "list users (ListUsers)"))?;
        Ok(users
            .iter()
            .filter(|u| u.user_name().starts_with(prefix))
            .map(|u| BackendUser { name: u.user_name().to_string(), created_at: to_chrono(u.create_date()) })
            .collect())
    }

    /// With a configured access key, lessor's own IAM user (`""`: the
    /// caller itself, as IAM's key APIs take it); with the credential
    /// chain, none: that credential is not lessor's to rotate.
    fn admin_username(&self) -> Option<String> {
        self.settings.static_key.as_ref().map(|_| String::new())
    }

    fn admin_key_id(&self) -> Option<String> {
        self.own_key().map(|(id, _)| id)
    }

    fn use_admin_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.switch_own_key(username, password);
        Ok(())
    }

    async fn create_key(
        &self,
        username: &str,
        keep: Option<&[String]>,
    ) -> Result<(String, SecretString), PluginError> {
        self.create_account_key(username, keep).await
    }

    async fn test_key(&self, key_id: &str, secret: &SecretString) -> Result<(), PluginError> {
        self.probe_key(key_id, secret, &format!("test key {key_id}")).await
    }

    async fn delete_key(&self, username: &str, key_id: &str) -> Result<(), PluginError> {
        self.delete_account_key(username, key_id).await
    }

    async fn revoke_sessions(&self, role: &str, settings: &RoleSettings) -> Result<Value, PluginError> {
        let settings: &AwsRole = downcast_role(settings)?;
        let Some(arn) =
            settings.role_arn.as_ref().filter(|_| settings.credential_type == CredentialType::AssumedRole)
        else {
            return Err(PluginError::InvalidRole {
                message: format!(
                    "role {role:?} is a {} role; revoke-sessions applies to assumed_role roles (the IAM role gets the deny policy)",
                    settings.credential_type
                ),
            });
        };
        // Rounded up to the next second: every session issued until now is
        // covered (a token issued in the same second is denied too).
        let now = Utc::now();
        let cutoff =
            if now.trunc_subsecs(0) == now { now } else { now.trunc_subsecs(0) + TimeDelta::seconds(1) };
        let policy = revoke_policy(cutoff);
        self.iam()
            .await
            .put_role_policy()
            .role_name(&arn.name)
            .policy_name(REVOKE_POLICY_NAME)
            .policy_document(policy.to_string())
            .send()
            .await
            .map_err(|e| classify(&e, &format!("revoke sessions of {} (PutRolePolicy)", arn.arn)))?;
        debug!(operation = "revoke_sessions", connection = %self.settings.name, role, role_arn = %arn.arn, policy_name = REVOKE_POLICY_NAME, denied_before = %cutoff.to_rfc3339(), "sessions issued before the cut-off are denied");
        Ok(json!({
            "role": role,
            "role_arn": arn.arn,
            "iam_role_name": arn.name,
            "policy_name": REVOKE_POLICY_NAME,
            "denied_before": cutoff.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "policy": policy,
        }))
    }
}

/// The lease's credential type: from its plugin data (what it was made
/// as), else from the role's current settings, else unknown.
fn credential_type_of(lease: &LeaseRef<'_>) -> Result<Option<CredentialType>, PluginError> {
    let from_data = lease
        .plugin_data
        .and_then(|d| d.get("credential_type"))
        .and_then(Value::as_str)
        .and_then(CredentialType::parse);
    if from_data.is_some() {
        return Ok(from_data);
    }
    match lease.settings {
        Some(settings) => Ok(Some(downcast_role::<AwsRole>(settings)?.credential_type)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
