//! `ksctl.request.*`: validate, check the state machine, record the operation, dispatch its
//! first phase, answer. A rejected request writes nothing.
use crate::Manager;
use crate::ops::touch;
use ksctl_bus::{Envelope, Handler, HandlerError};
use ksctl_core::ids::validate_request_id;
use ksctl_core::messages::{
    API_VERSION, AddonRequest, CreateRequest, DeleteRequest, Event, EventKind, REPLY_HEADER, RequestReply, ScaleRequest,
};
use ksctl_core::records::{ClusterRecord, OperationRecord};
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

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Outcome> {
    serde_json::from_slice(payload).map_err(|e| reject(None, None, format!("malformed request: {e}")))
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
}

impl Plan {
    fn of(kind: OpKind) -> Self {
        Self { kind, target_workers: None, addon: None }
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
        phases_done: vec![],
        error: None,
    }
}

#[async_trait::async_trait]
impl Handler for RequestHandler {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let m = &self.0;
        let verb = env.subject().rsplit('.').next().unwrap_or_default().to_string();
        let outcome = match verb.as_str() {
            "create" => self.create(env.payload()).await?,
            "delete" => self.delete(env.payload()).await?,
            "scale" => self.scale(env.payload()).await?,
            "addon" => self.addon(env.payload()).await?,
            other => reject(None, None, format!("unknown request {other:?}; expected create, delete, scale or addon")),
        };
        let reply = match outcome {
            Outcome::Accepted(r) => {
                m.rt.metrics.inc("requests_total", &[("request", &verb), ("outcome", "accepted")]);
                *r
            }
            Outcome::Rejected { cluster, request_id, message, errors } => {
                m.rt.metrics.inc("requests_total", &[("request", &verb), ("outcome", "rejected")]);
                tracing::info!(request = %verb, %message, "request rejected");
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
        let result = async {
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
            };
            rec.operation = Some(new_operation(&req.request_id, &rec, Plan::of(OpKind::Create)));
            self.start(rec, existing.map(|(_, rev)| rev), &req.request_id).await
        }
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
            Ok(Decision::Run(Plan { kind, target_workers: Some(target), addon: None }))
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
            Ok(Decision::Run(Plan { kind, target_workers: None, addon: Some(addon.clone()) }))
        })
        .await
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
        let result = async {
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
                return Ok(reject(Some(id.as_str()), Some(request_id), format!("cannot {kind} cluster {id}: {why}")));
            }
            rec.state = kind.busy_state();
            rec.operation = Some(new_operation(request_id, &rec, plan));
            touch(&mut rec);
            self.start(rec, Some(rev), request_id).await
        }
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
