//! Users' own application stacks through the bus (`ksctl cluster apps apply|delete`), on a
//! managed EKS cluster whose API server is real (`ksctl_tests::eks_lab`): a CRD and its custom
//! resource in one file, a namespace and what lives in it, a Deployment waited on; a second
//! apply prunes what left the file; a file with an invalid object is refused by server-side
//! dry-run before anything of it is applied; delete removes exactly what was applied; a
//! malformed file is refused by the manager and changes nothing.
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ksctl_core::ClusterId;
use ksctl_core::records::AppRecord;
use ksctl_k8s_controller::crds::Stack;
use ksctl_tests::TempDir;
use ksctl_tests::eks_lab::EksLab;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
";

fn app(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
const WIDGET: &str =
    "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: shop}\nspec: {size: 3}\n";
const SETTINGS: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\ndata: {mode: a}\n";
const SETTINGS2: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings2, namespace: shop}\ndata: {mode: b}\n";
const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox:1}]
";
const WEB_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80}]
";
/// The server refuses it (a port is at most 65535); nothing in the file parses it that way.
const BAD_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  ports: [{port: 70000}]
";
const NEW_CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: would-be-new, namespace: default}\n";

async fn apps(lab: &EksLab, dir: &TempDir, args: &[&str], file: Option<&str>) -> (i32, String, String) {
    let mut all: Vec<String> = ["cluster", "apps"].iter().chain(args).map(|s| s.to_string()).collect();
    if let Some(text) = file {
        let path = dir.0.join(format!("app-{}.yaml", fastrand::u32(..)));
        std::fs::write(&path, text).unwrap();
        all.extend(["-f".to_string(), path.display().to_string()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    lab.sys.ksctl(&all).await
}

fn widgets(c: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
    Api::namespaced_with(c.clone(), "shop", &ar)
}

async fn app_record(lab: &EksLab, stack: &str) -> Option<AppRecord> {
    let id = ClusterId::new("apps").unwrap();
    ksctl_store::get_json(lab.sys.store.as_ref(), &ksctl_core::keys::app(&id, stack)).await.unwrap().map(|(r, _)| r)
}

#[tokio::test(flavor = "multi_thread")]
async fn stacks_apply_prune_refuse_invalid_files_and_delete_exactly_what_they_applied() {
    let lab = EksLab::start("apps", vec![]).await;
    let dir = TempDir::new("apps");
    lab.create("apps", 1).await;
    lab.sys.wait_state("apps", "running", T).await;
    let admin = lab.admin().await;
    let configmaps = |ns: &str| Api::<ConfigMap>::namespaced(admin.clone(), ns);

    // Apply: the custom resource comes before its CRD and the namespace last in the file; the
    // stack applies them in the order they need.
    let v1 = app(&[WIDGET, SETTINGS, CRD, WEB, WEB_SERVICE, NAMESPACE]);
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "shop"], Some(&v1)).await;
    assert_eq!(code, 0, "{out}{err}");
    let w1 = widgets(&admin).get("w1").await.expect("the custom resource");
    assert_eq!(w1.data["spec"]["size"], 3);
    let labels = w1.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "ksctl");
    assert_eq!(labels["ksctl.io/stack"], "shop");
    let managers: Vec<String> =
        w1.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert_eq!(managers, ["ksctl"], "server-side applied under ksctl's field manager");
    assert!(configmaps("shop").get_opt("settings").await.unwrap().is_some());
    assert!(Api::<Service>::namespaced(admin.clone(), "shop").get_opt("web").await.unwrap().is_some());
    let web = Api::<Deployment>::namespaced(admin.clone(), "shop").get("web").await.unwrap();
    assert_eq!(web.status.unwrap().available_replicas, Some(2), "the apply waited for the Deployment");
    let stack = Api::<Stack>::namespaced(admin.clone(), "ksctl-system").get("shop").await.expect("its Stack");
    let components: Vec<String> = stack.spec.components.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        components,
        [
            "CustomResourceDefinition widgets.example.com",
            "Namespace shop",
            "Widget shop/w1",
            "ConfigMap shop/settings",
            "Deployment shop/web",
            "Service shop/web"
        ]
    );
    let (_, info, _) = lab.sys.ksctl(&["cluster", "info", "apps"]).await;
    assert!(info.contains("apps: shop"), "{info}");
    let rec = app_record(&lab, "shop").await.unwrap();
    assert_eq!(rec.inventory.len(), 6);
    let sealed = serde_json::to_string(&rec.manifests).unwrap();
    assert!(!sealed.contains("settings"), "the manifests are sealed in the store: {sealed}");

    // Apply again without the Widget and `settings`, with `settings2`: those two are pruned.
    let v2 = app(&[CRD, NAMESPACE, SETTINGS2, WEB, WEB_SERVICE]);
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "shop"], Some(&v2)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(widgets(&admin).get_opt("w1").await.unwrap().is_none(), "the Widget that left the file is pruned");
    assert!(configmaps("shop").get_opt("settings").await.unwrap().is_none(), "pruned");
    assert!(configmaps("shop").get_opt("settings2").await.unwrap().is_some());
    assert_eq!(app_record(&lab, "shop").await.unwrap().inventory.len(), 5);

    // Another stack may not take over the shop stack's namespace (deleting it would delete it).
    let other = app(&[NAMESPACE, NEW_CONFIG]);
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "other"], Some(&other)).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("Namespace shop already exists and is part of stack shop"), "{out}{err}");
    assert!(configmaps("default").get_opt("would-be-new").await.unwrap().is_none(), "nothing was applied");
    let (code, out, err) = apps(&lab, &dir, &["delete", "apps", "--name", "other"], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(Api::<Namespace>::all(admin.clone()).get_opt("shop").await.unwrap().is_some(), "shop's namespace stays");

    // A file with an invalid object: refused by the server's dry-run, nothing of it applied.
    let v3 = app(&[CRD, NAMESPACE, SETTINGS2, WEB, WEB_SERVICE, NEW_CONFIG, BAD_SERVICE]);
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "shop"], Some(&v3)).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("Service default/broken"), "{out}{err}");
    assert!(configmaps("default").get_opt("would-be-new").await.unwrap().is_none(), "nothing was applied");
    assert_eq!(app_record(&lab, "shop").await.unwrap().inventory.len(), 5, "the inventory is unchanged");

    // A file that is not manifests: the manager refuses it and changes nothing.
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "shop"], Some("kind: [\n")).await;
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("manifests"), "{out}{err}");
    let (code, _, err) = apps(&lab, &dir, &["apply", "apps", "--name", "metrics-server"], Some(SETTINGS)).await;
    assert_ne!(code, 0);
    assert!(err.contains("ksctl's own") || err.contains("stack"), "{err}");

    // Delete: exactly what the stack applied.
    let (code, out, err) = apps(&lab, &dir, &["delete", "apps", "--name", "shop"], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(configmaps("shop").get_opt("settings2").await.unwrap().is_none());
    assert!(Api::<Deployment>::namespaced(admin.clone(), "shop").get_opt("web").await.unwrap().is_none());
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    ksctl_tests::eventually(T, "the CRD to be gone", || async {
        crds.get_opt("widgets.example.com").await.unwrap().is_none().then_some(())
    })
    .await;
    // The lab's workload controller finalizes namespaces (there is no namespace controller).
    let namespaces = Api::<Namespace>::all(admin.clone());
    ksctl_tests::eventually(T, "the namespace to be gone", || async {
        namespaces.get_opt("shop").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(Api::<Stack>::namespaced(admin.clone(), "ksctl-system").get_opt("shop").await.unwrap().is_none());
    assert!(app_record(&lab, "shop").await.is_none());
    let (_, info, _) = lab.sys.ksctl(&["cluster", "info", "apps"]).await;
    assert!(info.contains("apps: -"), "{info}");
    // Deleting it again has nothing to do.
    let (code, out, _) = apps(&lab, &dir, &["delete", "apps", "--name", "shop"], None).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    // A stack's record goes with its cluster.
    let (code, out, err) = apps(&lab, &dir, &["apply", "apps", "--name", "left"], Some(NEW_CONFIG)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(app_record(&lab, "left").await.is_some());
    let (code, out, err) = lab.sys.ksctl(&["cluster", "delete", "apps"]).await;
    assert_eq!(code, 0, "{out}{err}");
    lab.sys.wait_gone("apps", T).await;
    assert!(app_record(&lab, "left").await.is_none());
}
