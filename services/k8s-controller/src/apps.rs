//! A user's own application stack (`ksctl cluster apps apply|delete`), the `k8s_apps` phase.
//!
//! Apply: the manifests (sealed in `app.<cluster>.<stack>` by the manager) are parsed again and
//! every object is checked by a server-side dry-run before anything is applied — except objects
//! that need something the same file brings first (instances of its CRDs, objects in its new
//! namespaces), which are dry-run once that is in place. The inventory is recorded before
//! anything is applied. Namespaces and CRDs go first (CRDs waited on until Established), then
//! the rest in file order, each server-side applied under ksctl's field manager with the
//! ownership labels; then the Deployments and DaemonSets are waited on until ready, objects of
//! an earlier apply that left the file are deleted, and a `Stack` records what the stack holds.
//! Delete removes exactly the inventory, last applied first.
use crate::crds::{Stack, StackComponent, StackSpec};
use crate::kube_api::{FIELD_MANAGER, NAMESPACE, api_err};
use crate::manifests::{self, Resolver, apply_object, delete_object, describe, own};
use k8s_openapi::api::core::v1::Namespace;
use ksctl_core::ClusterId;
use ksctl_core::apps::{ObjectRef, apply_order, left_out, with_all};
use ksctl_core::keys;
use ksctl_core::records::AppRecord;
use ksctl_runtime::{PhaseCtx, PhaseError, read_record, update_record};
use ksctl_store::DynStore;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a new CRD may take to be Established.
const ESTABLISHED_WITHIN: Duration = Duration::from_secs(60);

/// The stack and, for an apply, its manifests (opened), of the phase's operation.
pub async fn change(store: &DynStore, ctx: &PhaseCtx<'_>) -> Result<(String, Option<String>), PhaseError> {
    let op = ctx.cluster.operation.as_ref();
    let stack = op
        .and_then(|o| o.app.clone())
        .ok_or_else(|| PhaseError::permanent("apps phase without an application stack".into()))?;
    if op.map(|o| o.kind) == Some(ksctl_core::state::OpKind::AppsDelete) {
        return Ok((stack, None));
    }
    let id = &ctx.cluster.id;
    let rec: AppRecord = read_record(store, &keys::app(id, &stack)).await?;
    let sealed =
        rec.manifests.ok_or_else(|| PhaseError::permanent(format!("stack {stack} has no manifests recorded")))?;
    let yaml = ctx.rt.sealer.open_string(&AppRecord::purpose(id, &stack), &sealed)?;
    Ok((stack, Some(yaml)))
}

/// The objects of `yaml`, labelled as `stack`'s, in apply order.
fn objects(stack: &str, yaml: &str) -> Result<Vec<(ObjectRef, DynamicObject)>, PhaseError> {
    let parsed = ksctl_core::apps::parse(yaml).map_err(|e| PhaseError::permanent(format!("stack {stack}: {e}")))?;
    let mut out = Vec::new();
    for (r, mut value) in apply_order(parsed) {
        manifests::normalize(&r.kind, &mut value);
        let mut obj: DynamicObject = serde_json::from_value(value)
            .map_err(|e| PhaseError::permanent(format!("stack {stack}: {}: {e}", r.shown())))?;
        own(&mut obj, stack);
        out.push((r, obj));
    }
    Ok(out)
}

/// An object to find `r` by (enough for [`Resolver`] and a delete).
fn skeleton(r: &ObjectRef) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": r.api_version, "kind": r.kind,
        "metadata": {"name": r.name, "namespace": r.namespace},
    }))
    .expect("a reference makes an object")
}

/// Whose the object is, if it exists: `Some(Some(stack))` when it carries ksctl's stack label,
/// `Some(None)` when it exists without one.
async fn owner(resolver: &mut Resolver<'_>, r: &ObjectRef) -> Result<Option<Option<String>>, PhaseError> {
    let api = match resolver.api(&skeleton(r)).await {
        Ok(api) => api,
        // A kind the server does not serve yet has no objects.
        Err(e) if e.is_permanent() => return Ok(None),
        Err(e) => return Err(e),
    };
    let found = api.get_opt(&r.name).await.map_err(|e| api_err(&format!("reading {}", r.shown()), e))?;
    Ok(found.map(|o| o.metadata.labels.and_then(|mut l| l.remove(manifests::PART_OF))))
}

/// Refuses an object that exists and is not `stack`'s: ksctl takes over no object it did not
/// make for this stack (deleting the stack would delete it).
async fn not_anothers(resolver: &mut Resolver<'_>, r: &ObjectRef, stack: &str) -> Result<(), PhaseError> {
    match owner(resolver, r).await? {
        Some(owner) if owner.as_deref() != Some(stack) => {
            let whose = owner.map_or("not ksctl's".to_string(), |o| format!("part of stack {o}"));
            Err(PhaseError::permanent(format!(
                "stack {stack}: {} already exists and is {whose}; ksctl does not take it over",
                r.shown()
            )))
        }
        _ => Ok(()),
    }
}

/// Deletes the object of `r` if it is `stack`'s (someone may have taken it over since).
async fn delete_owned(resolver: &mut Resolver<'_>, r: &ObjectRef, stack: &str) -> Result<(), PhaseError> {
    match owner(resolver, r).await? {
        Some(Some(owner)) if owner == stack => delete_object(resolver, &skeleton(r)).await,
        Some(other) => {
            tracing::warn!(object = %r.shown(), owner = ?other, stack, "not deleted: no longer the stack's");
            Ok(())
        }
        None => Ok(()),
    }
}

/// Deletes each of `gone` that is still `stack`'s, last applied first.
pub(crate) async fn prune(resolver: &mut Resolver<'_>, gone: &[&ObjectRef], stack: &str) -> Result<(), PhaseError> {
    for r in gone.iter().rev() {
        delete_owned(resolver, r, stack).await?;
    }
    Ok(())
}

/// Applies `stack` from `yaml`, pruning what an earlier apply had and this one has not.
pub async fn apply(
    client: &kube::Client,
    store: &DynStore,
    ctx: &PhaseCtx<'_>,
    stack: &str,
    yaml: &str,
    ready_timeout: Duration,
) -> Result<(), PhaseError> {
    let id = &ctx.cluster.id;
    let objects = objects(stack, yaml)?;
    // What this file brings that other objects of it need first.
    let crd_kinds: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|(r, _)| r.is_crd())
        .map(|(_, o)| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (text(&o.data["spec"]["group"]), text(&o.data["spec"]["names"]["kind"]))
        })
        .collect();
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut new_namespaces = BTreeSet::new();
    for (r, _) in objects.iter().filter(|(r, _)| r.is_namespace()) {
        let exists = namespaces.get_opt(&r.name).await.map_err(|e| api_err("reading namespaces", e))?.is_some();
        if !exists {
            new_namespaces.insert(r.name.clone());
        }
    }
    let waits_for_file = |r: &ObjectRef| {
        crd_kinds.contains(&(r.group().to_string(), r.kind.clone()))
            || r.namespace.as_ref().is_some_and(|ns| new_namespaces.contains(ns))
    };
    let total = objects.len() as u32 + 2;

    // 1. Everything the server can check now is checked before anything is applied: that it
    // is not another's (ksctl takes over no object it did not make for this stack) and, by a
    // server-side dry-run, that the server admits it.
    let mut resolver = Resolver::new(client);
    let mut later = 0;
    for (r, obj) in &objects {
        if waits_for_file(r) {
            later += 1;
            continue;
        }
        not_anothers(&mut resolver, r, stack).await?;
        apply_object(&mut resolver, obj, true).await.map_err(|e| refused(stack, e))?;
    }
    ctx.progress(
        format!(
            "server-side dry-run passed for {} objects ({later} wait for the file's CRDs or namespaces)",
            objects.len() - later
        ),
        1,
        total,
    )
    .await;

    // 2. The inventory first: a crash from here on cannot leave an object ksctl does not know.
    let wanted: Vec<ObjectRef> = objects.iter().map(|(r, _)| r.clone()).collect();
    let before = update_record(store, &keys::app(id, stack), |rec: &mut AppRecord| {
        rec.stack = stack.to_string();
        rec.inventory = with_all(&rec.inventory, &wanted);
    })
    .await?
    .inventory;

    // 3. Namespaces and CRDs, then the rest (dry-run first where it had to wait).
    let mut done = 1;
    let mut crds = vec![];
    for (r, obj) in objects.iter().filter(|(r, _)| r.is_namespace() || r.is_crd()) {
        apply_object(&mut resolver, obj, false).await?;
        if r.is_crd() {
            crds.push(r.name.clone());
        }
        done += 1;
        ctx.progress(format!("applied {}", describe(obj)), done, total).await;
    }
    crate::kube_api::wait_established(client, &crds, ESTABLISHED_WITHIN).await?;
    // Kinds the CRDs just brought are discovered afresh.
    let mut resolver = Resolver::new(client);
    let rest: Vec<_> = objects.iter().filter(|(r, _)| !r.is_namespace() && !r.is_crd()).collect();
    for (r, obj) in &rest {
        if waits_for_file(r) {
            not_anothers(&mut resolver, r, stack).await?;
            apply_object(&mut resolver, obj, true).await.map_err(|e| refused(stack, e))?;
        }
    }
    for (_, obj) in &rest {
        apply_object(&mut resolver, obj, false).await?;
        done += 1;
        ctx.progress(format!("applied {}", describe(obj)), done, total).await;
    }

    // 4. Ready, then pruned, then recorded.
    let applied: Vec<DynamicObject> = objects.iter().map(|(_, o)| o.clone()).collect();
    let workloads = manifests::workloads_of(&applied);
    manifests::wait_ready(client, &workloads, ready_timeout).await?;
    let gone = left_out(&before, &wanted);
    prune(&mut resolver, &gone, stack).await?;
    update_record(store, &keys::app(id, stack), |rec: &mut AppRecord| rec.inventory = wanted.clone()).await?;
    record_stack(client, stack, &wanted).await?;
    let pruned = if gone.is_empty() { String::new() } else { format!("; pruned {}", gone.len()) };
    ctx.progress(
        format!("stack {stack}: {} objects applied, {} workloads ready{pruned}", wanted.len(), workloads.len()),
        total,
        total,
    )
    .await;
    Ok(())
}

/// A refusal of the server's names the stack (it is the user's file that is wrong).
fn refused(stack: &str, e: PhaseError) -> PhaseError {
    if e.is_permanent() { PhaseError::permanent(format!("stack {stack} refused by the API server: {e}")) } else { e }
}

/// The `Stack` that shows what the stack holds (`kubectl get stacks -n ksctl-system`): one
/// component per object, with its API version.
async fn record_stack(client: &kube::Client, stack: &str, objects: &[ObjectRef]) -> Result<(), PhaseError> {
    let components =
        objects.iter().map(|r| StackComponent { name: r.shown(), version: r.api_version.clone() }).collect();
    let mut s = Stack::new(stack, StackSpec { stack_name: stack.to_string(), components, objects: vec![] });
    s.metadata.namespace = Some(NAMESPACE.into());
    let api = Api::<Stack>::namespaced(client.clone(), NAMESPACE);
    api.patch(stack, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&s))
        .await
        .map_err(|e| api_err(&format!("recording Stack {stack}"), e))?;
    Ok(())
}

/// Deletes every object the stack's inventory holds, last applied first, then its `Stack` and
/// its record.
pub async fn delete(
    client: &kube::Client,
    store: &DynStore,
    ctx: &PhaseCtx<'_>,
    stack: &str,
) -> Result<(), PhaseError> {
    let id: &ClusterId = &ctx.cluster.id;
    let rec: AppRecord = read_record(store, &keys::app(id, stack)).await?;
    let mut resolver = Resolver::new(client);
    let total = rec.inventory.len() as u32 + 1;
    for (n, r) in rec.inventory.iter().rev().enumerate() {
        delete_owned(&mut resolver, r, stack).await?;
        ctx.progress(format!("deleted {}", r.shown()), n as u32 + 1, total).await;
    }
    match Api::<Stack>::namespaced(client.clone(), NAMESPACE).delete(stack, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err(&format!("deleting Stack {stack}"), e)),
    }
    store.delete(&keys::app(id, stack)).await?;
    ctx.progress(format!("stack {stack} deleted"), total, total).await;
    Ok(())
}
