//! The AWS provider through the bus against moto (a real AWS API emulator): self-managed
//! infrastructure is created with tags and the security-group matrix, survives kill -9 of the
//! cloud-controller with exactly the expected resources, and delete leaves nothing tagged.
//! moto's instances are not machines: the SSH bootstrap that follows the cloud phase cannot
//! connect to them (one short attempt here), so a create ends in `creation_failed` right after
//! the cloud phase — which is what these tests look at. Managed EKS reaches `running`: its
//! endpoint is pointed at a real API server that verifies EKS tokens with a webhook.
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::messages::Command;
use ksctl_core::records::{ClusterRecord, InfraRecord, OperationRecord};
use ksctl_core::saga::Phase;
use ksctl_core::state::{ClusterState, OpKind};
use ksctl_tests::eks_lab::{EksLab, create_eks, sdk};
use ksctl_tests::kube_server::KubeServer;
use ksctl_tests::throttle_proxy::ThrottleProxy;
use ksctl_tests::{MotoServer, System, SystemOptions, progress_at, wait_event};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const TAG: &str = "tag:ksctl.io/cluster-id";

async fn ec2(moto: &MotoServer) -> Client {
    Client::new(&sdk(moto).await)
}

async fn ami(ec2: &Client) -> String {
    let images = ec2.describe_images().send().await.unwrap();
    images.images().iter().find_map(|i| i.image_id()).expect("moto ships AMIs").to_string()
}

async fn system(moto: &MotoServer, ec2: &Client) -> System {
    system_with_ami(moto, &ami(ec2).await).await
}

/// The system on moto alone: EKS endpoints there answer nobody, so the k8s phase gets one
/// delivery (like the bootstrap's one SSH attempt).
async fn system_with_ami(moto: &MotoServer, ami: &str) -> System {
    let ami = ami.to_string();
    let mut env: Vec<(String, String, String)> =
        moto.env().into_iter().map(|(k, v)| ("ksctl-cloud-controller".to_string(), k, v)).collect();
    env.push(("ksctl-k8s-controller".into(), "KSCTL_MAX_DELIVER".into(), "1".into()));
    env.push(("ksctl-cloud-controller".into(), "KSCTL_AWS_AMI".into(), ami));
    env.push(("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,aws".into()));
    // One short SSH attempt and one delivery: moto's instances never answer.
    let b = "ksctl-bootstrap-controller";
    for (k, v) in
        [("KSCTL_SSH_CONNECT_TIMEOUT_SECS", "1"), ("KSCTL_SSH_CONNECT_ATTEMPTS", "1"), ("KSCTL_MAX_DELIVER", "1")]
    {
        env.push((b.into(), k.into(), v.into()));
    }
    System::start(SystemOptions { env, ..Default::default() }).await
}

fn tagged(cluster: &str) -> Filter {
    Filter::builder().name(TAG).values(cluster).build()
}

/// (vpcs, subnets, igws, route tables, security groups, key pairs, live instances) tagged for `c`.
async fn census(ec2: &Client, c: &str) -> [usize; 7] {
    let live = Filter::builder().name("instance-state-name").values("pending").values("running").build();
    [
        ec2.describe_vpcs().filters(tagged(c)).send().await.unwrap().vpcs().len(),
        ec2.describe_subnets().filters(tagged(c)).send().await.unwrap().subnets().len(),
        ec2.describe_internet_gateways().filters(tagged(c)).send().await.unwrap().internet_gateways().len(),
        ec2.describe_route_tables().filters(tagged(c)).send().await.unwrap().route_tables().len(),
        ec2.describe_security_groups().filters(tagged(c)).send().await.unwrap().security_groups().len(),
        ec2.describe_key_pairs().filters(tagged(c)).send().await.unwrap().key_pairs().len(),
        ec2.describe_instances()
            .filters(tagged(c))
            .filters(live)
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .map(|r| r.instances().len())
            .sum(),
    ]
}

async fn create(sys: &System, name: &str) {
    let (code, _, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            name,
            "--provider",
            "aws",
            "--region",
            "us-east-1",
            "--distro",
            "k3s",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "2",
            "--no-wait",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
}

/// Waits until the cloud phase is done: the bootstrap then fails to reach moto's "VMs" over SSH
/// at their public addresses.
async fn cloud_phase_done(sys: &System, name: &str) {
    let rec = sys.wait_state(name, "creation_failed", T).await;
    let err = rec.last_operation.unwrap().error.unwrap();
    assert!(err.starts_with("bootstrap: host ") && err.contains("cannot connect"), "failed elsewhere: {err}");
}

async fn delete_leaves_nothing(sys: &System, ec2: &Client, name: &str) {
    let (code, out, err) = sys.ksctl(&["cluster", "delete", name]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone(name, T).await;
    assert_eq!(census(ec2, name).await, [0; 7], "resources left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn selfmanaged_infrastructure_on_ec2() {
    let moto = MotoServer::start();
    let ec2 = ec2(&moto).await;
    let sys = system(&moto, &ec2).await;
    create(&sys, "ha").await;
    cloud_phase_done(&sys, "ha").await;
    assert_eq!(census(&ec2, "ha").await, [1, 3, 1, 1, 4, 1, 9]);

    // Subnets in three zones, public IPs on launch; VMs spread over them.
    let subnets = ec2.describe_subnets().filters(tagged("ha")).send().await.unwrap();
    let zones: std::collections::BTreeSet<_> = subnets.subnets().iter().filter_map(|s| s.availability_zone()).collect();
    assert_eq!(zones.len(), 3);
    assert!(subnets.subnets().iter().all(|s| s.map_public_ip_on_launch() == Some(true)));
    let inst = ec2.describe_instances().filters(tagged("ha")).send().await.unwrap();
    let used: std::collections::BTreeSet<_> =
        inst.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.subnet_id()).collect();
    assert_eq!(used.len(), 3, "VMs spread across the three subnets");
    // The default route goes to the internet gateway.
    let rt = ec2.describe_route_tables().filters(tagged("ha")).send().await.unwrap();
    assert!(
        rt.route_tables()[0].routes().iter().any(|r| r.destination_cidr_block() == Some("0.0.0.0/0")
            && r.gateway_id().is_some_and(|g| g.starts_with("igw-")))
    );
    assert_eq!(rt.route_tables()[0].associations().iter().filter(|a| a.subnet_id().is_some()).count(), 3);
    // The security-group matrix.
    let sgs = ec2.describe_security_groups().filters(tagged("ha")).send().await.unwrap();
    let rules = |name: &str| {
        let g = sgs
            .security_groups()
            .iter()
            .find(|g| g.group_name() == Some(name))
            .unwrap_or_else(|| panic!("no group {name}"));
        g.ip_permissions()
            .iter()
            .flat_map(|p| {
                p.ip_ranges().iter().map(move |r| {
                    (
                        p.ip_protocol().unwrap_or("").to_string(),
                        p.from_port().unwrap_or(0),
                        r.cidr_ip().unwrap_or("").to_string(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    assert!(rules("ha-lb").contains(&("tcp".into(), 6443, "0.0.0.0/0".into())));
    assert!(rules("ha-cp").contains(&("tcp".into(), 6443, "10.0.0.0/16".into())));
    assert!(rules("ha-cp").contains(&("udp".into(), 8472, "10.0.0.0/16".into())));
    assert!(!rules("ha-wp").iter().any(|r| r.1 == 6443));
    assert!(rules("ha-ds").contains(&("tcp".into(), 2379, "10.0.0.0/16".into())));
    // Every VM is recorded with its IPs; `info` shows them.
    let (code, out, _) = sys.ksctl(&["cluster", "info", "ha"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.starts_with("ha-vm-")).count(), 9, "{out}");
    // The private key is sealed in state; the imported public half is ed25519.
    let keys = ec2.describe_key_pairs().filters(tagged("ha")).send().await.unwrap();
    assert_eq!(keys.key_pairs()[0].key_name(), Some("ha-key"));

    delete_leaves_nothing(&sys, &ec2, "ha").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_create_creates_each_resource_once() {
    let moto = MotoServer::start();
    let ec2 = ec2(&moto).await;
    let mut sys = system(&moto, &ec2).await;
    for (name, k) in [("crash-a", 2u32), ("crash-b", 7), ("crash-c", 11)] {
        let mut events = sys.client.subscribe(format!("ksctl.events.{name}.progress")).await.unwrap();
        create(&sys, name).await;
        wait_event(&mut events, T, "cloud_create progress", progress_at(Phase::CloudCreate, k)).await;
        sys.kill9("ksctl-cloud-controller");
        sys.restart("ksctl-cloud-controller");
        cloud_phase_done(&sys, name).await;
        assert_eq!(census(&ec2, name).await, [1, 3, 1, 1, 4, 1, 9], "after a kill at step {k}");
        // Kill it again in the middle of the delete.
        let mut events = sys.client.subscribe(format!("ksctl.events.{name}.progress")).await.unwrap();
        let (code, _, err) = sys.ksctl(&["cluster", "delete", name, "--no-wait"]).await;
        assert_eq!(code, 0, "{err}");
        wait_event(&mut events, T, "cloud_delete progress", progress_at(Phase::CloudDelete, 2)).await;
        sys.kill9("ksctl-cloud-controller");
        sys.restart("ksctl-cloud-controller");
        sys.wait_gone(name, T).await;
        assert_eq!(census(&ec2, name).await, [0; 7], "resources left after a kill mid-delete");
    }
}

/// A create that fails halfway (the AMI does not exist, so no VM can start) leaves the cluster
/// in `creation_failed` with the error in `info`, and a delete removes what was made.
#[tokio::test(flavor = "multi_thread")]
async fn failure_halfway_then_delete_cleans_up() {
    let moto = MotoServer::start();
    let ec2 = ec2(&moto).await;
    let sys = system_with_ami(&moto, "ami-00000000deadbeef").await;
    create(&sys, "half").await;
    let rec = sys.wait_state("half", "creation_failed", T).await;
    let err = rec.last_operation.unwrap().error.unwrap();
    assert!(err.starts_with("cloud_create:") && err.contains("run instance"), "{err}");
    let (_, out, _) = sys.ksctl(&["cluster", "info", "half"]).await;
    assert!(out.contains("run instance"), "info shows the error: {out}");
    let c = census(&ec2, "half").await;
    assert_eq!(&c[..6], &[1, 3, 1, 1, 4, 1], "network made before the failure");
    assert_eq!(c[6], 0);
    delete_leaves_nothing(&sys, &ec2, "half").await;
}

async fn infra(sys: &System, name: &str) -> InfraRecord {
    let id = ClusterId::new(name).unwrap();
    ksctl_store::get_json(sys.store.as_ref(), &keys::cloud(&id)).await.unwrap().map(|(r, _)| r).unwrap_or_default()
}

/// Live worker instances tagged for `c`, by Name tag.
async fn workers(ec2: &Client, c: &str) -> Vec<String> {
    let live = Filter::builder().name("instance-state-name").values("pending").values("running").build();
    let role = Filter::builder().name("tag:ksctl.io/role").values("wp").build();
    let r = ec2.describe_instances().filters(tagged(c)).filters(role).filters(live).send().await.unwrap();
    let mut names: Vec<String> = r
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.tags().iter().find(|t| t.key() == Some("Name")).and_then(|t| t.value()).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Self-managed scale on EC2. Scale-up goes through the manager as a user's request (the cloud
/// phase adds instances, then the join fails for lack of SSH bootstrap); scale-down starts with
/// a drain that needs a Kubernetes API, so the test dispatches its cloud phase on the bus itself.
#[tokio::test(flavor = "multi_thread")]
async fn selfmanaged_scale_changes_exactly_the_right_instances() {
    let moto = MotoServer::start();
    let ec2 = ec2(&moto).await;
    let sys = system(&moto, &ec2).await;
    create(&sys, "sc").await;
    cloud_phase_done(&sys, "sc").await;
    assert_eq!(workers(&ec2, "sc").await, ["sc-vm-wp-0", "sc-vm-wp-1"]);
    let before: Vec<String> = infra(&sys, "sc").await.vms.values().map(|v| v.id.clone()).collect();

    sys.mark_running("sc").await;
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "sc", "--workers", "4", "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let rec = sys.wait_state("sc", "configuring_failed", T).await;
    let op = rec.last_operation.unwrap();
    assert!(op.phases_done.contains(&Phase::CloudScaleUp), "{op:?}");
    assert!(op.error.as_deref().unwrap_or("").starts_with("bootstrap_join:"), "{op:?}");
    assert_eq!(workers(&ec2, "sc").await, ["sc-vm-wp-0", "sc-vm-wp-1", "sc-vm-wp-2", "sc-vm-wp-3"]);
    let after = infra(&sys, "sc").await;
    assert!(before.iter().all(|id| after.vms.values().any(|v| &v.id == id)), "existing VMs kept");
    assert_eq!(census(&ec2, "sc").await, [1, 3, 1, 1, 4, 1, 11]);

    // Scale down to 1: the three highest indices go, nothing else.
    let op_id = ksctl_core::OperationId::from_request(&uuid::Uuid::new_v4().simple().to_string());
    let id = ClusterId::new("sc").unwrap();
    ksctl_store::modify::<ClusterRecord, _, ()>(sys.store.as_ref(), &keys::cluster(&id), |r| {
        let mut r = r.unwrap();
        r.state = ClusterState::Configuring;
        r.operation = Some(OperationRecord {
            id: op_id.clone(),
            kind: OpKind::ScaleDown,
            phase: Phase::CloudScaleDown,
            dispatch: 1,
            dispatched_at_ms: ksctl_core::now_ms(),
            started_at_ms: ksctl_core::now_ms(),
            finished_at_ms: None,
            target_workers: Some(1),
            addon: None,
            app: None,
            cluster_addon_generation: None,
            addon_version: None,
            phases_done: vec![Phase::K8sDrain],
            error: None,
        });
        Ok(Some(r))
    })
    .await
    .unwrap()
    .unwrap();
    let cmd = Command { op_id, cluster_id: id, kind: OpKind::ScaleDown, phase: Phase::CloudScaleDown, dispatch: 1 };
    ksctl_bus::Publisher::new(sys.client.clone()).command(&cmd).await.unwrap();
    sys.wait_state("sc", "running", T).await;
    assert_eq!(workers(&ec2, "sc").await, ["sc-vm-wp-0"]);
    let after = infra(&sys, "sc").await;
    assert_eq!(after.vms.keys().filter(|k| k.contains("-wp-")).collect::<Vec<_>>(), ["sc-vm-wp-0"]);
    assert_eq!(census(&ec2, "sc").await, [1, 3, 1, 1, 4, 1, 8]);
    delete_leaves_nothing(&sys, &ec2, "sc").await;
}

/// EKS clusters and ksctl IAM roles of `c`: (clusters, node groups, roles).
async fn eks_census(conf: &aws_config::SdkConfig, c: &str) -> (usize, usize, usize) {
    let eks = aws_sdk_eks::Client::new(conf);
    let iam = aws_sdk_iam::Client::new(conf);
    let clusters = eks.list_clusters().send().await.unwrap();
    let has_cluster = clusters.clusters().iter().any(|n| n == c);
    let groups =
        if has_cluster { eks.list_nodegroups().cluster_name(c).send().await.unwrap().nodegroups().len() } else { 0 };
    let mut roles = 0;
    for r in [format!("ksctl-{c}-cp"), format!("ksctl-{c}-node")] {
        roles += iam.get_role().role_name(r).send().await.is_ok() as usize;
    }
    (has_cluster as usize, groups, roles)
}

/// Whether `token` gets a request through the API server (`GET /api/v1/namespaces`).
async fn accepted(kube: &KubeServer, token: &str) -> Result<(), kube::Error> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(kube.dir.0.join("ca.crt")).unwrap());
    let kc = ksctl_core::kubeconfig::with_token("t", &kube.url, &ca, token);
    let c = ksctl_k8s_controller::kube_api::client_from(&kc).await.unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(c).list(&Default::default()).await.map(|_| ())
}

/// Managed EKS through the manager, to `running`: network, IAM roles with their policies, the
/// cluster and a node group reach ACTIVE in moto; the k8s phase installs ksctl's components
/// through a real API server (moto's EKS endpoint and CA are pointed at it by a proxy) that
/// checks every bearer token with a webhook authenticator as EKS does (presigned STS
/// `GetCallerIdentity`, moto as STS, the caller mapped to a user). Tokens that are expired, signed
/// with other credentials or forged are refused; `switch` mints a fresh token; scale changes the
/// node group; delete removes ksctl's objects and leaves nothing in the cloud.
#[tokio::test(flavor = "multi_thread")]
async fn managed_eks_reaches_running_through_verified_tokens_scales_and_deletes() {
    use base64::Engine;
    let lab = EksLab::start("eks", vec![]).await;
    let (sys, conf, kube, authenticator) = (&lab.sys, &lab.conf, &lab.kube, &lab.authenticator);
    let ec2 = Client::new(conf);
    let ((key, secret), (intruder_key, intruder_secret)) = (lab.operator.clone(), lab.intruder.clone());

    lab.create("eks", 2).await;
    let rec = sys.wait_state("eks", "running", T).await;
    let op = rec.last_operation.unwrap();
    assert_eq!(op.phases_done, [Phase::CloudCreate, Phase::K8sInstall], "{op:?}");
    // ksctl's components went in as the mapped IAM user, through tokens the webhook verified.
    let who = authenticator.accepted();
    assert!(!who.is_empty() && who.iter().all(|u| u == "ksctl-operator"), "{who:?}");
    let admin = ksctl_k8s_controller::kube_api::client_from(&kube.kubeconfig).await.unwrap();
    let agent = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), "ksctl-system");
    assert!(agent.get("ksctl-agent").await.is_ok(), "the agent is installed");

    let eks = aws_sdk_eks::Client::new(conf);
    let c = eks.describe_cluster().name("eks").send().await.unwrap();
    let c = c.cluster().unwrap();
    assert_eq!(c.status(), Some(&aws_sdk_eks::types::ClusterStatus::Active));
    assert_eq!(c.version(), Some("1.31"));
    assert_eq!(c.tags().unwrap().get("ksctl.io/cluster-id").map(String::as_str), Some("eks"));
    let subnets = c.resources_vpc_config().unwrap().subnet_ids().to_vec();
    assert_eq!(subnets.len(), 3);
    let ng = eks.describe_nodegroup().cluster_name("eks").nodegroup_name("eks-pool").send().await.unwrap();
    let ng = ng.nodegroup().unwrap();
    assert_eq!(ng.status(), Some(&aws_sdk_eks::types::NodegroupStatus::Active));
    assert_eq!(ng.scaling_config().unwrap().desired_size(), Some(2));
    assert_eq!(ng.node_role(), Some(c.role_arn().unwrap().replace("-cp", "-node").as_str()));
    let iam = aws_sdk_iam::Client::new(conf);
    let attached = |role: &'static str| {
        let iam = iam.clone();
        async move {
            let r = iam.list_attached_role_policies().role_name(role).send().await.unwrap();
            let mut p: Vec<String> =
                r.attached_policies().iter().filter_map(|p| p.policy_name().map(str::to_string)).collect();
            p.sort();
            p
        }
    };
    assert_eq!(attached("ksctl-eks-cp").await, ["AmazonEKSClusterPolicy"]);
    assert_eq!(
        attached("ksctl-eks-node").await,
        ["AmazonEC2ContainerRegistryReadOnly", "AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy"]
    );
    assert_eq!(eks_census(conf, "eks").await, (1, 1, 2));
    // The network EKS runs in, tagged like the self-managed one; no VMs or key pairs of ours.
    assert_eq!(census(&ec2, "eks").await, [1, 3, 1, 1, 0, 0, 0]);
    let state = infra(sys, "eks").await;
    assert_eq!(state.managed_cluster.as_deref(), Some("eks"));
    assert_eq!(state.node_pool_size, 2);
    assert!(state.kubeconfig.is_some(), "kubeconfig sealed in state");

    // `switch` mints a new token each time: a presigned STS URL bound to the cluster, which
    // the API server takes.
    let token_of =
        |kc: &str| kc.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("token line").to_string();
    let url_of = |t: &str| {
        let url =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.strip_prefix("k8s-aws-v1.").unwrap()).unwrap();
        String::from_utf8(url).unwrap()
    };
    let (code, kc, err) = sys.ksctl(&["cluster", "switch", "eks", "--print"]).await;
    assert_eq!(code, 0, "{kc}{err}");
    assert!(kc.contains(&kube.url) && kc.contains("eks-us-east-1-managed-aws-ksctl"), "{kc}");
    let url = url_of(&token_of(&kc));
    assert!(url.starts_with("https://sts.us-east-1.amazonaws.com/?") && url.contains("Action=GetCallerIdentity"));
    assert!(url.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"), "{url}");
    accepted(kube, &token_of(&kc)).await.expect("switch's token is accepted");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, again, _) = sys.ksctl(&["cluster", "switch", "eks", "--print"]).await;
    assert_ne!(url_of(&token_of(&again)), url, "a fresh token on every switch");

    // Refused by the API server: expired, signed with another IAM user's key, forged with the
    // right key id but a wrong secret, or minted for another cluster.
    use ksctl_cloud_controller::aws::token::token;
    let creds = |k: &str, s: &str| aws_sdk_ec2::config::Credentials::new(k, s, None, None, "test");
    let now = std::time::SystemTime::now();
    let twenty_minutes_ago = now - Duration::from_secs(20 * 60);
    for (what, t) in [
        ("expired", token(&creds(&key, &secret), "us-east-1", "eks", twenty_minutes_ago).unwrap()),
        ("another user's", token(&creds(&intruder_key, &intruder_secret), "us-east-1", "eks", now).unwrap()),
        ("forged", token(&creds(&key, "not-the-secret"), "us-east-1", "eks", now).unwrap()),
        ("another cluster's", token(&creds(&key, &secret), "us-east-1", "other", now).unwrap()),
    ] {
        match accepted(kube, &t).await {
            Err(kube::Error::Api(s)) if s.code == 401 => {}
            other => panic!("the {what} token: {other:?}"),
        }
    }
    accepted(kube, &token(&creds(&key, &secret), "us-east-1", "eks", now).unwrap()).await.expect("a good token");
    let refused: Vec<String> = authenticator.reviews.lock().unwrap().iter().filter_map(|r| r.clone().err()).collect();
    for why in ["expired", "other credentials", "is not mapped"] {
        assert!(refused.iter().any(|r| r.contains(why)), "{why}: {refused:?}");
    }

    // Scale the node group up and down through the manager.
    for n in [3, 1] {
        let (code, out, err) = sys.ksctl(&["cluster", "scale", "eks", "--workers", &n.to_string()]).await;
        assert_eq!(code, 0, "{out}{err}");
        let ng = eks.describe_nodegroup().cluster_name("eks").nodegroup_name("eks-pool").send().await.unwrap();
        let s = ng.nodegroup().unwrap().scaling_config().unwrap();
        assert_eq!((s.min_size(), s.max_size(), s.desired_size()), (Some(n), Some(n), Some(n)));
        assert_eq!(infra(sys, "eks").await.node_pool_size, n as u32);
    }

    let (code, out, err) = sys.ksctl(&["cluster", "delete", "eks"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("eks", T).await;
    assert_eq!(eks_census(conf, "eks").await, (0, 0, 0), "EKS resources left");
    assert_eq!(census(&ec2, "eks").await, [0; 7], "network left");
    // ksctl's objects were removed through the same verified tokens (this API server has no
    // namespace controller: the namespace is left terminating).
    let ns =
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()).get_opt("ksctl-system").await.unwrap();
    assert!(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()), "ksctl-system is being removed");
    let roles = kube::Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin);
    assert!(roles.get_opt("ksctl-agent").await.unwrap().is_none(), "the agent's ClusterRole is gone");
}

/// [`census`] and [`eks_census`] of every cluster at once, keyed by cluster tag / name: a few
/// listing calls instead of a dozen per cluster (moto answers filtered describes slowly).
type Census = ([usize; 7], (usize, usize, usize));

async fn census_all(conf: &aws_config::SdkConfig) -> std::collections::HashMap<String, Census> {
    use aws_sdk_ec2::types::Tag;
    let ec2 = Client::new(conf);
    let mut out: std::collections::HashMap<String, Census> = Default::default();
    let owner = |tags: &[Tag]| {
        tags.iter().find(|t| t.key() == Some("ksctl.io/cluster-id")).and_then(|t| t.value()).map(str::to_string)
    };
    let count = |tags: &[Tag], slot: usize, out: &mut std::collections::HashMap<_, _>| {
        if let Some(c) = owner(tags) {
            let e: &mut Census = out.entry(c).or_default();
            e.0[slot] += 1;
        }
    };
    for v in ec2.describe_vpcs().send().await.unwrap().vpcs() {
        count(v.tags(), 0, &mut out);
    }
    for x in ec2.describe_subnets().send().await.unwrap().subnets() {
        count(x.tags(), 1, &mut out);
    }
    for x in ec2.describe_internet_gateways().send().await.unwrap().internet_gateways() {
        count(x.tags(), 2, &mut out);
    }
    for x in ec2.describe_route_tables().send().await.unwrap().route_tables() {
        count(x.tags(), 3, &mut out);
    }
    for x in ec2.describe_security_groups().send().await.unwrap().security_groups() {
        count(x.tags(), 4, &mut out);
    }
    for x in ec2.describe_key_pairs().send().await.unwrap().key_pairs() {
        count(x.tags(), 5, &mut out);
    }
    let live = Filter::builder().name("instance-state-name").values("pending").values("running").build();
    for r in ec2.describe_instances().filters(live).send().await.unwrap().reservations() {
        for x in r.instances() {
            count(x.tags(), 6, &mut out);
        }
    }
    let eks = aws_sdk_eks::Client::new(conf);
    let mut clusters = vec![];
    let mut pages = eks.list_clusters().into_paginator().send();
    while let Some(p) = pages.next().await {
        clusters.extend(p.unwrap().clusters().to_vec());
    }
    for c in clusters {
        let groups = eks.list_nodegroups().cluster_name(&c).send().await.unwrap().nodegroups().len();
        let e = out.entry(c).or_default();
        e.1.0 += 1;
        e.1.1 += groups;
    }
    let iam = aws_sdk_iam::Client::new(conf);
    let mut pages = iam.list_roles().into_paginator().send();
    while let Some(p) = pages.next().await {
        for r in p.unwrap().roles() {
            let name = r.role_name();
            if let Some(c) = name.strip_prefix("ksctl-").and_then(|n| n.strip_suffix("-cp").or(n.strip_suffix("-node")))
            {
                out.entry(c.to_string()).or_default().1.2 += 1;
            }
        }
    }
    out
}

/// 100 managed EKS creates at once against an EC2 that throttles (a proxy with EC2's token
/// buckets in front of moto). Our client-side buckets are set *above* the server's, as when other
/// tools share the account, so throttling does happen; every create must still finish its cloud
/// phase with exactly its resources, and every delete must leave nothing. (Managed, because 100
/// self-managed clusters are 700 instances, and moto scans every instance on each describe: the
/// run takes minutes in moto, not in our code.)
#[tokio::test(flavor = "multi_thread")]
async fn hundred_concurrent_creates_survive_throttling() {
    const N: usize = 100;
    let moto = MotoServer::start();
    let conf = sdk(&moto).await;
    let proxy = ThrottleProxy::start(moto.url(), (20.0, 40.0), (50.0, 40.0), (20.0, 10.0)).await;
    let cc = "ksctl-cloud-controller".to_string();
    let mut env: Vec<(String, String, String)> = moto.env().into_iter().map(|(k, v)| (cc.clone(), k, v)).collect();
    env.retain(|(_, k, _)| k != "AWS_ENDPOINT_URL");
    env.push((cc.clone(), "AWS_ENDPOINT_URL".into(), proxy.url()));
    // Bursts 4–10 times the server's: the 100 phases starting together do get throttled.
    env.push((cc.clone(), "KSCTL_AWS_RATE_LIMITS".into(), "describe=200/50,mutate=200/50,run=100/12".into()));
    env.push((cc.clone(), "KSCTL_MAX_JOBS".into(), N.to_string()));
    env.push(("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,aws".into()));
    // moto's EKS endpoints answer nobody: one k8s delivery each.
    env.push(("ksctl-k8s-controller".into(), "KSCTL_MAX_DELIVER".into(), "1".into()));
    let sys = System::start(SystemOptions { env, ..Default::default() }).await;

    let names: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    let started = std::time::Instant::now();
    for chunk in names.chunks(25) {
        futures::future::join_all(chunk.iter().map(|n| create_eks(&sys, n, 1))).await;
    }
    let long = Duration::from_secs(240);
    for n in &names {
        let rec = sys.wait_state(n, "creation_failed", long).await;
        let err = rec.last_operation.unwrap().error.unwrap();
        assert!(err.starts_with("k8s_install:"), "{n} failed before its cloud phase ended: {err}");
    }
    let created = started.elapsed();
    let throttled = proxy.throttled.load(std::sync::atomic::Ordering::Relaxed);
    println!("{N} creates: cloud phases done in {created:?}; EC2 answered {throttled} throttles");
    assert!(throttled > 0, "the proxy never throttled: the test proved nothing");
    let all = census_all(&conf).await;
    for n in &names {
        assert_eq!(all.get(n), Some(&([1, 3, 1, 1, 0, 0, 0], (1, 1, 2))), "{n}");
    }
    assert_eq!(all.len(), N, "resources of unknown clusters: {:?}", all.keys());

    let started = std::time::Instant::now();
    for chunk in names.chunks(25) {
        let runs = chunk.iter().map(|n| async { sys.ksctl(&["cluster", "delete", n, "--no-wait"]).await });
        for (code, out, err) in futures::future::join_all(runs).await {
            assert_eq!(code, 0, "{out}{err}");
        }
    }
    for n in &names {
        sys.wait_gone(n, long).await;
    }
    println!("and deleted in {:?}", started.elapsed());
    let left = census_all(&conf).await;
    assert!(left.is_empty(), "resources left behind: {left:?}");
}

/// kill -9 of the cloud-controller in the middle of a managed EKS create (after the roles, after
/// the cluster) and of its delete: exactly one cluster, one node group and two roles after the
/// restart, nothing at all after the delete.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_managed_create_and_delete() {
    let moto = MotoServer::start();
    let conf = sdk(&moto).await;
    let ec2 = Client::new(&conf);
    let mut sys = system(&moto, &ec2).await;
    for (name, k) in [("eks-a", 5u32), ("eks-b", 7)] {
        let mut events = sys.client.subscribe(format!("ksctl.events.{name}.progress")).await.unwrap();
        create_eks(&sys, name, 2).await;
        wait_event(&mut events, T, "cloud_create progress", progress_at(Phase::CloudCreate, k)).await;
        sys.kill9("ksctl-cloud-controller");
        sys.restart("ksctl-cloud-controller");
        let rec = sys.wait_state(name, "creation_failed", T).await;
        assert_eq!(rec.last_operation.unwrap().phases_done, [Phase::CloudCreate]);
        assert_eq!(eks_census(&conf, name).await, (1, 1, 2), "after a kill at step {k}");
        assert_eq!(census(&ec2, name).await, [1, 3, 1, 1, 0, 0, 0]);

        let mut events = sys.client.subscribe(format!("ksctl.events.{name}.progress")).await.unwrap();
        let (code, _, err) = sys.ksctl(&["cluster", "delete", name, "--no-wait"]).await;
        assert_eq!(code, 0, "{err}");
        wait_event(&mut events, T, "cloud_delete progress", progress_at(Phase::CloudDelete, 2)).await;
        sys.kill9("ksctl-cloud-controller");
        sys.restart("ksctl-cloud-controller");
        sys.wait_gone(name, T).await;
        assert_eq!(eks_census(&conf, name).await, (0, 0, 0), "EKS resources left after a kill mid-delete");
        assert_eq!(census(&ec2, name).await, [0; 7]);
    }
}
