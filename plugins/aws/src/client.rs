//! The engine: [`AwsPlugin`] issues STS tokens and makes and deletes IAM
//! users.
//!
//! STS tokens cannot be revoked one by one: AWS honours them until they
//! expire. So those roles are expiry-only (the broker says so when a lease
//! is revoked), TTLs are clamped to what STS issues (at least 15 min) and
//! the real expiry goes back to the broker, which ends the lease then. The
//! operator's remedy for a leaked assumed-role token is
//! [`Plugin::revoke_sessions`]: a deny-all policy on the IAM role for every
//! session issued before now.
//!
//! IAM users are made step by step (user with its tags, path and boundary;
//! inline policy; managed policies; groups; access key). Nothing in IAM is
//! transactional, so a failure part-way deletes what was made before the
//! error is returned, and the broker revokes the username afterwards anyway.
//! Revocation is the same recipe backwards, each step treating
//! `NoSuchEntity` as done, so it is idempotent and finishes a half-deleted
//! user. It only ever deletes users that carry lessor's `lessor-lease-id`
//! tag (set in the same call that creates the user), so a name that
//! happened to collide with someone else's user is never deleted.
//!
//! The SDK clients are built on first use (loading the credential chain is
//! async, building a plugin is not). Keys and tokens live in `SecretString`s
//! and the SDK's own credential types, whose `Debug` redacts them.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::config::Credentials;
use aws_sdk_sts::primitives::DateTime as AwsDateTime;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::config::{
    check_iam_name, AwsRole, ConnectionSettings, CredentialType, LEASE_TAG, MAX_NAME_LEN, ROLE_TAG,
    STS_MIN_TTL,
};
use crate::error::{classify, is_delete_conflict, is_no_such_entity};

/// The inline policy that holds a role's inline `policy_document` on an
/// IAM user.
pub(crate) const USER_POLICY_NAME: &str = "lessor";
/// The inline policy `revoke_sessions` puts on an IAM role.
pub const REVOKE_POLICY_NAME: &str = "lessor-revoke-older-sessions";
/// How long `wait_until_usable` probes a new key before giving up waiting
/// (it then answers anyway: the key exists and will work shortly). Kept
/// under the broker's default operation timeout of 30 s.
const USABLE_DEADLINE: Duration = Duration::from_secs(20);

/// The AWS plugin for one `[connections.NAME]`.
pub struct AwsPlugin {
    pub(crate) settings: ConnectionSettings,
    /// The SDK clients, built on first use and again after lessor's own
    /// key was rotated.
    clients: RwLock<Option<Arc<Clients>>>,
    /// lessor's own key after `rotate-root`; it wins over the configured one.
    rotated_key: RwLock<Option<(String, SecretString)>>,
}

impl fmt::Debug for AwsPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsPlugin").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The SDK clients, built on first use.
struct Clients {
    sdk: SdkConfig,
    sts: aws_sdk_sts::Client,
    iam: aws_sdk_iam::Client,
}

impl AwsPlugin {
    /// Builds the plugin for one connection. Does not call AWS: the clients
    /// are built on first use, and [`Plugin::verify`] checks the credential.
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let settings = ConnectionSettings::parse(ctx.name, ctx.url, ctx.password, ctx.options)?;
        Ok(Self { settings, clients: RwLock::default(), rotated_key: RwLock::default() })
    }

    /// The key lessor signs with: a rotated one, else the configured one
    /// (none: the standard AWS credential chain).
    fn own_key(&self) -> Option<(String, SecretString)> {
        self.rotated_key.read().unwrap().clone().or_else(|| self.settings.static_key.clone())
    }

    async fn clients(&self) -> Arc<Clients> {
        if let Some(clients) = self.clients.read().unwrap().clone() {
            return clients;
        }
        let built = Arc::new(self.build_clients().await);
        self.clients.write().unwrap().get_or_insert(built).clone()
    }

    async fn build_clients(&self) -> Clients {
        {
            {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(25))
                    .build();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(self.settings.region.clone()))
                    .timeout_config(timeouts)
                    .retry_config(RetryConfig::standard().with_max_attempts(3))
                    .app_name(AppName::new("lessor").expect("a valid app name"));
                if let Some((id, secret)) = self.own_key() {
                    let credentials =
                        Credentials::new(id, secret.expose_secret(), None, None, "lessor-config");
                    loader = loader.credentials_provider(credentials);
                }
                let sdk = loader.load().await;
                let mut sts = aws_sdk_sts::config::Builder::from(&sdk);
                sts.set_endpoint_url(self.settings.sts_endpoint.clone());
                let sts = sts.build();
                let mut iam = aws_sdk_iam::config::Builder::from(&sdk);
                iam.set_endpoint_url(self.settings.iam_endpoint.clone());
                let iam = iam.build();
                Clients {
                    sts: aws_sdk_sts::Client::from_conf(sts),
                    iam: aws_sdk_iam::Client::from_conf(iam),
                    sdk,
                }
            }
        }
    }

    pub(crate) async fn iam(&self) -> aws_sdk_iam::Client {
        self.clients().await.iam.clone()
    }

    /// From now on, sign with the rotated key `key_id` / `secret`.
    fn switch_own_key(&self, key_id: &str, secret: &SecretString) {
        *self.rotated_key.write().unwrap() = Some((key_id.to_string(), secret.clone()));
        *self.clients.write().unwrap() = None;
        debug!(connection = %self.settings.name, access_key_id = key_id, "requests are now signed with the rotated key");
    }

    /// AssumeRole, GetFederationToken or GetSessionToken.
    async fn create_sts(&self, role: &AwsRole, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let ty = role.credential_type;
        let seconds = sts_duration(ty, request.expires_at, Utc::now());
        let clients = self.clients().await;
        let sts = &clients.sts;
        let what = |api: &str| format!("create {} ({api})", request.lease_id);
        let session_name = role.session_name.render(request.lease_id, request.role, request.username);
        debug!(operation = "create", connection = %self.settings.name, role = request.role, lease_id = request.lease_id, credential_type = %ty, duration_s = seconds, session_name, "requesting STS credentials");
        let credentials = match ty {
            CredentialType::AssumedRole => {
                let arn = role.role_arn.as_ref().ok_or_else(|| PluginError::Internal {
                    message: "assumed_role settings without a role_arn".into(),
                })?;
                sts.assume_role()
                    .role_arn(&arn.arn)
                    .role_session_name(&session_name)
                    .duration_seconds(seconds)
                    .set_policy(role.policy_document.clone())
                    .set_policy_arns(session_policy_arns(&role.policy_arns))
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("AssumeRole")))?
                    .credentials
            }
            CredentialType::FederationToken => {
                sts.get_federation_token()
                    .name(&session_name)
                    .duration_seconds(seconds)
                    .set_policy(role.policy_document.clone())
                    .set_policy_arns(session_policy_arns(&role.policy_arns))
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("GetFederationToken")))?
                    .credentials
            }
            CredentialType::SessionToken => {
                sts.get_session_token()
                    .duration_seconds(seconds)
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("GetSessionToken")))?
                    .credentials
            }
            CredentialType::IamUser => unreachable!("IAM users are not STS credentials"),
        };
        let credentials = credentials.ok_or_else(|| PluginError::Rejected {
            message: format!("{}: the answer holds no credentials", what(ty.as_str())),
        })?;
        let expiration = to_chrono(credentials.expiration()).ok_or_else(|| PluginError::Rejected {
            message: format!("{}: the credentials' expiration is out of range", what(ty.as_str())),
        })?;
        let access_key_id = credentials.access_key_id().to_string();
        debug!(operation = "create", connection = %self.settings.name, role = request.role, lease_id = request.lease_id, access_key_id, %expiration, "issued STS credentials");
        Ok(Created {
            plugin_data: Some(json!({ "credential_type": ty.as_str(), "access_key_id": access_key_id })),
            credential: Credential::Aws {
                access_key_id,
                secret_access_key: SecretString::from(credentials.secret_access_key()),
                session_token: Some(SecretString::from(credentials.session_token())),
                expiration: Some(expiration),
            },
            expires_at: Some(expiration),
        })
    }

    /// A new IAM user with its access key; on failure, deletes what it made.
    async fn create_user(&self, role: &AwsRole, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let username = request.username;
        check_iam_name(username, MAX_NAME_LEN)
            .map_err(|e| PluginError::Internal { message: format!("create: username {e}") })?;
        let iam = self.iam().await;
        let what = |api: &str| format!("create {username} ({api})");
        debug!(operation = "create", connection = %self.settings.name, role = request.role, username, lease_id = request.lease_id, path = role.user_path, "creating IAM user");

        let mut tags = vec![tag(LEASE_TAG, request.lease_id)?, tag(ROLE_TAG, request.role)?];
        for (k, v) in &role.iam_tags {
            tags.push(tag(k, v)?);
        }
        // Tags go in the creating call, so no user of ours ever exists
        // without them: revocation relies on the lease tag.
        iam.create_user()
            .user_name(username)
            .path(&role.user_path)
            .set_tags(Some(tags))
            .set_permissions_boundary(role.permissions_boundary_arn.clone())
            .send()
            .await
            .map_err(|e| classify(&e, &what("CreateUser")))?;

        match self.finish_user(&iam, role, request).await {
            Ok(created) => Ok(created),
            Err(err) => {
                debug!(operation = "create", connection = %self.settings.name, username, error = %err, "creation failed part-way; deleting the user");
                if let Err(cleanup) = self.delete_user(username, request.lease_id, "create (cleanup)").await {
                    warn!(operation = "create", connection = %self.settings.name, username, error = %cleanup, "cleanup after a failed creation failed; the broker's rollback retries it");
                }
                Err(err)
            }
        }
    }

    /// Everything after CreateUser.
    async fn finish_user(
        &self,
        iam: &aws_sdk_iam::Client,
        role: &AwsRole,
        request: &CreateRequest<'_>,
    ) -> Result<Created, PluginError> {
        let username = request.username;
        let what = |api: &str| format!("create {username} ({api})");
        if let Some(policy) = &role.policy_document {
            iam.put_user_policy()
                .user_name(username)
                .policy_name(USER_POLICY_NAME)
                .policy_document(policy)
                .send()
                .await
                .map_err(|e| classify(&e, &what("PutUserPolicy")))?;
        }
        for arn in &role.policy_arns {
            iam.attach_user_policy()
                .user_name(username)
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| classify(&e, &what(&format!("AttachUserPolicy {arn}"))))?;
        }
        for group in &role.iam_groups {
            iam.add_user_to_group()
                .user_name(username)
                .group_name(group)
                .send()
                .await
                .map_err(|e| classify(&e, &what(&format!("AddUserToGroup {group}"))))?;
        }
        let key = iam
            .create_access_key()
            .user_name(username)
            .send()
            .await
            .map_err(|e| classify(&e, &what("CreateAccessKey")))?
            .access_key
            .ok_or_else(|| PluginError::Rejected {
                message: format!("{}: no key in the answer", what("CreateAccessKey")),
            })?;
        let access_key_id = key.access_key_id().to_string();
        let secret = SecretString::from(key.secret_access_key());
        drop(key);
        if role.wait_until_usable {
            if let Err(e) = self.probe_key(&access_key_id, &secret, &format!("create {username}")).await {
                warn!(operation = "create", connection = %self.settings.name, username, access_key_id, error = %e, "the new key is still refused; answering anyway");
            }
        }
        debug!(operation = "create", connection = %self.settings.name, role = request.role, username, access_key_id, "created IAM user");
        Ok(Created {
            plugin_data: Some(json!({
                "credential_type": CredentialType::IamUser.as_str(),
                "access_key_id": access_key_id,
                "user_path": role.user_path,
            })),
            credential: Credential::Aws {
                access_key_id,
                secret_access_key: secret,
                session_token: None,
                expiration: None,
            },
            expires_at: None,
        })
    }

    /// Probes a key with GetCallerIdentity until AWS accepts it (a new key
    /// takes a few seconds to work everywhere), with backoff, for at most
    /// [`USABLE_DEADLINE`]; the last refusal when it never does. `op` names
    /// what the probe is for in messages.
    pub(crate) async fn probe_key(
        &self,
        access_key_id: &str,
        secret: &SecretString,
        op: &str,
    ) -> Result<(), PluginError> {
        let clients = self.clients().await;
        let credentials =
            Credentials::new(access_key_id, secret.expose_secret(), None, None, "lessor-new-key");
        let mut config = aws_sdk_sts::config::Builder::from(&clients.sdk)
            .credentials_provider(credentials)
            .retry_config(RetryConfig::disabled());
        config.set_endpoint_url(self.settings.sts_endpoint.clone());
        let config = config.build();
        let probe = aws_sdk_sts::Client::from_conf(config);
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match probe.get_caller_identity().send().await {
                Ok(_) => {
                    debug!(connection = %self.settings.name, op, access_key_id, attempts, ms = started.elapsed().as_millis() as u64, "key is usable");
                    return Ok(());
                }
                Err(e) => {
                    let e = classify(&e, &format!("{op} (GetCallerIdentity with the new key)"));
                    if started.elapsed() + wait > USABLE_DEADLINE {
                        return Err(e);
                    }
                    debug!(connection = %self.settings.name, op, attempts, error = %e, "key not usable yet");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(4));
        }
    }

    /// Deletes an IAM user and everything attached to it; `NoSuchEntity` at
    /// any step counts as done. A user without lessor's lease tag is left
    /// alone: lessor did not make it.
    async fn delete_user(&self, username: &str, lease_id: &str, op: &str) -> Result<(), PluginError> {
        let iam = self.iam().await;
        let connection = &self.settings.name;
        let what = |api: &str| format!("{op} {username} ({api})");

        let Some(user) = gone_ok(iam.get_user().user_name(username).send().await, &what("GetUser"))? else {
            debug!(operation = "revoke", %connection, username, "user already gone");
            return Ok(());
        };
        let lease_tag =
            user.user().and_then(|u| u.tags().iter().find(|t| t.key() == LEASE_TAG)).map(|t| t.value());
        match lease_tag {
            None => {
                warn!(operation = "revoke", %connection, username, lease_id, "an IAM user of that name exists without lessor's lease tag; leaving it alone");
                return Ok(());
            }
            Some(tagged) if tagged != lease_id => {
                debug!(operation = "revoke", %connection, username, lease_id, tagged, "the user's lease tag names another lease; deleting it as lessor's");
            }
            Some(_) => {}
        }

        // Keys first: once they are gone the credential is dead, whatever
        // happens to the later steps.
        let Some(keys) = gone_ok(
            iam.list_access_keys()
                .user_name(username)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await,
            &what("ListAccessKeys"),
        )?
        else {
            return Ok(());
        };
        for key in &keys {
            let Some(id) = key.access_key_id() else { continue };
            gone_ok(
                iam.delete_access_key().user_name(username).access_key_id(id).send().await,
                &what("DeleteAccessKey"),
            )?;
            debug!(operation = "revoke", %connection, username, access_key_id = id, "access key deleted");
        }

        let Some(policies) = gone_ok(
            iam.list_user_policies()
                .user_name(username)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await,
            &what("ListUserPolicies"),
        )?
        else {
            return Ok(());
        };
        for name in &policies {
            gone_ok(
                iam.delete_user_policy().user_name(username).policy_name(name).send().await,
                &what("DeleteUserPolicy"),
            )?;
        }

        let Some(attached) = gone_ok(
            iam.list_attached_user_policies()
                .user_name(username)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await,
            &what("ListAttachedUserPolicies"),
        )?
        else {
            return Ok(());
        };
        for policy in &attached {
            let Some(arn) = policy.policy_arn() else { continue };
            gone_ok(
                iam.detach_user_policy().user_name(username).policy_arn(arn).send().await,
                &what("DetachUserPolicy"),
            )?;
        }

        let Some(groups) = gone_ok(
            iam.list_groups_for_user()
                .user_name(username)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await,
            &what("ListGroupsForUser"),
        )?
        else {
            return Ok(());
        };
        for group in &groups {
            gone_ok(
                iam.remove_user_from_group().user_name(username).group_name(group.group_name()).send().await,
                &what("RemoveUserFromGroup"),
            )?;
        }

        gone_ok(iam.delete_login_profile().user_name(username).send().await, &what("DeleteLoginProfile"))?;

        match iam.delete_user().user_name(username).send().await {
            Ok(_) => {}
            Err(e) if is_no_such_entity(&e) => {}
            // Someone gave the user something lessor never does (an MFA
            // device, an SSH key, …): remove those too and try once more.
            Err(e) if is_delete_conflict(&e) => {
                debug!(operation = "revoke", %connection, username, "DeleteUser conflict; removing other attachments");
                self.delete_extras(username, op).await?;
                gone_ok(iam.delete_user().user_name(username).send().await, &what("DeleteUser"))?;
            }
            Err(e) => return Err(classify(&e, &what("DeleteUser"))),
        }
        debug!(operation = "revoke", %connection, username, "IAM user deleted");
        Ok(())
    }

    /// What blocks DeleteUser besides what lessor itself attaches.
    async fn delete_extras(&self, username: &str, op: &str) -> Result<(), PluginError> {
        let iam = self.iam().await;
        let what = |api: &str| format!("{op} {username} ({api})");
        if let Some(out) = gone_ok(
            iam.list_signing_certificates().user_name(username).send().await,
            &what("ListSigningCertificates"),
        )? {
            for cert in out.certificates() {
                gone_ok(
                    iam.delete_signing_certificate()
                        .user_name(username)
                        .certificate_id(cert.certificate_id())
                        .send()
                        .await,
                    &what("DeleteSigningCertificate"),
                )?;
            }
        }
        if let Some(out) =
            gone_ok(iam.list_ssh_public_keys().user_name(username).send().await, &what("ListSSHPublicKeys"))?
        {
            for key in out.ssh_public_keys() {
                gone_ok(
                    iam.delete_ssh_public_key()
                        .user_name(username)
                        .ssh_public_key_id(key.ssh_public_key_id())
                        .send()
                        .await,
                    &what("DeleteSSHPublicKey"),
                )?;
            }
        }
        if let Some(out) = gone_ok(
            iam.list_service_specific_credentials().user_name(username).send().await,
            &what("ListServiceSpecificCredentials"),
        )? {
            for credential in out.service_specific_credentials() {
                gone_ok(
                    iam.delete_service_specific_credential()
                        .user_name(username)
                        .service_specific_credential_id(credential.service_specific_credential_id())
                        .send()
                        .await,
                    &what("DeleteServiceSpecificCredential"),
                )?;
            }
        }
        if let Some(out) =
            gone_ok(iam.list_mfa_devices().user_name(username).send().await, &what("ListMFADevices"))?
        {
            for device in out.mfa_devices() {
                let serial = device.serial_number();
                gone_ok(
                    iam.deactivate_mfa_device().user_name(username).serial_number(serial).send().await,
                    &what("DeactivateMFADevice"),
                )?;
                if serial.starts_with("arn:") {
                    gone_ok(
                        iam.delete_virtual_mfa_device().serial_number(serial).send().await,
                        &what("DeleteVirtualMFADevice"),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// `Ok(None)` when IAM says the entity does not exist, the classified error
/// for any other failure.
pub(crate) fn gone_ok<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
    what: &str,
) -> Result<Option<T>, PluginError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_no_such_entity(&e) => Ok(None),
        Err(e) => Err(classify(&e, what)),
    }
}

fn tag(key: &str, value: &str) -> Result<aws_sdk_iam::types::Tag, PluginError> {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| PluginError::Internal { message: format!("tag {key:?}: {e}") })
}

fn session_policy_arns(arns: &[String]) -> Option<Vec<aws_sdk_sts::types::PolicyDescriptorType>> {
    (!arns.is_empty()).then(|| {
        arns.iter().map(|arn| aws_sdk_sts::types::PolicyDescriptorType::builder().arn(arn).build()).collect()
    })
}

/// The `DurationSeconds` to ask STS for, so the token lasts until
/// `expires_at`: whole seconds rounded up, raised to STS's 15-minute
/// minimum and capped at the type's maximum.
pub(crate) fn sts_duration(ty: CredentialType, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i32 {
    let wanted_ms = (expires_at - now).num_milliseconds().max(0) as u64;
    let wanted = wanted_ms.div_ceil(1000);
    let max = ty.max_ttl().map_or(u64::MAX, |d| d.as_secs());
    wanted.clamp(STS_MIN_TTL.as_secs(), max).min(i32::MAX as u64) as i32
}

fn to_chrono(at: &AwsDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.secs(), at.subsec_nanos())
}

/// The deny-all policy for sessions issued before `cutoff` (AWS's "revoke
/// active sessions").
pub(crate) fn revoke_policy(cutoff: DateTime<Utc>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": { "DateLessThan": { "aws:TokenIssueTime": cutoff.format("%Y-%m-%dT%H:%M:%SZ").to_string() } },
        }],
    })
}

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
