//! `deploy/kubernetes/` holds together: no cluster is available here, so
//! every manifest is parsed (Python's `yaml`, from the venv of
//! scripts/test) and checked for the fields Kubernetes requires and for
//! how the pieces refer to each other: the ConfigMap's lessor.toml passes
//! `lessor config check`, the DaemonSet mounts what that config names, and
//! the sample pod is the workload its policy grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every `.yaml` file, by file name.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    let python = std::env::var("LESSOR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") {
            continue;
        }
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
            ])
            .arg(entry.path())
            .output()
            .expect("python runs");
        assert!(out.status.success(), "{name} is not YAML: {}", String::from_utf8_lossy(&out.stderr));
        let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.insert(name, docs.into_iter().filter(|d| !d.is_null()).collect());
    }
    all
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

#[test]
fn the_manifests_hold_together() {
    let all = manifests();
    let docs: Vec<&Value> = all.values().flatten().collect();
    let of_kind = |kind: &str| -> &Value {
        docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
    };
    // What every object needs.
    for doc in &docs {
        let kind = str_at(doc, "/kind");
        assert!(doc["apiVersion"].is_string(), "{kind} has no apiVersion");
        if kind != "Kustomization" {
            assert!(doc.pointer("/metadata/name").is_some_and(Value::is_string), "{kind} has no name");
        }
    }
    let kustomization = of_kind("Kustomization");
    for resource in kustomization["resources"].as_array().unwrap() {
        let file = resource.as_str().unwrap();
        assert!(all.contains_key(file), "the kustomization lists {file}, which is not there");
    }

    // The config: lessor.toml from the ConfigMap passes `lessor config check`
    // (its password file made where the Secret is mounted, in a temp root).
    let config_map = of_kind("ConfigMap");
    let toml_text = str_at(config_map, "/data/lessor.toml");
    let config: toml::Table = toml::from_str(toml_text).expect("lessor.toml is TOML");
    let engine_socket = config["containers"]["socket"].as_str().unwrap().to_string();
    let pods_dir = config["containers"]["kubelet_pods_dir"].as_str().unwrap().to_string();
    let password_file = config["connections"]["pg"]["password_file"].as_str().unwrap().to_string();
    let lessor_socket = config["server"]["socket"].as_str().unwrap().to_string();
    let keys_file = config["containers"]["service_account_keys"].as_str().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let relocated = toml_text
        .replace(&password_file, &root.path().join("pg-admin-password").display().to_string())
        .replace(&keys_file, &root.path().join("sa.pub").display().to_string())
        .replace("/var/lib/lessor", &root.path().display().to_string())
        .replace("/run/lessor", &root.path().display().to_string());
    std::fs::write(root.path().join("pg-admin-password"), "x\n").unwrap();
    std::fs::write(root.path().join("sa.pub"), str_at(config_map, "/data/sa.pub")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path().join("pg-admin-password"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let config_path = root.path().join("lessor.toml");
    std::fs::write(&config_path, relocated).unwrap();
    let out = Command::new(LESSOR).args(["config", "check"]).arg(&config_path).output().unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's lessor.toml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The DaemonSet mounts what the config names.
    let daemon_set = of_kind("DaemonSet");
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "lessor must see callers' pids in the host's pid namespace");
    assert_eq!(
        daemon_set["spec"]["selector"]["matchLabels"], daemon_set["spec"]["template"]["metadata"]["labels"],
        "the selector matches the template's labels"
    );
    let container = &pod["containers"][0];
    assert!(container["image"].is_string());
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let command: Vec<&str> = container[probe]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command, ["lessor", "status"], "{probe} asks /v1/health over the socket");
    }
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let volume_at = |path: &str| -> (&Value, &Value) {
        let mount = mounts
            .iter()
            .find(|m| path.starts_with(str_at(m, "/mountPath")))
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).expect("the mount's volume exists");
        (mount, volume)
    };
    let (mount, volume) = volume_at(&engine_socket);
    assert_eq!(mount["readOnly"], true, "the engine socket is mounted read-only");
    assert_eq!(str_at(volume, "/hostPath/path"), engine_socket);
    let (_, volume) = volume_at(&lessor_socket);
    assert_eq!(str_at(volume, "/hostPath/path"), "/run/lessor", "the socket is on the node for pods");
    let (mount, volume) = volume_at(&pods_dir);
    assert_eq!(
        (mount["readOnly"].clone(), str_at(volume, "/hostPath/path")),
        (Value::Bool(true), pods_dir.as_str())
    );
    let (_, volume) = volume_at(&password_file);
    let secret = of_kind("Secret");
    assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
    let key = Path::new(&password_file).file_name().unwrap().to_str().unwrap();
    assert!(secret["stringData"][key].is_string(), "the Secret has the key {key} the config reads");
    let (mount, volume) = volume_at(&keys_file);
    assert_eq!(mount["readOnly"], true);
    let key_name = Path::new(&keys_file).file_name().unwrap().to_str().unwrap();
    assert_eq!(
        volume["configMap"]["name"], config_map["metadata"]["name"],
        "the keys come from the ConfigMap"
    );
    assert!(config_map["data"][key_name].is_string(), "the ConfigMap has {key_name}");
    let (_, volume) = volume_at("/etc/lessor/lessor.toml");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    for doc in [daemon_set, config_map, secret] {
        assert_eq!(doc["metadata"]["namespace"], of_kind("Namespace")["metadata"]["name"]);
    }

    // The sample pod is the workload the policy grants, and asks for a
    // role the config defines, through the node's socket.
    let sample = of_kind("Pod");
    let policy = &config["policies"].as_array().unwrap()[0]["match"];
    assert_eq!(policy["k8s_namespace"].as_str(), sample["metadata"]["namespace"].as_str());
    assert_eq!(policy["k8s_service_account"].as_str(), sample["spec"]["serviceAccountName"].as_str());
    let app = &sample["spec"]["containers"][0];
    assert_eq!(policy["k8s_container"].as_str(), app["name"].as_str());
    let command: Vec<&str> = app["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(&command[1..4], ["exec", "--role", "billing_ro"]);
    assert!(config["roles"].as_table().unwrap().contains_key(command[3]));
    let socket_env = app["env"].as_array().unwrap().iter().find(|e| e["name"] == "LESSOR_SOCKET").unwrap();
    assert_eq!(socket_env["value"].as_str(), Some(lessor_socket.as_str()));
    let run =
        sample["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["hostPath"]["path"] == "/run/lessor");
    assert!(run.is_some(), "the sample pod mounts the node's /run/lessor");
}
