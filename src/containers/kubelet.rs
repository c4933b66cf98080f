//! A pod's service account, from the token the kubelet projects into it:
//! `<kubelet_pods_dir>/<pod uid>/volumes/kubernetes.io~projected/*/token`,
//! a JWT whose `kubernetes.io` claim names the pod and its service
//! account. A token counts only when:
//! - it is signed by one of the cluster's service-account keys
//!   (`service_account_keys`) and has not expired: a pod may put a file
//!   named `token` of its own into a projected volume (from a Secret or a
//!   ConfigMap), but only the API server can sign one;
//! - it lies in directories only root may write (the kubelet's);
//! - it names the very pod (uid and namespace) the engine said the
//!   container belongs to.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

/// The cluster's service-account public keys.
pub struct TokenKeys(Vec<DecodingKey>);

impl TokenKeys {
    /// Every `PUBLIC KEY` (RSA or EC) block of the PEM file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("-----BEGIN ") {
            let end_marker = "-----END ";
            let Some(end) = rest[start..].find(end_marker) else { break };
            let end = start + end + end_marker.len();
            let close = rest[end..].find("-----").map_or(rest.len(), |i| end + i + 5);
            let block = &rest[start..close];
            let key = DecodingKey::from_rsa_pem(block.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(block.as_bytes()))
                .map_err(|e| {
                    format!("{}: a block is neither an RSA nor an EC public key: {e}", path.display())
                })?;
            keys.push(key);
            rest = &rest[close..];
        }
        if keys.is_empty() {
            return Err(format!("{}: no PEM public key in it", path.display()));
        }
        Ok(Self(keys))
    }

    /// The claims of a token signed by one of the keys and not expired.
    fn claims(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::ES256 | Algorithm::ES384
        ) {
            return None;
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 60;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        self.0
            .iter()
            .find_map(|key| jsonwebtoken::decode::<Claims>(token, key, &validation).ok().map(|d| d.claims))
    }
}

/// The service account of pod `pod_uid` in `namespace`, or `None` when no
/// signed token of that pod lies in a directory only root may write.
/// Blocking.
pub fn service_account(
    pods: &Path,
    pod_uid: &str,
    namespace: Option<&str>,
    keys: &TokenKeys,
) -> Option<String> {
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
        let Some(claims) = keys.claims(token.trim()) else { continue };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// An RSA key pair made by openssl: (private PEM, public PEM).
    fn key_pair(dir: &Path, name: &str) -> (Vec<u8>, std::path::PathBuf) {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let ok = Command::new("openssl").args(["genrsa", "-out"]).arg(&private).arg("2048").output().unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let ok = Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        (std::fs::read(&private).unwrap(), public)
    }

    fn token(private: &[u8], namespace: &str, pod_uid: &str, account: &str, exp_in: i64) -> String {
        let claims = serde_json::json!({
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "exp": chrono::Utc::now().timestamp() + exp_in,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": { "name": "billing-7d4f", "uid": pod_uid },
                "serviceaccount": { "name": account, "uid": "0b1c" },
            },
        });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::RS256), &claims, &key).unwrap()
    }

    #[test]
    fn only_a_signed_unexpired_token_of_that_pod_names_its_service_account() {
        if unsafe { libc::getuid() } != 0 {
            eprintln!("skipped: the kubelet's directories are root's; this test runs as root");
            return;
        }
        let keys_dir = tempfile::tempdir().unwrap();
        let (cluster, cluster_pub) = key_pair(keys_dir.path(), "cluster");
        let (other, _) = key_pair(keys_dir.path(), "other");
        let keys = TokenKeys::load(&cluster_pub).unwrap();
        let pods = tempfile::tempdir().unwrap();
        std::fs::set_permissions(pods.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let volume = pods.path().join("pod-1/volumes/kubernetes.io~projected/kube-api-access-x1");
        std::fs::create_dir_all(&volume).unwrap();
        let found = |uid: &str, ns: Option<&str>| service_account(pods.path(), uid, ns, &keys);
        std::fs::write(volume.join("token"), token(&cluster, "billing", "pod-1", "billing-app", 3600))
            .unwrap();
        assert_eq!(found("pod-1", Some("billing")).as_deref(), Some("billing-app"));
        assert_eq!(found("pod-1", Some("web")), None, "another namespace than the engine's label");
        assert_eq!(found("pod-2", Some("billing")), None);
        assert_eq!(found("../pod-1", None), None);
        // Signed by another key (a pod's own, say), expired, or not signed.
        std::fs::write(volume.join("token"), token(&other, "billing", "pod-1", "admin", 3600)).unwrap();
        assert_eq!(found("pod-1", Some("billing")), None, "another key's signature");
        std::fs::write(volume.join("token"), token(&cluster, "billing", "pod-1", "billing-app", -3600))
            .unwrap();
        assert_eq!(found("pod-1", Some("billing")), None, "expired an hour ago");
        let signed = token(&cluster, "billing", "pod-1", "billing-app", 3600);
        let unsigned = format!("{}.c2ln", signed.rsplit_once('.').unwrap().0);
        std::fs::write(volume.join("token"), unsigned).unwrap();
        assert_eq!(found("pod-1", Some("billing")), None, "a forged signature");
        // A token for another pod, planted in this pod's volume.
        std::fs::write(volume.join("token"), token(&cluster, "billing", "pod-9", "admin", 3600)).unwrap();
        assert_eq!(found("pod-1", Some("billing")), None);
        // A directory others may write: not the kubelet's.
        std::fs::write(volume.join("token"), signed).unwrap();
        std::fs::set_permissions(pods.path().join("pod-1/volumes"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        assert_eq!(found("pod-1", Some("billing")), None);
        // A key file without a key.
        std::fs::write(keys_dir.path().join("empty.pub"), "nothing\n").unwrap();
        let empty = TokenKeys::load(&keys_dir.path().join("empty.pub"));
        assert!(matches!(empty, Err(e) if e.contains("no PEM public key")));
    }
}
