//! A pod's service account, from the token the kubelet projects into it:
//! `<kubelet_pods_dir>/<pod uid>/volumes/kubernetes.io~projected/*/token`,
//! a JWT whose `kubernetes.io` claim names the pod and its service
//! account. The kubelet writes it (root, in directories nobody else may
//! write); the pod sees it read-only. Its signature is not checked: what
//! vouches for it is where it lies, as for the engine's labels, and it
//! counts only when it names the very pod (uid and namespace) the engine
//! said the container belongs to.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use tracing::debug;

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: Kubernetes,
}

#[derive(Deserialize)]
struct Kubernetes {
    namespace: String,
    pod: Named,
    serviceaccount: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    uid: Option<String>,
}

/// The service account of pod `pod_uid` in `namespace`, or `None` when no
/// token of that pod lies in a directory only root may write. Blocking.
pub fn service_account(pods: &Path, pod_uid: &str, namespace: Option<&str>) -> Option<String> {
    if pod_uid.is_empty() || pod_uid.contains(['/', '.']) {
        return None;
    }
    let pod = pods.join(pod_uid);
    let projected = pod.join("volumes").join("kubernetes.io~projected");
    if ![pods, &pod, &pod.join("volumes"), &projected].iter().all(|dir| root_only(dir)) {
        debug!(pod = pod_uid, "the pod's volumes are not root's alone: no service account");
        return None;
    }
    for volume in std::fs::read_dir(&projected).ok()?.flatten() {
        if !root_only(&volume.path()) {
            continue;
        }
        let Ok(token) = std::fs::read_to_string(volume.path().join("token")) else { continue };
        let Some(claims) = claims(token.trim()) else { continue };
        let k = claims.kubernetes;
        if k.pod.uid.as_deref() == Some(pod_uid) && namespace.is_none_or(|ns| ns == k.namespace) {
            return Some(k.serviceaccount.name);
        }
    }
    None
}

fn root_only(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token(namespace: &str, pod_uid: &str, account: &str) -> String {
        let claims = serde_json::json!({
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": { "name": "billing-7d4f", "uid": pod_uid },
                "serviceaccount": { "name": account, "uid": "0b1c" },
            },
        });
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.c2ln", b64(br#"{"alg":"RS256"}"#), b64(claims.to_string().as_bytes()))
    }

    #[test]
    fn the_projected_token_names_the_service_account_of_that_pod_only() {
        if unsafe { libc::getuid() } != 0 {
            eprintln!("skipped: the kubelet's directories are root's; this test runs as root");
            return;
        }
        let pods = tempfile::tempdir().unwrap();
        std::fs::set_permissions(pods.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let volume = pods.path().join("pod-1/volumes/kubernetes.io~projected/kube-api-access-x1");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("token"), token("billing", "pod-1", "billing-app")).unwrap();
        let found = |uid: &str, ns: Option<&str>| service_account(pods.path(), uid, ns);
        assert_eq!(found("pod-1", Some("billing")).as_deref(), Some("billing-app"));
        assert_eq!(found("pod-1", Some("web")), None, "another namespace than the engine's label");
        assert_eq!(found("pod-2", Some("billing")), None);
        assert_eq!(found("../pod-1", None), None);
        // A token for another pod, planted in this pod's volume.
        std::fs::write(volume.join("token"), token("billing", "pod-9", "admin")).unwrap();
        assert_eq!(found("pod-1", Some("billing")), None);
        // A directory others may write: not the kubelet's.
        std::fs::write(volume.join("token"), token("billing", "pod-1", "billing-app")).unwrap();
        std::fs::set_permissions(pods.path().join("pod-1/volumes"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        assert_eq!(found("pod-1", Some("billing")), None);
    }
}
