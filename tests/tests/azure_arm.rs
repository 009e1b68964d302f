//! The ARM client against the test ARM server (`tests/azure/arm_server.py`: request bodies checked
//! against the official SDK's generated models, answers shaped like recorded ARM traffic): sign-in
//! through azure_identity over the same HTTP client, long-running operations by
//! `Azure-AsyncOperation` and by `Location`, `Retry-After` honoured, 429s retried, ARM's 4xx
//! surfaced as permanent errors with ARM's code.
use ksctl_cloud_controller::azure::arm::{Arm, ArmSettings, Principal};
use ksctl_runtime::Metrics;
use ksctl_tests::arm_server::{self, ArmServer};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client(server: &ArmServer, secret: &str) -> (Arm, Arc<Metrics>) {
    let principal = Principal {
        tenant_id: arm_server::TENANT.into(),
        client_id: arm_server::CLIENT_ID.into(),
        client_secret: secret.into(),
        subscription_id: arm_server::SUBSCRIPTION.into(),
    };
    let settings = ArmSettings {
        endpoint: server.url(),
        ca_file: Some(server.ca_file.clone()),
        authority_host: Some(server.url()),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    (Arm::new(&principal, settings, metrics.clone()).expect("client"), metrics)
}

const RG: &str = "/resourcegroups/ksctl-resgrp-managed-demo?api-version=2021-04-01";

fn vnet() -> String {
    "/resourceGroups/ksctl-resgrp-managed-demo/providers/Microsoft.Network/virtualNetworks/demo-vnet?api-version=2021-05-01"
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_running_operations_throttling_and_errors() {
    let server = ArmServer::start(2, 1);
    let (arm, metrics) = client(&server, arm_server::CLIENT_SECRET);
    let id = |p: &str| arm.id(p);

    // A resource group (synchronous in ARM), then a VNet whose PUT is a long-running operation.
    let rg = arm.put(&id(RG), &json!({"location": "westeurope", "tags": {"ksctl.io/cluster": "demo"}})).await.unwrap();
    assert_eq!(rg["properties"]["provisioningState"], "Succeeded");
    let started = Instant::now();
    let body = json!({"location": "westeurope", "properties": {
        "addressSpace": {"addressPrefixes": ["10.1.0.0/16"]},
        "subnets": [{"name": "nodes", "properties": {"addressPrefix": "10.1.0.0/24"}}]}});
    let v = arm.put(&id(&vnet()), &body).await.unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert_eq!(v["properties"]["subnets"][0]["name"], "nodes");
    // Retry-After: 1 before each of the 3 polls (2 in progress, then done).
    assert!(started.elapsed() >= Duration::from_secs(3), "Retry-After honoured: {:?}", started.elapsed());
    let log = server.log();
    let polls = log.iter().filter(|(m, p, _)| m == "GET" && p.contains("/operations/")).count();
    assert_eq!(polls, 3, "{log:?}");

    // A body Azure would refuse gets ARM's 400 back as a permanent error naming the member.
    let bad = json!({"location": "westeurope", "properties": {"adressSpace": {}}});
    match arm.put(&id(&vnet()), &bad).await {
        Err(e) if e.is_permanent() => {
            let e = e.to_string();
            assert!(e.contains("HTTP 400 InvalidRequestContent") && e.contains("adressSpace"), "{e}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    // So does an api-version the service does not have.
    let wrong_api = vnet().replace("2021-05-01", "2030-01-01");
    assert!(
        matches!(arm.get(&id(&wrong_api)).await, Err(e) if e.is_permanent() && e.message().contains("InvalidApiVersionParameter"))
    );

    // Throttled twice with Retry-After: 1, then answered.
    server.throttle(2, 1);
    let started = Instant::now();
    assert!(arm.get(&id(&vnet())).await.unwrap().is_some());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(metrics.render().contains("ksctl_cloud_api_throttled_total{provider=\"azure\"} 2"), "{}", metrics.render());

    // Deleting the group: 202 with a Location polled until it answers 200; then it is gone,
    // and deleting it again is done.
    arm.delete(&id(RG)).await.unwrap();
    assert!(arm.get(&id(RG)).await.unwrap().is_none());
    assert!(arm.get(&id(&vnet())).await.unwrap().is_none(), "the group took its resources along");
    let log = server.log();
    assert!(log.iter().any(|(m, p, s)| m == "GET" && p.contains("/operationresults/") && *s == 202), "{log:?}");
    arm.delete(&id(RG)).await.unwrap();
    assert!(server.resources().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_secret_is_a_permanent_error() {
    let server = ArmServer::start(0, 0);
    let (arm, _) = client(&server, "not-the-secret");
    match arm.get(&arm.id(RG)).await {
        Err(e) if e.is_permanent() => {
            let e = e.to_string();
            assert!(e.contains("Azure sign-in failed") && e.contains("AADSTS7000215"), "{e}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

// ---- The `azure` provider through the whole system ----

use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::InfraRecord;
use ksctl_core::saga::Phase;
use ksctl_tests::{System, SystemOptions, progress_at, wait_event};

const T: Duration = Duration::from_secs(120);
const CLOUD: &str = "ksctl-cloud-controller";

async fn azure_system(server: &ArmServer) -> System {
    let mut env = vec![("ksctl-manager".to_string(), "KSCTL_PROVIDERS".to_string(), "sim,azure".to_string())];
    env.extend(server.env().into_iter().map(|(k, v)| (CLOUD.to_string(), k, v)));
    // The VMs' and the AKS API's addresses exist only in the test server: fail the SSH
    // bootstrap and the k8s phase fast (two deliveries, then dead-lettered).
    for (k, v) in [("KSCTL_SSH_CONNECT_TIMEOUT_SECS", "1"), ("KSCTL_SSH_CONNECT_ATTEMPTS", "1")] {
        env.push(("ksctl-bootstrap-controller".into(), k.into(), v.into()));
    }
    for b in ["ksctl-bootstrap-controller", "ksctl-k8s-controller"] {
        env.push((b.into(), "KSCTL_MAX_DELIVER".into(), "2".into()));
    }
    System::start(SystemOptions { env, ..Default::default() }).await
}

async fn infra_of(sys: &System, name: &str) -> InfraRecord {
    let id = ClusterId::new(name).unwrap();
    ksctl_store::get_json(sys.store.as_ref(), &keys::cloud(&id)).await.unwrap().map(|(r, _)| r).unwrap_or_default()
}

/// Successful PUTs per resource path (query stripped).
fn puts(server: &ArmServer) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (method, path, status) in server.log() {
        if method == "PUT" && (200..300).contains(&status) {
            *m.entry(path.split('?').next().unwrap().to_lowercase()).or_default() += 1;
        }
    }
    m
}

fn of_type<'a>(res: &'a serde_json::Map<String, serde_json::Value>, t: &str) -> Vec<&'a serde_json::Value> {
    res.values().filter(|r| r["type"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(t))).collect()
}

/// A self-managed HA cluster's infrastructure on Azure: the resource group, an NSG per role with
/// the port matrix, the VNet, and per VM a static public IP, a NIC in its role's NSG and an
/// Ubuntu 24.04 VM with the cluster's SSH key — every body accepted by the models Azure's SDK is
/// generated from. Throttled at the start (429 with Retry-After), killed with -9 halfway: no
/// resource recorded before the kill is PUT again. The SSH bootstrap cannot reach the test
/// server's addresses, so the create then fails; delete leaves the subscription empty.
#[tokio::test(flavor = "multi_thread")]
async fn selfmanaged_infrastructure_created_resumed_after_a_kill_and_deleted() {
    let server = ArmServer::start(1, 0);
    let mut sys = azure_system(&server).await;
    let mut events = sys.client.subscribe("ksctl.events.az.>".to_string()).await.unwrap();
    server.throttle(3, 1);
    let (code, out, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            "az",
            "--provider",
            "azure",
            "--region",
            "westeurope",
            "--distro",
            "k3s",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "1",
            "--no-wait",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    // 1 group + 4 NSGs + the VNet + 3 of 8 VMs, then kill -9.
    wait_event(&mut events, T, "the 9th step of cloud_create", progress_at(Phase::CloudCreate, 9)).await;
    sys.kill9(CLOUD);
    let finished = infra_of(&sys, "az").await;
    sys.restart(CLOUD);
    wait_event(&mut events, T, "cloud_create to succeed", |ev| {
        ev.phase == Some(Phase::CloudCreate) && ev.kind == ksctl_core::messages::EventKind::PhaseSucceeded
    })
    .await;

    let res = server.resources();
    assert_eq!(of_type(&res, "Microsoft.Network/networkSecurityGroups").len(), 4);
    assert_eq!(of_type(&res, "Microsoft.Network/virtualNetworks").len(), 1);
    assert_eq!(of_type(&res, "Microsoft.Network/publicIPAddresses").len(), 8);
    assert_eq!(of_type(&res, "Microsoft.Network/networkInterfaces").len(), 8);
    let vms = of_type(&res, "Microsoft.Compute/virtualMachines");
    assert_eq!(vms.len(), 8);
    let infra = infra_of(&sys, "az").await;
    assert_eq!(infra.vms.len(), 8);
    assert!(infra.resource_group.as_deref().unwrap().ends_with("/ksctl-resgrp-selfmanaged-az"));
    for vm in &vms {
        let key =
            vm["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"].as_str().unwrap();
        assert!(key.starts_with("ssh-ed25519 "), "{key}");
        assert_eq!(vm["properties"]["storageProfile"]["imageReference"]["offer"], "ubuntu-24_04-lts");
    }
    let cp_nsg = infra.firewalls["cp"].to_lowercase();
    let cp_nic = res.values().find(|r| r["name"] == "az-vm-cp-0-nic").unwrap();
    assert_eq!(cp_nic["properties"]["networkSecurityGroup"]["id"].as_str().unwrap().to_lowercase(), cp_nsg);
    let nsg = &res[&infra.firewalls["cp"]];
    let rules = nsg["properties"]["securityRules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["properties"]["destinationPortRange"] == "6443"));
    for vm in infra.vms.values() {
        assert!(!vm.public_ip.is_empty() && vm.private_ip.starts_with("10.1.0."), "{vm:?}");
    }
    // Throttled answers were waited out, and nothing finished before the kill was PUT again.
    assert!(server.log().iter().filter(|e| e.2 == 429).count() == 3);
    let puts = puts(&server);
    let mut recorded: Vec<String> = finished.vms.values().map(|v| v.id.clone()).collect();
    recorded.extend(finished.firewalls.values().cloned());
    recorded.extend(finished.vm_parts.values().cloned());
    recorded.extend(finished.network.clone());
    assert!(recorded.len() >= 8, "the kill came after some resources: {recorded:?}");
    for id in &recorded {
        assert_eq!(puts.get(&id.to_lowercase()), Some(&1), "{id} PUT again after the restart: {puts:?}");
    }
    assert!(puts.values().all(|n| *n <= 2), "{puts:?}");

    sys.wait_state("az", "creation_failed", T).await;
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "az"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("az", T).await;
    assert!(server.resources().is_empty(), "left behind: {:?}", server.resources().keys().collect::<Vec<_>>());
}

/// Managed AKS: the cluster with one system pool of 2, kubenet, the admin kubeconfig sealed under
/// ksctl's context; the k8s phase cannot reach the test server's API address and says so; scaled
/// 2 → 3 → 1 through the agent pool; deleted with its resource group.
#[tokio::test(flavor = "multi_thread")]
async fn aks_create_scale_delete() {
    let server = ArmServer::start(2, 0);
    let sys = azure_system(&server).await;
    let (code, out, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            "aks",
            "--provider",
            "azure",
            "--region",
            "westeurope",
            "--type",
            "managed",
            "--managed-nodes",
            "2",
            "--version",
            "1.30",
        ])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    let rec = sys.wait_state("aks", "creation_failed", T).await;
    let e = rec.last_operation.unwrap().error.unwrap();
    assert!(e.starts_with("k8s_install:"), "the cloud phase succeeded, the k8s phase failed: {e}");
    let res = server.resources();
    let mc = of_type(&res, "Microsoft.ContainerService/managedClusters");
    assert_eq!(mc.len(), 1);
    assert_eq!(mc[0]["properties"]["agentPoolProfiles"][0]["count"], 2);
    assert_eq!(mc[0]["properties"]["kubernetesVersion"], "1.30");
    assert_eq!(mc[0]["properties"]["networkProfile"]["networkPlugin"], "kubenet");
    let infra = infra_of(&sys, "aks").await;
    let id = ClusterId::new("aks").unwrap();
    let kc = ksctl_core::seal::Sealer::from_base64(&sys.seal_key)
        .unwrap()
        .open_string(&format!("kubeconfig/{id}"), infra.kubeconfig.as_ref().unwrap())
        .unwrap();
    assert!(kc.contains("current-context: aks-westeurope-managed-azure-ksctl") && kc.contains(".azmk8s.io"), "{kc}");

    sys.mark_running("aks").await;
    for n in [3u32, 1] {
        let (code, out, err) = sys.ksctl(&["cluster", "scale", "aks", "--workers", &n.to_string()]).await;
        assert_eq!(code, 0, "{out}{err}");
        let pool = server.resources().into_iter().find(|(k, _)| k.ends_with("/agentPools/ksctlpool")).unwrap().1;
        assert_eq!(pool["properties"]["count"], n);
        assert_eq!(infra_of(&sys, "aks").await.node_pool_size, n);
    }
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "aks"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("aks", T).await;
    assert!(server.resources().is_empty());
}
