//! Merges a cluster's kubeconfig into the user's: its cluster, user and context replace any of
//! the same name, everything else stays, and it becomes the current context.
use anyhow::{Context, Result};
use serde_yaml::Value;

pub fn default_path() -> String {
    if let Ok(k) = std::env::var("KUBECONFIG")
        && let Some(first) = k.split(':').find(|s| !s.is_empty())
    {
        return first.to_string();
    }
    format!("{}/.kube/config", std::env::var("HOME").unwrap_or_else(|_| ".".into()))
}

pub fn merge(existing: Option<&str>, new: &str, context: &str) -> Result<String> {
    // What goes into the operator's kubeconfig is checked too: no command, file or TLS bypass.
    ksctl_core::kubeconfig::Access::parse_foreign(new)
        .map_err(|e| anyhow::anyhow!("the control plane returned a kubeconfig ksctl will not merge: {e}"))?;
    let new: Value = serde_yaml::from_str(new).context("the control plane returned an unreadable kubeconfig")?;
    let mut base: Value = match existing {
        Some(t) if !t.trim().is_empty() => serde_yaml::from_str(t).context("your kubeconfig is not valid YAML")?,
        _ => serde_yaml::from_str("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")
            .expect("static"),
    };
    let map = base.as_mapping_mut().context("your kubeconfig is not a YAML mapping")?;
    for section in ["clusters", "users", "contexts"] {
        let incoming = new.get(section).and_then(Value::as_sequence).cloned().unwrap_or_default();
        let list = map.entry(Value::from(section)).or_insert_with(|| Value::Sequence(vec![]));
        if !list.is_sequence() {
            *list = Value::Sequence(vec![]);
        }
        let seq = list.as_sequence_mut().expect("made a sequence");
        for item in incoming {
            let name = item.get("name").cloned();
            seq.retain(|e| e.get("name") != name.as_ref());
            seq.push(item);
        }
    }
    map.insert(Value::from("current-context"), Value::from(context));
    Ok(serde_yaml::to_string(&base)?)
}

pub fn merge_into(path: &str, new: &str, context: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).ok();
    let merged = merge(existing.as_deref(), new, context)?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written to a temporary file and renamed, so a crash never leaves half a kubeconfig.
    let tmp = format!("{path}.ksctl-tmp");
    std::fs::write(&tmp, merged).with_context(|| format!("writing {tmp}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://new', certificate-authority-data: 'LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkEKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo='}\nusers:\n- name: u1\n  user: {token: t}\ncontexts:\n- name: c1\n  context: {cluster: c1, user: u1}\ncurrent-context: c1\n";

    #[test]
    fn merge_replaces_same_names_and_keeps_others() {
        let old = "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://old'}\n- name: other\n  cluster: {server: 'https://x'}\nusers: []\ncontexts: []\ncurrent-context: other\n";
        let out = merge(Some(old), NEW, "c1").unwrap();
        let v: Value = serde_yaml::from_str(&out).unwrap();
        let clusters = v["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 2);
        assert!(out.contains("https://new") && !out.contains("https://old"));
        assert_eq!(v["current-context"], Value::from("c1"));
    }

    #[test]
    fn a_kubeconfig_that_runs_commands_is_not_merged() {
        let evil = NEW.replace("user: {token: t}", "user: {exec: {command: sh, apiVersion: v1}}");
        let err = merge(None, &evil, "c1").unwrap_err().to_string();
        assert!(err.contains("exec"), "{err}");
    }

    #[test]
    fn merge_into_nothing() {
        let out = merge(None, NEW, "c1").unwrap();
        assert!(out.contains("https://new"));
    }
}
