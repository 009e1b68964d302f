//! A managed EKS cluster that really answers, for tests through the bus: moto (EC2, EKS, IAM,
//! STS), a real kube-apiserver that checks bearer tokens with [`EksAuthenticator`] as EKS does,
//! and a proxy in front of moto that points the EKS endpoint and CA moto describes at that API
//! server (no test-only switch in the product). The cloud-controller signs as an IAM user
//! (`ksctl-operator`, mapped to `system:masters`); another IAM user (`intruder`) exists unmapped.
use crate::eks_authenticator::{EksAuthenticator, UserMap};
use crate::kube_server::{KubeServer, WorkloadController};
use crate::throttle_proxy::{Rewrite, ThrottleProxy, UNLIMITED};
use crate::{MotoServer, System, SystemOptions};
use base64::Engine;

pub const REGION: &str = "us-east-1";

pub struct EksLab {
    pub sys: System,
    pub conf: aws_config::SdkConfig,
    pub authenticator: EksAuthenticator,
    pub kube: KubeServer,
    /// (access key id, secret) of the mapped IAM user the cloud-controller signs as.
    pub operator: (String, String),
    /// (access key id, secret) of an IAM user the cluster does not map.
    pub intruder: (String, String),
    _rollouts: WorkloadController,
    _proxy: ThrottleProxy,
    _moto: MotoServer,
}

/// The SDK pointed at moto itself, with moto's dummy credentials.
pub async fn sdk(moto: &MotoServer) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto.url())
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

/// An IAM user of moto's with an access key: (ARN, key id, secret).
async fn iam_user(conf: &aws_config::SdkConfig, name: &str) -> (String, String, String) {
    let iam = aws_sdk_iam::Client::new(conf);
    let user = iam.create_user().user_name(name).send().await.unwrap();
    let arn = user.user().unwrap().arn().to_string();
    let key = iam.create_access_key().user_name(name).send().await.unwrap();
    let key = key.access_key().unwrap();
    (arn, key.access_key_id().to_string(), key.secret_access_key().to_string())
}

impl EksLab {
    /// The lab for EKS clusters named `cluster` (the authenticator serves that one), with
    /// `more` environment (`(binary, variable, value)`) for the services.
    pub async fn start(cluster: &str, more: Vec<(String, String, String)>) -> Self {
        let moto = MotoServer::start();
        let conf = sdk(&moto).await;
        let (operator_arn, key, secret) = iam_user(&conf, "ksctl-operator").await;
        let (_, intruder_key, intruder_secret) = iam_user(&conf, "intruder").await;
        let users: UserMap =
            [(operator_arn, ("ksctl-operator".to_string(), vec!["system:masters".to_string()]))].into();
        let secrets = [(key.clone(), secret.clone()), (intruder_key.clone(), intruder_secret.clone())].into();
        let authenticator = EksAuthenticator::start(moto.url(), REGION, cluster, secrets, users).await;
        let webhook = authenticator.webhook_config();
        let kube = tokio::task::block_in_place(|| KubeServer::start_with_token_webhook(&webhook));
        // moto describes an endpoint nobody serves: the proxy points it (and its CA) at the API
        // server.
        let endpoint = kube.url.clone();
        let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(kube.dir.0.join("ca.crt")).unwrap());
        let rewrite: Rewrite = std::sync::Arc::new(move |path: &str, body: bytes::Bytes| {
            let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
            if !path.starts_with("/clusters") || !v["cluster"]["endpoint"].is_string() {
                return body;
            }
            v["cluster"]["endpoint"] = endpoint.clone().into();
            v["cluster"]["certificateAuthority"]["data"] = ca.clone().into();
            serde_json::to_vec(&v).unwrap().into()
        });
        let proxy = ThrottleProxy::start_rewriting(moto.url(), UNLIMITED, UNLIMITED, UNLIMITED, rewrite).await;
        let cc = "ksctl-cloud-controller".to_string();
        let mut env: Vec<(String, String, String)> = [
            ("AWS_ENDPOINT_URL", proxy.url()),
            ("AWS_ACCESS_KEY_ID", key.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (cc.clone(), k.to_string(), v))
        .collect();
        env.push(("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,aws".into()));
        env.extend(more);
        let sys = System::start(SystemOptions { env, ..Default::default() }).await;
        // No kube-controller-manager or kubelets behind this API server: workloads ksctl applies
        // are given a rolled-out status.
        let admin = kube_api_client(&kube.kubeconfig).await;
        let rollouts = WorkloadController::start(move || {
            let c = admin.clone();
            async move { Some(c) }
        });
        EksLab {
            sys,
            conf,
            authenticator,
            kube,
            operator: (key, secret),
            intruder: (intruder_key, intruder_secret),
            _rollouts: rollouts,
            _proxy: proxy,
            _moto: moto,
        }
    }

    /// An admin client of the API server (client certificate, not through the webhook).
    pub async fn admin(&self) -> kube::Client {
        kube_api_client(&self.kube.kubeconfig).await
    }

    /// Creates the managed cluster `name` with `nodes` nodes through the CLI (not waiting).
    pub async fn create(&self, name: &str, nodes: u32) {
        create_eks(&self.sys, name, nodes).await
    }
}

/// Creates the managed EKS cluster `name` (Kubernetes 1.31, `nodes` nodes) through the CLI,
/// not waiting for it.
pub async fn create_eks(sys: &System, name: &str, nodes: u32) {
    let n = nodes.to_string();
    let args = [
        "cluster",
        "create",
        "--name",
        name,
        "--provider",
        "aws",
        "--region",
        REGION,
        "--type",
        "managed",
        "--managed-nodes",
        &n,
        "--version",
        "1.31",
        "--no-wait",
    ];
    let (code, out, err) = sys.ksctl(&args).await;
    assert_eq!(code, 0, "{out}{err}");
}

async fn kube_api_client(kubeconfig: &str) -> kube::Client {
    ksctl_k8s_controller::kube_api::client_from(kubeconfig).await.unwrap()
}
