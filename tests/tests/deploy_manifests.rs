//! The Kustomize base in `deploy/kubernetes` renders, offline, into a DaemonSet Istio's
//! components accept in ztunnel's place: checked field by field against what istio-cni,
//! istiod, istioctl and the kubelet look for (deploy/README.md), on our own rendering of the
//! base and, when `kubectl` is installed (CI installs it), on `kubectl kustomize`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_yaml::Value;

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// What `kubectl kustomize` does with this base: its resources, with the namespace set and
/// the image renamed.
fn render_ourselves() -> Result<Vec<Value>> {
    let dir = base();
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    let ns = k["namespace"].as_str().context("namespace")?.to_string();
    let image = &k["images"][0];
    let new_image = format!(
        "{}:{}",
        image["newName"].as_str().context("newName")?,
        image["newTag"].as_str().context("newTag")?
    );
    let mut docs = Vec::new();
    for r in k["resources"].as_sequence().context("resources")? {
        let text = std::fs::read_to_string(dir.join(r.as_str().context("resource name")?))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(doc)?;
            v["metadata"]["namespace"] = Value::String(ns.clone());
            if let Some(cs) = v["spec"]["template"]["spec"]["containers"].as_sequence_mut() {
                for c in cs {
                    if c["image"].as_str() == image["name"].as_str() {
                        c["image"] = Value::String(new_image.clone());
                    }
                }
            }
            docs.push(v);
        }
    }
    Ok(docs)
}

fn render_with_kubectl() -> Result<Option<Vec<Value>>> {
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(base())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !out.status.success() {
        bail!(
            "kubectl kustomize failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(docs))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .with_context(|| format!("no {kind} in the rendered manifests"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn check(docs: &[Value]) -> Result<()> {
    let sa = find(docs, "ServiceAccount")?;
    ensure!(
        sa["metadata"]["name"] == "ztunnel",
        "istiod trusts only SA ztunnel"
    );
    ensure!(sa["metadata"]["namespace"] == "istio-system");

    let ds = find(docs, "DaemonSet")?;
    ensure!(ds["apiVersion"] == "apps/v1");
    ensure!(
        ds["metadata"]["name"] == "ztunnel",
        "istioctl reads DaemonSet ztunnel"
    );
    ensure!(ds["metadata"]["namespace"] == "istio-system");
    ensure!(ds["spec"]["selector"]["matchLabels"]["app"] == "ztunnel");
    let pod = &ds["spec"]["template"];
    ensure!(
        pod["metadata"]["labels"]["app"] == "ztunnel",
        "istio-cni finds app=ztunnel"
    );
    let spec = &pod["spec"];
    ensure!(spec["serviceAccountName"] == "ztunnel");
    ensure!(spec["priorityClassName"] == "system-node-critical");
    ensure!(
        spec["hostNetwork"].is_null(),
        "ztunnel runs in its own network namespace"
    );
    ensure!(spec["terminationGracePeriodSeconds"] == 30);
    let c = &spec["containers"][0];
    ensure!(c["name"] == "istio-proxy");
    ensure!(
        c["image"] == "ghcr.io/ringmesh/ringmesh:latest",
        "{:?}",
        c["image"]
    );
    ensure!(strings(&c["args"]) == ["run"]);
    ensure!(c["ports"][0]["containerPort"] == 15020 && c["ports"][0]["name"] == "ztunnel-stats");
    let probe = &c["readinessProbe"]["httpGet"];
    ensure!(probe["port"] == 15021 && probe["path"] == "/healthz/ready");
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] == false && sc["readOnlyRootFilesystem"] == true);
    ensure!(sc["runAsUser"] == 0 && sc["runAsGroup"] == 1337);
    ensure!(strings(&sc["capabilities"]["drop"]) == ["ALL"]);
    let add = strings(&sc["capabilities"]["add"]);
    for cap in ["NET_ADMIN", "SYS_ADMIN", "NET_RAW", "IPC_LOCK"] {
        ensure!(
            add.iter().any(|a| a == cap),
            "capability {cap} missing: {add:?}"
        );
    }
    ensure!(sc["seccompProfile"]["type"] == "Localhost");
    let profile = sc["seccompProfile"]["localhostProfile"]
        .as_str()
        .context("profile")?;
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(base().join(profile)).with_context(|| profile.to_string())?,
    )?;
    let denied: Vec<&str> = json["syscalls"][0]["names"]
        .as_array()
        .context("denied calls")?
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "setns",
    ] {
        ensure!(!denied.contains(&call), "the seccomp profile denies {call}");
    }
    for call in ["kexec_load", "init_module", "ptrace", "mount", "bpf"] {
        ensure!(denied.contains(&call), "the seccomp profile allows {call}");
    }

    let env: Vec<(&str, &Value)> = c["env"]
        .as_sequence()
        .context("env")?
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e)))
        .collect();
    let get = |n: &str| env.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    for name in [
        "XDS_ADDRESS",
        "CA_ADDRESS",
        "ISTIO_META_CLUSTER_ID",
        "RUST_LOG",
    ] {
        ensure!(
            get(name).is_some_and(|v| v["value"].is_string()),
            "env {name}"
        );
    }
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("NODE_NAME", "spec.nodeName"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ] {
        let v = get(name).with_context(|| format!("env {name}"))?;
        ensure!(
            v["valueFrom"]["fieldRef"]["fieldPath"] == field,
            "env {name}"
        );
    }

    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_sequence()
        .context("volumeMounts")?
        .iter()
        .filter_map(|m| Some((m["mountPath"].as_str()?, m["name"].as_str()?)))
        .collect();
    let volumes = spec["volumes"].as_sequence().context("volumes")?;
    for path in [
        "/var/run/secrets/istio",
        "/var/run/secrets/tokens",
        "/var/run/ztunnel",
        "/tmp",
    ] {
        let (_, name) = mounts
            .iter()
            .find(|(p, _)| *p == path)
            .with_context(|| format!("no mount at {path}"))?;
        ensure!(
            volumes.iter().any(|v| v["name"].as_str() == Some(name)),
            "mount {path} names volume {name}, which is not defined"
        );
    }
    let token = volumes
        .iter()
        .find(|v| v["name"] == "istio-token")
        .context("istio-token volume")?;
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    ensure!(sat["audience"] == "istio-ca" && sat["path"] == "istio-token");
    let sock = volumes
        .iter()
        .find(|v| v["name"] == "cni-ztunnel-sock-dir")
        .context("socket dir volume")?;
    ensure!(sock["hostPath"]["path"] == "/var/run/ztunnel");
    Ok(())
}

#[test]
fn the_base_renders_a_daemonset_istio_accepts_in_ztunnels_place() -> Result<()> {
    check(&render_ourselves()?).context("our rendering")?;
    match render_with_kubectl()? {
        Some(docs) => check(&docs).context("kubectl kustomize's rendering"),
        None if std::env::var_os("CI").is_some() => bail!("CI is set but kubectl is missing"),
        None => {
            eprintln!("kubectl not installed: checked our own rendering only");
            Ok(())
        }
    }
}
