//! `database/…`, `aws/…` and `ldap/…`: issuing credentials, reading static
//! ones and rotating, in the shapes of Vault's database, AWS and LDAP
//! secrets engines. A role or account answers only under the mount of its
//! plugin (`database/` for PostgreSQL, MySQL and Redis, `aws/` for AWS,
//! `ldap/` for LDAP).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use lessor_client::Credential;
use secrecy::ExposeSecret;
use serde_json::json;

use super::ids::{vault_id, Mount};
use super::{
    broker_error, duration_field, no_content, params, read_body, rotation_error, seconds_until, string_field,
    vault_time, Envelope,
};
use crate::broker::{BrokerError, Caller};
use crate::config::RotationSchedule;
use crate::http::audited::{intend, Irreversible, Issued};
use crate::http::{caller, wire, ApiError, AppState, Path};
use crate::policy::Denied;
use crate::rotation::{OperatorRequest, RotationError};

type VaultResult = Result<Response, ApiError>;

/// `GET database/creds/:role`
pub(super) async fn database_creds(
    State(state): State<AppState>,
    Path(role): Path<String>,
    request: Request,
) -> VaultResult {
    let caller = caller(request.extensions());
    issue(&state, Mount::Database, "creds", role, None, caller, Vec::new()).await
}

/// `GET ldap/creds/:role`
pub(super) async fn ldap_creds(
    State(state): State<AppState>,
    Path(role): Path<String>,
    request: Request,
) -> VaultResult {
    let caller = caller(request.extensions());
    issue(&state, Mount::Ldap, "creds", role, None, caller, Vec::new()).await
}

/// The mount a request's path is under (`/v1/aws/…`, `/v1/ldap/…`,
/// `/v1/database/…`).
fn mount_of(request: &Request) -> Mount {
    let path = request.uri().path();
    [Mount::Aws, Mount::Ldap]
        .into_iter()
        .find(|m| path.strip_prefix("/v1/").is_some_and(|p| p.starts_with(&format!("{}/", m.as_str()))))
        .unwrap_or(Mount::Database)
}

/// `GET|PUT|POST aws/creds/:role` (`ttl` in the query or the body).
pub(super) async fn aws_creds(state: State<AppState>, role: Path<String>, request: Request) -> VaultResult {
    aws(state, role, "creds", request).await
}

/// `GET|PUT|POST aws/sts/:role` (`ttl` in the query or the body).
pub(super) async fn aws_sts(state: State<AppState>, role: Path<String>, request: Request) -> VaultResult {
    aws(state, role, "sts", request).await
}

async fn aws(
    State(state): State<AppState>,
    Path(role): Path<String>,
    path: &str,
    request: Request,
) -> VaultResult {
    let caller = caller(request.extensions());
    let query = request.uri().query().map(str::to_string);
    let params = params(query.as_deref(), read_body(&state, request.into_body()).await?)?;
    let ttl = duration_field(&params, "ttl")?;
    let mut warnings = Vec::new();
    if string_field(&params, "role_arn")?.is_some() {
        warnings.push("role_arn is ignored: a lessor role names its ARN in the config".to_string());
    }
    issue(&state, Mount::Aws, path, role, ttl, caller, warnings).await
}

/// Whether a role or account of `plugin` lives under `mount`.
fn in_mount(mount: Mount, plugin: Option<&str>) -> bool {
    plugin.and_then(Mount::of_plugin) == Some(mount)
}

/// The answer for a role or account outside the mount asked for: as
/// unknown there as one that does not exist, but only to a caller allowed
/// to use it. The permission is asked first, as the broker and the rotator
/// ask it, so a refusal tells nothing of what exists.
fn unknown_here<T>(allowed: Result<T, Denied>, unknown: ApiError) -> ApiError {
    match allowed {
        Err(denied) => broker_error(denied.into()),
        Ok(_) => unknown,
    }
}

async fn issue(
    state: &AppState,
    mount: Mount,
    path: &str,
    role: String,
    ttl: Option<crate::config::Duration>,
    caller: Caller,
    warnings: Vec<String>,
) -> VaultResult {
    if !in_mount(mount, state.broker.role_plugin(&role)) {
        return Err(unknown_here(caller.may_issue(&role), broker_error(BrokerError::UnknownRole { role })));
    }
    let issued = state.broker.issue_detached(role, ttl, caller).await.map_err(broker_error)?;
    let credential = wire::credential(&issued.credential).ok_or_else(|| wire::unshown("Vault API"))?;
    let data = match credential {
        Credential::Database { username, password } => {
            json!({ "username": username, "password": password.expose_secret() })
        }
        // Vault's LDAP engine answers a dynamic credential so.
        Credential::Directory { username, distinguished_name, password } => json!({
            "username": username,
            "password": password.expose_secret(),
            "distinguished_names": [distinguished_name],
        }),
        Credential::Aws { access_key_id, secret_access_key, session_token, .. } => {
            let token = session_token.as_ref().map(|t| t.expose_secret());
            json!({
                "access_key": access_key_id,
                "secret_key": secret_access_key.expose_secret(),
                "security_token": token,
                "session_token": token,
            })
        }
    };
    let lease = &issued.lease;
    let mut response = Envelope {
        lease_id: vault_id(mount, path, &lease.id),
        renewable: lease.renewable,
        lease_duration: (lease.expires_at - lease.issued_at).num_seconds(),
        data: Some(data),
        warnings,
    }
    .into_response();
    // For the audit record, and for revocation should it fail to be written.
    response.extensions_mut().insert(Issued(lease.id.clone()));
    Ok(response)
}

/// `GET database/static-creds/:name`, `GET aws/static-creds/:name` and
/// `GET ldap/static-cred/:name`.
pub(super) async fn static_creds(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> VaultResult {
    let mount = mount_of(&request);
    let caller = caller(request.extensions());
    let kind = state.rotator.account_kind(&name);
    if !in_mount(mount, kind.map(|(plugin, _)| plugin)) {
        let unknown = rotation_error(RotationError::UnknownAccount { name: name.clone() });
        return Err(unknown_here(caller.may_read_static(&name), unknown));
    }
    let view = state.rotator.get(&name, &caller).await.map_err(rotation_error)?;
    let schedule = kind.map(|(_, schedule)| schedule);
    let secret = |s: &Option<secrecy::SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
    let credential = &view.credential;
    let mut data = match &credential.access_key_id {
        Some(key) => json!({ "access_key": key, "secret_key": secret(&credential.secret_access_key) }),
        None => json!({ "username": credential.username, "password": secret(&credential.password) }),
    };
    data["last_vault_rotation"] = json!(view.rotated_at.map(vault_time));
    data["ttl"] = json!(view.next_rotation_at.map_or(0, seconds_until));
    match schedule {
        Some(RotationSchedule::Period(period)) => data["rotation_period"] = json!(period.as_secs()),
        Some(RotationSchedule::Cron(_, text)) => {
            data["rotation_period"] = json!(0);
            data["rotation_schedule"] = json!(text);
        }
        // Rotated only on demand: no period, so Agent re-reads at its own
        // pace (5 minutes) rather than every `ttl + 1` = 1 s.
        _ => {}
    }
    Ok(Envelope { data: Some(data), ..Envelope::default() }.into_response())
}

/// `PUT|POST database/rotate-role/:name` (and `ldap/rotate-role/:name`):
/// an operator's rotation of a static account, with the account's
/// `overlap`. 204 once the new credential is current.
pub(super) async fn rotate_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> VaultResult {
    let mount = mount_of(&request);
    let caller = caller(request.extensions());
    if !in_mount(mount, state.rotator.account_kind(&name).map(|(plugin, _)| plugin)) {
        let unknown = rotation_error(RotationError::UnknownAccount { name: name.clone() });
        return Err(unknown_here(caller.may_rotate(&name), unknown));
    }
    caller.may_rotate(&name).map_err(|denied| broker_error(denied.into()))?;
    let intent = intend(&state.audit, &caller, Irreversible::RotateStatic { account: &name }).await?;
    let reason = format!("{}/rotate-role (Vault API)", mount.as_str());
    let request = OperatorRequest { reason: Some(reason), overlap: None };
    let rotated = state.rotator.rotate(&name, request, &caller).await;
    Ok(intent.answer(rotated.map(|_| no_content()).map_err(rotation_error)))
}

/// `PUT|POST database/rotate-root/:connection` (admins only, as
/// `POST /v1/connections/{name}/rotate-root`). 204 when done.
pub(super) async fn rotate_root(
    State(state): State<AppState>,
    Path(connection): Path<String>,
    request: Request,
) -> VaultResult {
    let caller = caller(request.extensions());
    if !in_mount(Mount::Database, state.rotator.connection_plugin(&connection)) {
        let allowed = caller.require_admin("rotate a connection's admin credential");
        return Err(unknown_here(
            allowed,
            rotation_error(RotationError::UnknownConnection { name: connection }),
        ));
    }
    caller
        .require_admin("rotate a connection's admin credential")
        .map_err(|denied| broker_error(denied.into()))?;
    let intent = intend(&state.audit, &caller, Irreversible::RotateRoot { connection: &connection }).await?;
    let rotated = state.rotator.rotate_root(&connection, &caller).await;
    Ok(intent.answer(rotated.map(|_| no_content()).map_err(rotation_error)))
}
