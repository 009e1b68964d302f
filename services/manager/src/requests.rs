//! `ksctl.request.*`: validate, check the state machine, record the operation, dispatch its
//! first phase, answer. A rejected request writes nothing.
use crate::Manager;
use crate::ops::touch;
use ksctl_bus::{Envelope, Handler, HandlerError};
use ksctl_core::addons::{DesiredAddons, Followed, ObjectGeneration, is_news, steps_towards};
use ksctl_core::ids::validate_request_id;
use ksctl_core::messages::{
    API_VERSION, AddonRequest, AppsRequest, CreateRequest, DeleteRequest, Event, EventKind, REPLY_HEADER, RequestReply,
    RequestVerb, ScaleRequest,
};
use ksctl_core::records::{AppRecord, ClusterRecord, K8sRecord, OperationRecord};
use ksctl_core::saga::first_phase;
use ksctl_core::spec::{ClusterType, FieldError, LOCAL_NO_SCALE, MAX_NODES_PER_ROLE, Provider};
use ksctl_core::state::{OpKind, check_transition};
use ksctl_core::{ClusterId, OperationId, now_ms};
use serde::de::DeserializeOwned;

pub struct RequestHandler(pub Manager);

/// Why a request was not accepted.
enum Outcome {
    Accepted(Box<RequestReply>),
    Rejected { cluster: Option<String>, request_id: Option<String>, message: String, errors: Vec<FieldError> },
}

fn reject(cluster: Option<&str>, request_id: Option<&str>, message: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        cluster: cluster.map(Into::into),
        request_id: request_id.map(Into::into),
        message: message.into(),
        errors: vec![],
    }
}

/// Reads a request; a type error names its field (its JSON path, e.g. `spec.worker_nodes`) in the
/// reply's `errors` as well as in the message.
fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Outcome> {
    ksctl_core::json::from_slice(payload).map_err(|e| Outcome::Rejected {
        cluster: None,
        request_id: None,
        message: format!("malformed request: {e}"),
        errors: e.field.iter().map(|f| FieldError { field: f.clone(), message: e.message.clone() }).collect(),
    })
}

fn check_common(api_version: &str, request_id: &str, name: &str) -> Result<ClusterId, Outcome> {
    let mut errors = Vec::new();
    if api_version != API_VERSION {
        errors.push(FieldError {
            field: "api_version".into(),
            message: format!("{api_version:?} is not supported; use {API_VERSION:?}"),
        });
    }
    if let Err(m) = validate_request_id(request_id) {
        errors.push(FieldError { field: "request_id".into(), message: m });
    }
    let id = ClusterId::new(name).map_err(|m| errors.push(FieldError { field: "cluster_name".into(), message: m }));
    match (errors.is_empty(), id) {
        (true, Ok(id)) => Ok(id),
        _ => Err(invalid(name, request_id, errors)),
    }
}

fn invalid(name: &str, request_id: &str, errors: Vec<FieldError>) -> Outcome {
    let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    Outcome::Rejected {
        cluster: ClusterId::new(name).ok().map(|c| c.to_string()),
        request_id: Some(request_id.to_string()),
        message: format!("invalid request: {}", list.join("; ")),
        errors,
    }
}

fn accepted(id: &ClusterId, request_id: &str, op: Option<&OperationId>, message: String) -> Outcome {
    Outcome::Accepted(Box::new(RequestReply {
        accepted: true,
        request_id: Some(request_id.into()),
        cluster_id: Some(id.clone()),
        operation_id: op.cloned(),
        message,
        errors: vec![],
    }))
}

/// What a delete, scale or addon request comes to once the cluster's record is read.
enum Decision {
    Run(Plan),
    /// Accepted with nothing to do, and why.
    Nothing(String),
}

struct Plan {
    kind: OpKind,
    target_workers: Option<u32>,
    addon: Option<String>,
    /// An application stack's name, and for an apply the manifests it asks for.
    app: Option<(String, Option<String>)>,
    /// For an addon change the cluster's `ClusterAddon` object asked for: the object's
    /// generation and the version it pins.
    cluster_addon: Option<(ObjectGeneration, Option<String>)>,
}

impl Plan {
    fn of(kind: OpKind) -> Self {
        Self { kind, target_workers: None, addon: None, app: None, cluster_addon: None }
    }
}

fn new_operation(id: &str, rec: &ClusterRecord, plan: Plan) -> OperationRecord {
    let now = now_ms();
    let kind = plan.kind;
    OperationRecord {
        id: OperationId::from_request(id),
        kind,
        phase: first_phase(kind, rec.cluster_type),
        dispatch: 0,
        dispatched_at_ms: now,
        started_at_ms: now,
        finished_at_ms: None,
        target_workers: plan.target_workers,
        addon: plan.addon,
        app: plan.app.map(|(stack, _)| stack),
        cluster_addon_generation: plan.cluster_addon.as_ref().map(|(g, _)| g.generation),
        addon_version: plan.cluster_addon.and_then(|(_, v)| v),
        phases_done: vec![],
        error: None,
    }
}

#[async_trait::async_trait]
impl Handler for RequestHandler {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let m = &self.0;
        let asked = env.subject().rsplit('.').next().unwrap_or_default();
        let verb = RequestVerb::parse(asked);
        // Metric labels: anything a sender invents is `unknown`.
        let label = verb.map_or("unknown", RequestVerb::as_str);
        let outcome = match verb {
            Some(RequestVerb::Create) => self.create(env.payload()).await?,
            Some(RequestVerb::Delete) => self.delete(env.payload()).await?,
            Some(RequestVerb::Scale) => self.scale(env.payload()).await?,
            Some(RequestVerb::Addon) => self.addon(env.payload()).await?,
            Some(RequestVerb::Apps) => self.apps(env.payload()).await?,
            None => reject(
                None,
                None,
                format!("unknown request {asked:?}; expected {}", RequestVerb::spellings().join(", ")),
            ),
        };
        let reply = match outcome {
            Outcome::Accepted(r) => {
                m.rt.metrics.inc("requests_total", &[("request", label), ("outcome", "accepted")]);
                *r
            }
            Outcome::Rejected { cluster, request_id, message, errors } => {
                m.rt.metrics.inc("requests_total", &[("request", label), ("outcome", "rejected")]);
                tracing::info!(request = asked, %message, "request rejected");
                let mut ev = Event::new(cluster.as_deref().unwrap_or("_"), EventKind::Rejected, message.clone());
                ev.request_id = request_id.clone();
                m.rt.publisher.event(ev).await;
                RequestReply {
                    accepted: false,
                    request_id,
                    cluster_id: cluster.and_then(|c| ClusterId::new(&c).ok()),
                    operation_id: None,
                    message,
                    errors,
                }
            }
        };
        if let Some(to) = env.header(REPLY_HEADER) {
            let body = serde_json::to_vec(&reply).expect("reply serialises");
            if let Err(e) = m.rt.publisher.client.publish(to, body.into()).await {
                tracing::warn!(error = %e, "reply not sent");
            }
        }
        Ok(())
    }
}

impl RequestHandler {
    async fn create(&self, payload: &[u8]) -> Result<Outcome, HandlerError> {
        let m = &self.0;
        let req: CreateRequest = match parse(payload) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        let id = match check_common(&req.api_version, &req.request_id, &req.spec.cluster_name) {
            Ok(id) => id,
            Err(o) => return Ok(o),
        };
        let shape = match req.spec.validate(&m.providers) {
            Ok(s) => s,
            Err(errors) => return Ok(invalid(&req.spec.cluster_name, &req.request_id, errors)),
        };
        let op_id = OperationId::from_request(&req.request_id);
        if let Some(o) = self.precheck(&id, &op_id, &req.request_id, OpKind::Create).await? {
            return Ok(o);
        }
        let lease = m.lease(&id).await?;
        let existing = m.load(&id).await?;
        // Every write under the lease is fenced: a replica that lost it writes nothing.
        let result = lease.fence().scope(async {
            if let Some(o) = self.same_operation(&existing, &op_id, &id, &req.request_id).await? {
                return Ok(o);
            }
            let state = existing.as_ref().map(|(r, _)| r.state);
            if let Err(why) = check_transition(state, OpKind::Create) {
                return Ok(reject(Some(id.as_str()), Some(&req.request_id), format!("cannot create cluster {id}: {why}")));
            }
            if let Some((old, _)) = &existing
                && old.spec != req.spec
            {
                return Ok(reject(
                    Some(id.as_str()),
                    Some(&req.request_id),
                    format!("cluster {id} failed to create with a different spec; retry with the same spec or delete it first"),
                ));
            }
            let now = now_ms();
            let mut rec = ClusterRecord {
                id: id.clone(),
                spec: req.spec.clone(),
                provider: shape.provider,
                cluster_type: shape.cluster_type,
                distro: shape.distro,
                state: OpKind::Create.busy_state(),
                created_at_ms: existing.as_ref().map(|(r, _)| r.created_at_ms).unwrap_or(now),
                updated_at_ms: now,
                operation: None,
                last_operation: existing.as_ref().and_then(|(r, _)| r.last_operation.clone()),
                apps: vec![],
                cluster_addon: None,
            };
            rec.operation = Some(new_operation(&req.request_id, &rec, Plan::of(OpKind::Create)));
            self.start(rec, existing.map(|(_, rev)| rev), &req.request_id).await
        })
        .await;
        lease.release().await;
        result
    }

    async fn delete(&self, payload: &[u8]) -> Result<Outcome, HandlerError> {
        let req: DeleteRequest = match parse(payload) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        let id = match check_common(&req.api_version, &req.request_id, &req.cluster_name) {
            Ok(id) => id,
            Err(o) => return Ok(o),
        };
        self.transition(&id, &req.request_id, OpKind::Delete, |_| Ok(Decision::Run(Plan::of(OpKind::Delete)))).await
    }

    async fn scale(&self, payload: &[u8]) -> Result<Outcome, HandlerError> {
        let req: ScaleRequest = match parse(payload) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        let id = match check_common(&req.api_version, &req.request_id, &req.cluster_name) {
            Ok(id) => id,
            Err(o) => return Ok(o),
        };
        if req.workers > MAX_NODES_PER_ROLE {
            let e = FieldError {
                field: "workers".into(),
                message: format!("{} is more than the limit of {MAX_NODES_PER_ROLE}", req.workers),
            };
            return Ok(invalid(&req.cluster_name, &req.request_id, vec![e]));
        }
        let target = req.workers;
        self.transition(&id, &req.request_id, OpKind::ScaleUp, move |rec| {
            let (current, managed) = match rec.cluster_type {
                ClusterType::Managed => (rec.spec.managed_nodes, true),
                ClusterType::Selfmanaged => (rec.spec.worker_nodes, false),
            };
            if rec.provider == Provider::Local {
                return Err(format!("cannot scale cluster {}: {}", rec.id, LOCAL_NO_SCALE));
            }
            if managed && target == 0 {
                return Err(format!("cannot scale cluster {}: a managed cluster needs at least 1 node", rec.id));
            }
            if let Some(h) = &rec.spec.hosts
                && target as usize > h.workers.len()
            {
                return Err(format!(
                    "cannot scale cluster {}: the cluster lists {} worker hosts; a byo cluster scales only onto hosts listed in hosts.workers at create",
                    rec.id,
                    h.workers.len()
                ));
            }
            let kind = match target.cmp(&current) {
                std::cmp::Ordering::Equal => {
                    return Ok(Decision::Nothing(format!(
                        "cluster {} already has the requested number of workers; nothing to do",
                        rec.id
                    )));
                }
                std::cmp::Ordering::Greater => OpKind::ScaleUp,
                std::cmp::Ordering::Less => OpKind::ScaleDown,
            };
            Ok(Decision::Run(Plan { target_workers: Some(target), ..Plan::of(kind) }))
        })
        .await
    }

    /// Enabling an enabled addon runs again (re-applying its pinned manifests repairs drift);
    /// disabling one that is not enabled has nothing to do.
    async fn addon(&self, payload: &[u8]) -> Result<Outcome, HandlerError> {
        let req: AddonRequest = match parse(payload) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        let id = match check_common(&req.api_version, &req.request_id, &req.cluster_name) {
            Ok(id) => id,
            Err(o) => return Ok(o),
        };
        if ksctl_core::addons::find(&req.addon).is_none() {
            let e = FieldError {
                field: "addon".into(),
                message: format!("unknown addon {:?}; available: {}", req.addon, ksctl_core::addons::names()),
            };
            return Ok(invalid(&req.cluster_name, &req.request_id, vec![e]));
        }
        let kind = if req.enable { OpKind::AddonEnable } else { OpKind::AddonDisable };
        let addon = req.addon.clone();
        self.transition(&id, &req.request_id, kind, move |rec| {
            if !req.enable && !rec.spec.addons.contains(&addon) {
                return Ok(Decision::Nothing(format!(
                    "addon {addon} is not enabled on cluster {}; nothing to do",
                    rec.id
                )));
            }
            Ok(Decision::Run(Plan { addon: Some(addon.clone()), ..Plan::of(kind) }))
        })
        .await
    }

    /// Follows the cluster's `ClusterAddon` object, as a heartbeat read it: when the reading is
    /// news ([`ksctl_core::addons::is_news`]) and the cluster is idle (running, or its last
    /// change failed), starts the first addon change the object asks for
    /// ([`ksctl_core::addons::steps_towards`]) like a request would, under a request id made
    /// from the object's uid and generation (two replicas start it once). The decision is made
    /// again under the cluster's lease, from the record read there. Nobody waits for an answer;
    /// the events tell.
    pub async fn follow_cluster_addon(&self, rec: &ClusterRecord, desired: &DesiredAddons) -> Result<(), HandlerError> {
        let m = &self.0;
        let id = &rec.id;
        let idle =
            |r: &ClusterRecord| r.operation.is_none() && check_transition(Some(r.state), OpKind::AddonEnable).is_ok();
        // Every heartbeat comes here: a cluster that is busy, or in step with its object, costs
        // no further read.
        if !idle(rec) || steps_towards(&rec.spec.addons, desired).is_empty() {
            return Ok(());
        }
        let written = ksctl_store::get_json::<K8sRecord>(m.rt.store.as_ref(), &ksctl_core::keys::k8s(id))
            .await
            .map_err(crate::ops::store_retry)?
            .map(|(r, _)| r.cluster_addon_written)
            .unwrap_or_default();
        let next = |r: &ClusterRecord| {
            let news = idle(r) && is_news(desired, &written, r.cluster_addon.as_ref());
            news.then(|| steps_towards(&r.spec.addons, desired).into_iter().next()).flatten()
        };
        let Some(step) = next(rec) else { return Ok(()) };
        let kind = if step.enable { OpKind::AddonEnable } else { OpKind::AddonDisable };
        let object = ObjectGeneration { uid: desired.uid.clone(), generation: desired.generation };
        let outcome = self
            .transition(id, &step.request_id, kind, |fresh| {
                if next(fresh).as_ref() != Some(&step) {
                    return Ok(Decision::Nothing("the ClusterAddon change was decided otherwise meanwhile".into()));
                }
                Ok(Decision::Run(Plan {
                    addon: Some(step.addon.clone()),
                    cluster_addon: Some((object.clone(), step.version.clone())),
                    ..Plan::of(kind)
                }))
            })
            .await?;
        match outcome {
            Outcome::Accepted(r) => {
                tracing::info!(cluster_id = %id, addon = %step.addon, generation = desired.generation, message = %r.message, "ClusterAddon change")
            }
            Outcome::Rejected { message, .. } => {
                tracing::info!(cluster_id = %id, addon = %step.addon, %message, "ClusterAddon change not started")
            }
        }
        Ok(())
    }

    /// Applies a user's application stack (again: prunes what left the file) or deletes it.
    /// The manifests are checked here (parse, size, names); the server checks them again
    /// (dry-run) before anything is applied.
    async fn apps(&self, payload: &[u8]) -> Result<Outcome, HandlerError> {
        let req: AppsRequest = match parse(payload) {
            Ok(r) => r,
            Err(o) => return Ok(o),
        };
        let id = match check_common(&req.api_version, &req.request_id, &req.cluster_name) {
            Ok(id) => id,
            Err(o) => return Ok(o),
        };
        let mut errors = vec![];
        if let Err(m) = ksctl_core::apps::validate_stack_name(&req.stack) {
            errors.push(FieldError { field: "stack".into(), message: m });
        }
        if let Some(Err(m)) = req.manifests.as_deref().map(ksctl_core::apps::parse) {
            errors.push(FieldError { field: "manifests".into(), message: m });
        }
        if !errors.is_empty() {
            return Ok(invalid(&req.cluster_name, &req.request_id, errors));
        }
        let kind = if req.manifests.is_some() { OpKind::AppsApply } else { OpKind::AppsDelete };
        self.transition(&id, &req.request_id, kind, move |rec| {
            if kind == OpKind::AppsDelete && !rec.apps.contains(&req.stack) {
                return Ok(Decision::Nothing(format!("cluster {} has no stack {}; nothing to do", rec.id, req.stack)));
            }
            Ok(Decision::Run(Plan { app: Some((req.stack.clone(), req.manifests.clone())), ..Plan::of(kind) }))
        })
        .await
    }

    /// Records what an accepted apply asks for (sealed: manifests may hold Secrets), keeping
    /// the inventory of what earlier applies put into the cluster.
    async fn record_app(&self, id: &ClusterId, stack: &str, manifests: &str) -> Result<(), HandlerError> {
        let m = &self.0;
        let sealed = m.rt.sealer.seal(&AppRecord::purpose(id, stack), manifests.as_bytes());
        let out =
            ksctl_store::modify(m.rt.store.as_ref(), &ksctl_core::keys::app(id, stack), |cur: Option<AppRecord>| {
                let mut rec = cur.unwrap_or_else(|| AppRecord { stack: stack.to_string(), ..Default::default() });
                rec.manifests = Some(sealed.clone());
                Ok::<_, std::convert::Infallible>(Some(rec))
            })
            .await
            .map_err(|e| HandlerError::retry(format!("recording stack {stack}: {e}")))?;
        out.map(|_| ()).map_err(|e| match e {})
    }

    /// Starts delete, scale or an addon change on an existing cluster. `decide` turns the
    /// record into a plan (`Err`: rejected with that reason).
    async fn transition(
        &self,
        id: &ClusterId,
        request_id: &str,
        kind: OpKind,
        decide: impl Fn(&ClusterRecord) -> Result<Decision, String> + Send,
    ) -> Result<Outcome, HandlerError> {
        let m = &self.0;
        let op_id = OperationId::from_request(request_id);
        if let Some(o) = self.precheck(id, &op_id, request_id, kind).await? {
            return Ok(o);
        }
        let lease = m.lease(id).await?;
        let existing = m.load(id).await?;
        // Every write under the lease is fenced: a replica that lost it writes nothing.
        let result = lease
            .fence()
            .scope(async {
                if let Some(o) = self.same_operation(&existing, &op_id, id, request_id).await? {
                    return Ok(o);
                }
                let Some((mut rec, rev)) = existing else {
                    return Ok(reject(Some(id.as_str()), Some(request_id), format!("no cluster named {id}")));
                };
                let plan = match decide(&rec) {
                    Err(why) => return Ok(reject(Some(id.as_str()), Some(request_id), why)),
                    Ok(Decision::Nothing(why)) => return Ok(accepted(id, request_id, None, why)),
                    Ok(Decision::Run(plan)) => plan,
                };
                let kind = plan.kind;
                if let Err(why) = check_transition(Some(rec.state), kind) {
                    return Ok(reject(
                        Some(id.as_str()),
                        Some(request_id),
                        format!("cannot {kind} cluster {id}: {why}"),
                    ));
                }
                // A stack exists from its first accepted apply until a delete of it succeeds
                // (one that failed halfway may have objects in the cluster).
                if let Some((stack, Some(manifests))) = &plan.app {
                    self.record_app(id, stack, manifests).await?;
                    if !rec.apps.contains(stack) {
                        rec.apps.push(stack.clone());
                    }
                }
                rec.state = kind.busy_state();
                if let Some((object, _)) = &plan.cluster_addon {
                    rec.cluster_addon = Some(Followed { object: object.clone(), failed: false });
                }
                rec.operation = Some(new_operation(request_id, &rec, plan));
                touch(&mut rec);
                self.start(rec, Some(rev), request_id).await
            })
            .await;
        lease.release().await;
        result
    }

    /// Answers without the cluster lease when the answer needs no write: a repeated request,
    /// or one the state machine forbids (a busy cluster's lease is held by the worker of its
    /// current phase, and a rejection must not wait for that phase to end).
    async fn precheck(
        &self,
        id: &ClusterId,
        op_id: &OperationId,
        request_id: &str,
        kind: OpKind,
    ) -> Result<Option<Outcome>, HandlerError> {
        let existing = self.0.load(id).await?;
        if let Some(o) = self.same_operation(&existing, op_id, id, request_id).await? {
            return Ok(Some(o));
        }
        let state = existing.as_ref().map(|(r, _)| r.state);
        // Scale's direction is decided under the lease; its rules match scale-up's.
        match (state, check_transition(state, kind)) {
            (None, Err(_)) => Ok(Some(reject(Some(id.as_str()), Some(request_id), format!("no cluster named {id}")))),
            (Some(_), Err(why)) => {
                Ok(Some(reject(Some(id.as_str()), Some(request_id), format!("cannot {kind} cluster {id}: {why}"))))
            }
            _ => Ok(None),
        }
    }

    /// A request already recorded (published twice, or redelivered after a crash) gets the
    /// same answer again, and its current phase is dispatched again (deduplicated by id).
    async fn same_operation(
        &self,
        existing: &Option<(ClusterRecord, u64)>,
        op_id: &OperationId,
        id: &ClusterId,
        request_id: &str,
    ) -> Result<Option<Outcome>, HandlerError> {
        let Some((rec, _)) = existing else {
            return Ok(None);
        };
        if rec.operation.as_ref().is_some_and(|o| &o.id == op_id) {
            self.0.dispatch(rec).await?;
            return Ok(Some(accepted(id, request_id, Some(op_id), format!("operation {op_id} is under way"))));
        }
        if rec.last_operation.as_ref().is_some_and(|o| &o.id == op_id) {
            return Ok(Some(accepted(id, request_id, Some(op_id), format!("operation {op_id} already finished"))));
        }
        Ok(None)
    }

    async fn start(
        &self,
        rec: ClusterRecord,
        revision: Option<u64>,
        request_id: &str,
    ) -> Result<Outcome, HandlerError> {
        let m = &self.0;
        m.save(&rec, revision).await?;
        // Recorded first, then dispatched: a crash in between is healed by the redelivered
        // request (same operation → dispatch again) or by the reconciler.
        m.dispatch(&rec).await?;
        let op = rec.operation.as_ref().expect("set by caller");
        tracing::info!(cluster_id = %rec.id, op_id = %op.id, kind = %op.kind, "operation started");
        m.event(&rec, EventKind::Accepted, format!("{} of cluster {} accepted", op.kind, rec.id)).await;
        Ok(accepted(&rec.id, request_id, Some(&op.id), format!("{} of cluster {} accepted", op.kind, rec.id)))
    }
}
