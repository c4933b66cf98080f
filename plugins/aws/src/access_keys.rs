//! An IAM user's access keys as a static account (the `access_key`
//! strategy): lessor makes the new key, tests it, and deletes the old one
//! when the overlap ends. IAM allows two keys per user, exactly what a
//! hand-over needs; a key lessor made in a rotation that crashed before
//! recording it is deleted before the next one is made.

use lessor_plugin::PluginError;
use secrecy::SecretString;
use tracing::{debug, info};

use crate::connection::AwsPlugin;
use crate::error::{classify, gone_ok};

impl AwsPlugin {
    /// Deletes the user's keys not in `keep` (with `None`, none), then
    /// CreateAccessKey.
    pub(crate) async fn create_account_key(
        &self,
        username: &str,
        keep: Option<&[String]>,
    ) -> Result<(String, SecretString), PluginError> {
        let iam = self.iam().await;
        let what = |api: &str| format!("new key for {username} ({api})");
        let listed = iam
            .list_access_keys()
            .set_user_name(user_name(username))
            .send()
            .await
            .map_err(|e| classify(&e, &what("ListAccessKeys")))?;
        for key in listed.access_key_metadata() {
            let Some(id) = key.access_key_id() else { continue };
            if keep.is_some_and(|keep| !keep.iter().any(|k| k == id)) {
                gone_ok(
                    iam.delete_access_key().set_user_name(user_name(username)).access_key_id(id).send().await,
                    &what("DeleteAccessKey of an unrecorded key"),
                )?;
                info!(connection = %self.settings.name, username, access_key_id = id, "deleted a key no rotation recorded");
            }
        }
        let (id, secret) = new_access_key(&iam, user_name(username), &what("CreateAccessKey")).await?;
        debug!(connection = %self.settings.name, username, access_key_id = id, "key created");
        Ok((id, secret))
    }

    /// DeleteAccessKey; a key that is gone already counts as deleted.
    pub(crate) async fn delete_account_key(&self, username: &str, key_id: &str) -> Result<(), PluginError> {
        let iam = self.iam().await;
        gone_ok(
            iam.delete_access_key().set_user_name(user_name(username)).access_key_id(key_id).send().await,
            &format!("delete key {key_id} of {username} (DeleteAccessKey)"),
        )?;
        debug!(connection = %self.settings.name, username, access_key_id = key_id, "key deleted");
        Ok(())
    }
}

/// CreateAccessKey for `username` (`None`: the caller's own user): the new
/// key's id and secret. `what` names the step in errors.
pub(crate) async fn new_access_key(
    iam: &aws_sdk_iam::Client,
    username: Option<String>,
    what: &str,
) -> Result<(String, SecretString), PluginError> {
    let key = iam
        .create_access_key()
        .set_user_name(username)
        .send()
        .await
        .map_err(|e| classify(&e, what))?
        .access_key
        .ok_or_else(|| PluginError::Rejected { message: format!("{what}: no key in the answer") })?;
    Ok((key.access_key_id().to_string(), SecretString::from(key.secret_access_key())))
}

/// IAM's key APIs act on the caller's own user when no user name is given:
/// `""` stands for that (lessor's own key, rotated by `rotate-root`).
fn user_name(username: &str) -> Option<String> {
    (!username.is_empty()).then(|| username.to_string())
}
