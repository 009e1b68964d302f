//! Tables for people, JSON for scripts.
use crate::Output;
use ksctl_core::messages::{ClusterInfo, ClusterSummary, RequestReply};
use ksctl_core::spec::{Cni, Provider};

pub fn summaries(o: Output, rows: &[ClusterSummary]) {
    if o == Output::Json {
        let v =
            if rows.len() == 1 { serde_json::to_string_pretty(&rows[0]) } else { serde_json::to_string_pretty(rows) };
        println!("{}", v.expect("serialises"));
        return;
    }
    println!(
        "{:<24} {:<12} {:<12} {:<8} {:<10} {:<20} {:>3} {:>3} {:>3} {:>3}  OPERATION",
        "NAME", "CLOUD", "TYPE", "DISTRO", "REGION", "STATE", "CP", "DS", "WP", "MP"
    );
    for r in rows {
        let op = r.operation.as_ref().map(|o| format!("{} ({})", o.kind, o.phase)).unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<12} {:<12} {:<8} {:<10} {:<20} {:>3} {:>3} {:>3} {:>3}  {op}",
            r.name,
            Provider::parse(&r.provider).map_or(r.provider.clone(), |p| p.shown().to_string()),
            r.cluster_type,
            r.distro.as_deref().unwrap_or("-"),
            r.region,
            r.state,
            r.control_planes,
            r.datastores,
            r.workers,
            r.managed_nodes
        );
        if let Some(e) = &r.last_error {
            println!("  last error: {e}");
        }
    }
}

pub fn info(o: Output, i: &ClusterInfo) {
    if o == Output::Json {
        println!("{}", serde_json::to_string_pretty(i).expect("serialises"));
        return;
    }
    summaries(o, std::slice::from_ref(&i.summary));
    println!(
        "\nkubernetes {}  etcd {}",
        i.spec.kubernetes_version,
        i.spec.etcd_version.as_deref().unwrap_or("default")
    );
    if let Some(n) = &i.network {
        println!("network    {n}");
    }
    if !i.firewalls.is_empty() {
        println!("firewalls  {}", i.firewalls.join(", "));
    }
    if let Some(mc) = &i.managed_cluster {
        println!("managed    {mc} ({} nodes)", i.node_pool_size);
    }
    if !i.vms.is_empty() {
        println!("\n{:<36} {:<14} {:<22} {:<16} PRIVATE IP", "VM", "ROLE", "ID", "PUBLIC IP");
        for v in &i.vms {
            println!("{:<36} {:<14} {:<22} {:<16} {}", v.name, v.role.title(), v.id, v.public_ip, v.private_ip);
        }
    }
    println!("\nbootstrap steps done: {}", i.bootstrap_steps_done);
    println!("components: {}", if i.components.is_empty() { "-".into() } else { i.components.join(", ") });
    println!("addons: {}", if i.spec.addons.is_empty() { "-".into() } else { i.spec.addons.join(", ") });
    println!("apps: {}", if i.apps.is_empty() { "-".into() } else { i.apps.join(", ") });
    if let Some(op) = &i.last_operation {
        println!("last operation: {} {} ({})", op.kind, op.id, op.error.as_deref().unwrap_or("succeeded"));
    }
    match &i.health {
        None => println!("agent: no heartbeat yet"),
        Some(h) => {
            let now = ksctl_core::now_ms();
            let ready = h.nodes.iter().filter(|n| n.ready).count();
            println!(
                "agent: heartbeat {} s ago, API server {}, {} nodes ({ready} ready)",
                // Received, by the control plane's clock (older records: sent, by the agent's).
                now.saturating_sub(if h.received_at_ms > 0 { h.received_at_ms } else { h.sent_at_ms }) / 1000,
                h.server_version,
                h.nodes.len()
            );
            for d in &i.drift {
                println!("drift: {d}");
            }
        }
    }
}

pub fn accepted(o: Output, r: &RequestReply) {
    match o {
        Output::Json => println!("{}", serde_json::to_string_pretty(r).expect("serialises")),
        Output::Table => println!("{}", r.message),
    }
}

/// The addon catalog, with the pinned versions ksctl installs.
pub fn addons(o: Output) {
    let rows: Vec<serde_json::Value> = ksctl_core::addons::CATALOG
        .iter()
        .map(|a| {
            serde_json::json!({"name": a.name, "version": a.version, "description": a.description,
                "namespace": a.namespace, "images": a.images, "ready": a.ready, "kubernetes": a.kubernetes})
        })
        .collect();
    if o == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("serialises"));
        return;
    }
    println!("{:<20} {:<9} {:<14} {:<11} DESCRIPTION", "NAME", "VERSION", "NAMESPACE", "KUBERNETES");
    for a in ksctl_core::addons::CATALOG {
        println!("{:<20} {:<9} {:<14} {:<11} {}", a.name, a.version, a.namespace, a.kubernetes, a.description);
    }
}

/// `ksctl artifacts list`: what a mirror must hold for one distribution and version.
pub fn artifacts(o: Output, a: &crate::ArtifactsList) -> Result<(), String> {
    use ksctl_core::artifacts::{Artifacts, ImageRegistry, RegistryTls, kubeadm_artifacts, parse_mirror_url};
    let artifacts = Artifacts {
        // Empty means unset, as for the controllers.
        mirror: a.artifacts_url.as_deref().filter(|u| !u.trim().is_empty()).map(parse_mirror_url).transpose()?,
        // How the hosts reach the registry does not change the images' names.
        registry: a
            .image_registry
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .map(|r| ImageRegistry::parse(r, RegistryTls::System))
            .transpose()?,
    };
    for addon in &a.addons {
        if ksctl_core::addons::find(addon).is_none() {
            return Err(format!("unknown addon {addon:?}; known: {}", ksctl_core::addons::names()));
        }
    }
    let mut files: Vec<String> = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    let mut apt = None;
    let mut upstream: Vec<String> = Vec::new();
    match a.distro.as_str() {
        "kubeadm" => {
            let k = kubeadm_artifacts(&artifacts, &a.version)?;
            apt = Some(k.apt_repository);
            packages = k.packages;
            upstream = k.images;
            let cni = Cni::parse(&a.cni)
                .ok_or_else(|| format!("unknown CNI {:?}; expected one of {}", a.cni, Cni::spellings().join(", ")))?;
            upstream.extend(ksctl_core::addons::cni_images(cni).iter().map(|s| s.to_string()));
        }
        "k3s" => {
            // k3s' installer fetches its binary and checksums from the release download. The
            // images k3s itself runs (its airgap image archive) are not listed yet.
            let v = format!("v{}", a.version.trim_start_matches('v'));
            if !v.contains("+k3s") {
                return Err(format!("{:?}: give a k3s release like 1.31.2+k3s1", a.version));
            }
            // Its own flannel is in k3s; Calico and Cilium are ksctl's.
            if let Some(cni) = Cni::parse(&a.cni).filter(|c| *c != Cni::Flannel) {
                upstream.extend(ksctl_core::addons::cni_images(cni).iter().map(|s| s.to_string()));
            }
            let base = artifacts.mirror.clone().unwrap_or_else(|| "https://github.com/k3s-io/k3s".into());
            files.push(artifacts.k3s_installer());
            for f in ["k3s", "sha256sum-amd64.txt"] {
                files.push(format!(
                    "{base}{}/releases/download/{v}/{f}",
                    if artifacts.mirror.is_some() { "/k3s" } else { "" }
                ));
            }
        }
        other => return Err(format!("unknown distribution {other:?}; expected kubeadm or k3s")),
    }
    upstream.push(a.agent_image.clone());
    for addon in &a.addons {
        upstream.extend(ksctl_core::addons::find(addon).expect("checked").images.iter().map(|s| s.to_string()));
    }
    let images: Vec<(String, String)> = upstream.iter().map(|i| (i.clone(), artifacts.image(i))).collect();
    if o == Output::Json {
        let v = serde_json::json!({
            "apt_repository": apt,
            "packages": packages,
            "files": files,
            "images": images.iter().map(|(u, m)| serde_json::json!({"upstream": u, "pull": m})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
        return Ok(());
    }
    if let Some(repo) = apt {
        println!("APT REPOSITORY  {repo}");
        println!("PACKAGES        {}", packages.join(" "));
    }
    for f in &files {
        println!("FILE            {f}");
    }
    println!("{:<56} PULLED AS", "IMAGE");
    for (u, m) in &images {
        println!("{u:<56} {m}");
    }
    Ok(())
}

/// `ksctl ops list`: one line per operation under way.
pub fn operations(o: Output, rows: &[ksctl_core::messages::OperationStatus]) {
    if o == Output::Json {
        println!("{}", serde_json::to_string_pretty(rows).expect("serialises"));
        return;
    }
    println!(
        "{:<24} {:<13} {:<14} {:<17} {:>8} {:>10}  STUCK",
        "CLUSTER", "STATE", "KIND", "PHASE", "DISPATCH", "PHASE AGE"
    );
    for r in rows {
        println!(
            "{:<24} {:<13} {:<14} {:<17} {:>8} {:>9}s  {}",
            r.cluster,
            r.state,
            r.operation.kind.as_str(),
            r.operation.phase.as_str(),
            r.dispatch,
            r.phase_age_ms / 1000,
            if r.stuck { format!("yes (deadline {} s)", r.phase_timeout_ms / 1000) } else { "no".into() }
        );
    }
}
