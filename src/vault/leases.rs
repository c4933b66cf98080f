//! `sys/leases/…`: renew, look up, list and revoke leases, as Vault's
//! `http/sys_lease.go` and `api/sys_leases.go` have them. Lease ids come in
//! either form (Vault's `database/creds/app_ro/<id>` or lessor's
//! `app_ro/<id>`); answers use the form the client sent.

use std::collections::BTreeSet;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use super::ids::{self, vault_id, Mount};
use super::{
    bool_field, broker_error, duration_field, no_content, read_body, seconds_until, string_field, vault_time,
    Envelope,
};
use crate::broker::{Broker, BrokerError, Caller};
use crate::http::audited::{intend, Irreversible};
use crate::http::{caller, detached, serde_urlencoded_pairs, ApiError, AppState};
use crate::lease::{LeaseId, LeaseState};

type VaultResult = Result<Response, ApiError>;

/// What follows `prefix` in the request's path, percent-decoded; `None`
/// when the route has no such part.
fn path_tail(request: &Request, prefix: &str) -> Result<Option<String>, ApiError> {
    let Some(tail) = request.uri().path().strip_prefix(prefix) else { return Ok(None) };
    percent_encoding::percent_decode_str(tail)
        .decode_utf8()
        .map(|t| Some(t.into_owned()))
        .map_err(|_| ApiError::bad_request("the path is not valid UTF-8"))
}

/// A lease id as the client sent it, and lessor's. A Vault-form id whose
/// mount is not its role's is no lease.
fn lease_id(broker: &Broker, raw: &str) -> Result<(String, LeaseId), ApiError> {
    let invalid = || ApiError::bad_request("invalid lease");
    let (mount, id) = ids::parse(raw).ok_or_else(invalid)?;
    let role_mount = broker.role_plugin(id.role()).and_then(Mount::of_plugin);
    match (mount, role_mount) {
        (Some(given), Some(actual)) if given != actual => Err(invalid()),
        (Some(_), _) => Ok((raw.trim_matches('/').to_string(), id)),
        (None, Some(actual)) => Ok((vault_id(actual, "creds", &id), id)),
        (None, None) => Ok((id.to_string(), id)),
    }
}

/// The lease id of a request: the path's tail, else the body's `lease_id`.
async fn requested_lease(
    state: &AppState,
    request: Request,
    route: Option<&str>,
) -> Result<(String, LeaseId, serde_json::Map<String, serde_json::Value>), ApiError> {
    let from_path = match route {
        Some(route) => path_tail(&request, route)?.filter(|t| !t.is_empty()),
        None => None,
    };
    let params = read_body(state, request.into_body()).await?;
    let raw = match from_path {
        Some(raw) => raw,
        None => string_field(&params, "lease_id")?
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ApiError::bad_request("lease_id must be specified"))?,
    };
    let (shown, id) = lease_id(&state.broker, &raw)?;
    Ok((shown, id, params))
}

/// `PUT sys/leases/renew` (`{lease_id, increment}`) and
/// `PUT sys/leases/renew/:lease_id`. An increment of 0 or none is the
/// role's default TTL; past the lease's max_ttl it is capped, with Vault's
/// warning, which is how Agent learns to fetch a new credential.
pub(super) async fn renew(State(state): State<AppState>, request: Request) -> VaultResult {
    let caller = caller(request.extensions());
    let (shown, id, params) = requested_lease(&state, request, Some("/v1/sys/leases/renew/")).await?;
    let increment = duration_field(&params, "increment")?;
    let broker = state.broker.clone();
    let renewed = match detached(async move { broker.renew(&id, increment, &caller).await }).await {
        Ok(renewed) => renewed,
        // Vault's words and status for renewing what is gone or going.
        Err(BrokerError::UnknownLease { .. } | BrokerError::Conflict { state: "revoked", .. }) => {
            return Err(ApiError::bad_request("lease not found"))
        }
        Err(e @ BrokerError::Conflict { .. }) => return Err(ApiError::bad_request(e.to_string())),
        Err(e) => return Err(broker_error(e)),
    };
    let ttl = seconds_until(renewed.expires_at);
    let mut warnings = Vec::new();
    if let Some(asked) = increment.filter(|i| i.as_secs() > ttl as u64 + 1) {
        warnings.push(format!(
            "TTL of \"{asked}\" exceeded the effective max_ttl of \"{ttl}s\"; TTL value is capped accordingly"
        ));
    }
    Ok(Envelope {
        lease_id: shown,
        // Still renewable when capped, as Vault answers: Agent's lifetime
        // watcher sees the short TTL, not a refusal, and fetches anew in time.
        renewable: renewed.renewable,
        lease_duration: ttl,
        warnings,
        ..Envelope::default()
    }
    .into_response())
}

/// `PUT sys/leases/lookup` (`{lease_id}`): the lease's times. A revoked
/// lease is gone, as in Vault.
pub(super) async fn lookup(State(state): State<AppState>, request: Request) -> VaultResult {
    let caller = caller(request.extensions());
    let (shown, id, _) = requested_lease(&state, request, None).await?;
    let lease = state.broker.get(&id, &caller).await.map_err(broker_error)?;
    if lease.state == LeaseState::Revoked {
        return Err(broker_error(BrokerError::UnknownLease { id: id.to_string() }));
    }
    let ttl = if lease.state == LeaseState::Active { seconds_until(lease.expires_at) } else { 0 };
    // The path that issued it, as Vault shows it: the id less its last part.
    let path = shown.rsplit_once('/').map_or("", |(path, _)| path);
    let data = json!({
        "id": shown,
        "issue_time": vault_time(lease.issued_at),
        "expire_time": vault_time(lease.expires_at),
        "last_renewal": null,
        "path": path,
        "renewable": lease.renewable && lease.state == LeaseState::Active,
        "ttl": ttl,
    });
    Ok(Envelope { data: Some(data), ..Envelope::default() }.into_response())
}

/// `LIST sys/leases/lookup/:prefix` (or `GET …?list=true`): the next path
/// segment of every lease under the prefix the caller may see (an admin
/// sees all, anyone else their own), as `{"keys":[…]}`.
pub(super) async fn list(State(state): State<AppState>, request: Request) -> VaultResult {
    let listing = request.method().as_str() == "LIST"
        || (request.method() == Method::GET
            && serde_urlencoded_pairs(request.uri().query().unwrap_or(""))?
                .iter()
                .any(|(k, v)| k == "list" && v == "true"));
    if !listing {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "unsupported operation",
        ));
    }
    let caller = caller(request.extensions());
    let prefix = path_tail(&request, "/v1/sys/leases/lookup/")?.unwrap_or_default();
    let mut keys = BTreeSet::new();
    for selected in selected_roles(&state.broker, &prefix) {
        for lease in state.broker.list_all(&selected.within, &caller).await.map_err(broker_error)? {
            if lease.state == LeaseState::Revoked {
                continue;
            }
            let id = vault_id(selected.mount, selected.path, &lease.id);
            if let Some(key) = ids::next_key(&selected.vault_prefix, &id) {
                keys.insert(key.to_string());
            }
        }
    }
    if keys.is_empty() {
        return Ok((StatusCode::NOT_FOUND, Json(json!({ "errors": [] }))).into_response());
    }
    Ok(Envelope { data: Some(json!({ "keys": keys })), ..Envelope::default() }.into_response())
}

/// One configured role's leases a prefix reaches.
struct Selected {
    mount: Mount,
    /// The issuing path the prefix is under (`creds`, `sts`).
    path: &'static str,
    /// The prefix in Vault's form, as a folder.
    vault_prefix: String,
    /// The lessor prefix of the leases it selects.
    within: String,
}

/// Each configured role's leases a prefix (Vault's form or lessor's)
/// reaches.
fn selected_roles(broker: &Broker, prefix: &str) -> Vec<Selected> {
    broker
        .role_names()
        .filter_map(|role| {
            let mount = broker.role_plugin(role).and_then(Mount::of_plugin)?;
            let vault_prefix = ids::in_vault_form(prefix, mount);
            let (path, within) = ids::role_prefix(&vault_prefix, mount, role)?;
            Some(Selected { mount, path, vault_prefix, within })
        })
        .collect()
}

/// `PUT sys/leases/revoke` (`{lease_id, sync}`) and
/// `PUT sys/leases/revoke/:lease_id`: 204 once revoked (`sync`, the
/// default), 202 once queued. A lease that is not (or no longer) known is
/// revoked already, as Vault answers it; so is one that is not the
/// caller's (nothing is done), so a stranger cannot tell the two apart.
pub(super) async fn revoke(State(state): State<AppState>, request: Request) -> VaultResult {
    let caller = caller(request.extensions());
    let (_, id, params) = requested_lease(&state, request, Some("/v1/sys/leases/revoke/")).await?;
    let sync = bool_field(&params, "sync")?.unwrap_or(true);
    let broker = state.broker.clone();
    if !sync {
        // Whose it is is decided before the answer; the work is not waited for.
        match broker.get(&id, &caller).await {
            Ok(_) => {
                let (broker, caller) = (broker.clone(), caller.clone());
                broker.clone().tasks().spawn(async move { broker.revoke(&id, false, &caller).await });
            }
            Err(BrokerError::UnknownLease { .. }) => {}
            Err(e) => return Err(broker_error(e)),
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    match detached(async move { broker.revoke(&id, false, &caller).await }).await {
        Ok(_) | Err(BrokerError::UnknownLease { .. }) => Ok(no_content()),
        Err(e) => Err(broker_error(e)),
    }
}

/// `PUT sys/leases/revoke-prefix/:prefix` (admins only).
pub(super) async fn revoke_prefix(state: State<AppState>, request: Request) -> VaultResult {
    revoke_under(state, request, "/v1/sys/leases/revoke-prefix/", false).await
}

/// `PUT sys/leases/revoke-force/:prefix` (admins only): leases whose
/// revocation the backend refuses are dropped all the same.
pub(super) async fn revoke_force(state: State<AppState>, request: Request) -> VaultResult {
    revoke_under(state, request, "/v1/sys/leases/revoke-force/", true).await
}

async fn revoke_under(
    State(state): State<AppState>,
    request: Request,
    route: &str,
    force: bool,
) -> VaultResult {
    let caller = caller(request.extensions());
    // First, so that a prefix selecting nothing is no way around it.
    caller.require_admin("revoke leases by prefix").map_err(|e| broker_error(e.into()))?;
    let prefix = path_tail(&request, route)?.unwrap_or_default();
    if prefix.trim_matches('/').is_empty() {
        // As lessor's own revoke -prefix: everything is never meant.
        return Err(ApiError::bad_request("a prefix is required, e.g. database/creds/app_ro"));
    }
    let params = read_body(&state, request.into_body()).await?;
    let sync = bool_field(&params, "sync")?.unwrap_or(true);
    let intent = intend(&state.audit, &caller, Irreversible::RevokePrefix { prefix: &prefix, force }).await?;
    let broker = state.broker.clone();
    let audit = state.audit.clone();
    let work = async move {
        let failed = revoke_selected(&broker, &prefix, force, &caller).await;
        (failed, prefix, caller)
    };
    if !sync {
        let queued = intent.clone();
        state.broker.tasks().spawn(async move {
            let (outcome, prefix, caller) = work.await;
            let action = Irreversible::RevokePrefix { prefix: &prefix, force };
            let failure = outcome.map_err(broker_error).and_then(not_revoked).err();
            if let Some(e) = &failure {
                warn!(error = ?e, "revoke-prefix (queued): not every lease was revoked");
            }
            queued.finished(&audit, &caller, action, failure.as_ref());
        });
        return Ok(intent.queued(StatusCode::ACCEPTED.into_response()));
    }
    let answer = match tokio::spawn(work).await {
        Ok((outcome, _, _)) => outcome.map_err(broker_error).and_then(not_revoked).map(|()| no_content()),
        Err(e) => Err(broker_error(BrokerError::Internal { message: e.to_string() })),
    };
    Ok(intent.answer(answer))
}

/// The answer when some leases of a revoke-prefix were not revoked (each
/// stays scheduled for retry).
fn not_revoked(failed: Vec<(LeaseId, BrokerError)>) -> Result<(), ApiError> {
    if failed.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = failed.iter().take(10).map(|(id, e)| format!("{id}: {e}")).collect();
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "backend_failed",
        format!(
            "failed to revoke {} lease(s); each stays scheduled for retry: {}",
            failed.len(),
            shown.join("; ")
        ),
    ))
}

/// Revokes what a Vault prefix selects: one lease when it is a lease id,
/// else every lease of every role under it. Returns the failures.
async fn revoke_selected(
    broker: &Broker,
    prefix: &str,
    force: bool,
    caller: &Caller,
) -> Result<Vec<(LeaseId, BrokerError)>, BrokerError> {
    // One lease, when the prefix is one's id (never when it ends in `/`);
    // an id that names no lease is a prefix after all (`database/creds`).
    if !prefix.ends_with('/') {
        if let Ok((_, id)) = lease_id(broker, prefix) {
            match broker.revoke(&id, force, caller).await {
                Ok(_) => return Ok(Vec::new()),
                Err(BrokerError::UnknownLease { .. }) => {}
                Err(e) => return Ok(vec![(id, e)]),
            }
        }
    }
    let mut failed = Vec::new();
    for selected in selected_roles(broker, prefix) {
        failed.extend(broker.revoke_prefix(&selected.within, force, caller).await?.1);
    }
    Ok(failed)
}
