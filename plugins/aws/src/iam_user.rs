//! IAM users, one per lease: made step by step (user with its tags, path
//! and boundary; inline policy; managed policies; groups; access key).
//! Nothing in IAM is transactional, so a failure part-way deletes what was
//! made before the error is returned, and the broker revokes the username
//! afterwards anyway. Revocation is the same recipe backwards, each step
//! treating `NoSuchEntity` as done, so it is idempotent and finishes a
//! half-deleted user. It only ever deletes users that carry lessor's
//! `lessor-lease-id` tag (set in the same call that creates the user), so a
//! name that happened to collide with someone else's user is never deleted.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_sts::config::Credentials;
use lessor_plugin::{CreateRequest, Created, Credential, PluginError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing::{debug, warn};

use crate::access_keys::new_access_key;
use crate::config::{check_iam_name, AwsRole, CredentialType, LEASE_TAG, MAX_NAME_LEN, ROLE_TAG};
use crate::connection::AwsPlugin;
use crate::error::{classify, gone_ok, is_delete_conflict, is_no_such_entity};

/// The inline policy that holds a role's inline `policy_document` on an
/// IAM user.
const USER_POLICY_NAME: &str = "lessor";
/// How long `wait_until_usable` probes a new key before giving up waiting
/// (it then answers anyway: the key exists and will work shortly). Kept
/// under the broker's default operation timeout of 30 s.
const USABLE_DEADLINE: Duration = Duration::from_secs(20);

impl AwsPlugin {
    /// A new IAM user with its access key; on failure, deletes what it made.
    pub(crate) async fn create_user(
        &self,
        role: &AwsRole,
        request: &CreateRequest<'_>,
    ) -> Result<Created, PluginError> {
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
    pub(crate) async fn finish_user(
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
        let (access_key_id, secret) =
            new_access_key(iam, Some(username.to_string()), &what("CreateAccessKey")).await?;
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
    pub(crate) async fn delete_user(
        &self,
        username: &str,
        lease_id: &str,
        op: &str,
    ) -> Result<(), PluginError> {
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
    pub(crate) async fn delete_extras(&self, username: &str, op: &str) -> Result<(), PluginError> {
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

fn tag(key: &str, value: &str) -> Result<aws_sdk_iam::types::Tag, PluginError> {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| PluginError::Internal { message: format!("tag {key:?}: {e}") })
}
