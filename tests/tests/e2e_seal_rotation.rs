//! Seal-key rotation through the running system, on both store backends: clusters made under
//! the old key; the services restarted with the new key first and the old one after it work on
//! them (old values still open, new ones sealed under the new key); `ksctl-manager reseal`
//! moves every stored secret to the new key (and a second run finds nothing left); with the old
//! key gone, the clusters still scale, switch and delete.
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::{BootstrapRecord, InfraRecord, SealedFields};
use ksctl_tests::{Backend, System, SystemOptions, bin};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const SERVICES: [&str; 4] =
    ["ksctl-manager", "ksctl-cloud-controller", "ksctl-bootstrap-controller", "ksctl-k8s-controller"];

async fn restart_all(sys: &mut System, keys: &str) {
    for b in SERVICES {
        sys.kill9(b);
        sys.set_env(b, "KSCTL_SEAL_KEY", Some(keys));
        sys.restart(b);
    }
    // Back once the manager answers queries again.
    ksctl_tests::eventually(T, "the manager answering", || async {
        (sys.ksctl(&["cluster", "list"]).await.0 == 0).then_some(())
    })
    .await;
}

/// The key ids of every sealed value of cluster `name`.
async fn key_ids(sys: &System, name: &str) -> Vec<Option<String>> {
    let id = ClusterId::new(name).unwrap();
    let mut out = vec![];
    if let Some((mut r, _)) = ksctl_store::get_json::<InfraRecord>(sys.store.as_ref(), &keys::cloud(&id)).await.unwrap()
    {
        out.extend(
            r.sealed_mut(&id).into_iter().filter_map(|(_, s)| s.as_ref().map(|s| s.key_id().map(str::to_string))),
        );
    }
    if let Some((mut r, _)) =
        ksctl_store::get_json::<BootstrapRecord>(sys.store.as_ref(), &keys::bootstrap(&id)).await.unwrap()
    {
        out.extend(
            r.sealed_mut(&id).into_iter().filter_map(|(_, s)| s.as_ref().map(|s| s.key_id().map(str::to_string))),
        );
    }
    out
}

async fn reseal(sys: &System, keys: &str) -> String {
    let mut cmd = tokio::process::Command::new(bin("ksctl-manager"));
    for (k, v) in sys.base_env() {
        cmd.env(k, v);
    }
    let out = cmd.env("KSCTL_SEAL_KEY", keys).arg("reseal").output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn rotation(backend: Backend) {
    let mut sys = System::start(SystemOptions { backend, ..Default::default() }).await;
    let old = sys.seal_key.clone();
    let old_id = ksctl_core::seal::Sealer::from_base64(&old).unwrap().key_id().to_string();
    for name in ["rot1", "rot2"] {
        let (code, out, err) = sys.create_ha(name, 1, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let before = key_ids(&sys, "rot1").await;
    assert!(before.len() >= 3 && before.iter().all(|k| k.as_deref() == Some(old_id.as_str())), "{before:?}");

    // The new key first, the old one still accepted.
    let new = ksctl_core::seal::generate_key();
    let new_id = ksctl_core::seal::Sealer::from_base64(&new).unwrap().key_id().to_string();
    let both = format!("{new},{old}");
    restart_all(&mut sys, &both).await;
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "rot1", "--workers", "2"]).await;
    assert_eq!(code, 0, "old secrets open under the new key ring: {out}{err}");
    let (code, out, err) = sys.ksctl(&["cluster", "switch", "rot2", "--print"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rot2"), "{out}");

    let first = reseal(&sys, &both).await;
    assert!(!first.starts_with("0 ") && first.contains("secrets sealed again"), "{first}");
    let second = reseal(&sys, &both).await;
    assert!(second.starts_with("0 secrets sealed again"), "{second}");
    for name in ["rot1", "rot2"] {
        let ids = key_ids(&sys, name).await;
        assert!(!ids.is_empty(), "{name}: no sealed secrets found to check");
        assert!(ids.iter().all(|k| k.as_deref() == Some(new_id.as_str())), "{name}: {ids:?}");
    }

    // The old key retired: everything still opens.
    restart_all(&mut sys, &new).await;
    let (code, out, err) = sys.ksctl(&["cluster", "switch", "rot1", "--print"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for name in ["rot1", "rot2"] {
        let (code, out, err) = sys.ksctl(&["cluster", "delete", name]).await;
        assert_eq!(code, 0, "{out}{err}");
        sys.wait_gone(name, T).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_keys_rotate_on_redis() {
    rotation(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_keys_rotate_on_nats_kv() {
    rotation(Backend::Nats).await;
}
