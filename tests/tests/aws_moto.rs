//! The AWS provider through the bus against moto (a real AWS API emulator): self-managed
//! infrastructure is created with tags and the security-group matrix, survives kill -9 of the
//! cloud-controller with exactly the expected resources, and delete leaves nothing tagged.
//! The bootstrap phase has no AWS host access yet (SSH is its own issue), so a create ends in
//! `creation_failed` right after the cloud phase — which is what these tests look at.
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;
use ksctl_core::saga::Phase;
use ksctl_tests::{MotoServer, System, SystemOptions, progress_at, wait_event};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const TAG: &str = "tag:ksctl.io/cluster-id";

async fn ec2(moto: &MotoServer) -> Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto.url())
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    Client::new(&conf)
}

async fn system(moto: &MotoServer, ec2: &Client) -> System {
    let images = ec2.describe_images().send().await.unwrap();
    let ami = images.images().iter().find_map(|i| i.image_id()).expect("moto ships AMIs").to_string();
    system_with_ami(moto, &ami).await
}

async fn system_with_ami(moto: &MotoServer, ami: &str) -> System {
    let ami = ami.to_string();
    let mut env: Vec<(String, String, String)> =
        moto.env().into_iter().map(|(k, v)| ("ksctl-cloud-controller".to_string(), k, v)).collect();
    env.push(("ksctl-cloud-controller".into(), "KSCTL_AWS_AMI".into(), ami));
    env.push(("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,aws".into()));
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

/// Waits until the cloud phase is done: the bootstrap phase fails for lack of AWS host access.
async fn cloud_phase_done(sys: &System, name: &str) {
    let rec = sys.wait_state(name, "creation_failed", T).await;
    let err = rec.last_operation.unwrap().error.unwrap();
    assert!(err.starts_with("bootstrap:") && err.contains("no host bootstrapper"), "failed elsewhere: {err}");
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
