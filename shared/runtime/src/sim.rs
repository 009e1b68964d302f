//! The simulated world behind the `sim` provider: a cloud, its hosts and a Kubernetes API,
//! kept in the state store (so any replica can resume), with per-step latency and injected
//! faults. A simulator for demos, scale tests and fault injection, not a real cloud.
//!
//! Like a real cloud, a created resource gets a fresh random id: creating twice makes two
//! resources. Controllers must therefore look a resource up by its tag (name) before creating it
//! and checkpoint its id, exactly as with a real provider; tests count resources per name.
use crate::controller::PhaseError;
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::Role;
use ksctl_store::{DynStore, modify, put_new};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimResource {
    pub id: String,
    pub cluster: ClusterId,
    /// `network`, `firewall`, `ssh_key`, `vm`, `managed_cluster`, `node_pool`, `k8s_object`.
    pub kind: String,
    /// The tag a controller finds it by.
    pub name: String,
    pub role: Option<Role>,
    pub index: u32,
    pub public_ip: String,
    pub private_ip: String,
    /// For `node_pool`: its size. For others: unused.
    pub size: u32,
    /// Every run of a host step on a simulated VM, in order. Host steps are idempotent on the
    /// host (as the real scripts are guarded); this history shows a step that ran again.
    pub applied: Vec<String>,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Retryable,
    Permanent,
    /// Abort the process at once (like kill -9) when the step is reached.
    Crash,
    /// Abort the process right after the step's effect, before the controller records it: the
    /// restarted controller runs the step a second time and must find what the first made.
    CrashAfter,
}

#[derive(Debug, Clone)]
struct Fault {
    step_prefix: String,
    kind: FaultKind,
    /// How many times the fault fires before the step succeeds (`u32::MAX`: always).
    times: u32,
}

/// Latency and faults, from `KSCTL_SIM_LATENCY_MS` and `KSCTL_SIM_FAULTS`.
#[derive(Debug, Default)]
pub struct SimConfig {
    latency: Duration,
    faults: Vec<Fault>,
}

impl SimConfig {
    /// `latency_ms`: simulated duration of every step. `faults`: comma-separated
    /// `<step prefix>=<retryable|permanent|crash|crash_after>[*N]`, e.g.
    /// `cloud.vm=retryable*2,k8s.agent=permanent`
    /// (`*N`: fire N times then succeed; default: always; counted per process).
    pub fn parse(latency_ms: u64, faults: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in faults.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (step, rest) =
                item.split_once('=').ok_or_else(|| format!("fault {item:?}: expected <step>=<kind>[*N]"))?;
            let (kind, times) = match rest.split_once('*') {
                Some((k, n)) => (k, n.parse::<u32>().map_err(|_| format!("fault {item:?}: bad count {n:?}"))?),
                None => (rest, u32::MAX),
            };
            let kind = match kind {
                "retryable" => FaultKind::Retryable,
                "permanent" => FaultKind::Permanent,
                "crash" | "crash_after" if !cfg!(feature = "crash-injection") => {
                    return Err(format!(
                        "fault {item:?}: this build cannot crash on purpose (built without the \
                         crash-injection feature, as release images are)"
                    ));
                }
                "crash" => FaultKind::Crash,
                "crash_after" => FaultKind::CrashAfter,
                k => {
                    return Err(format!(
                        "fault {item:?}: unknown kind {k:?} (retryable, permanent, crash, crash_after)"
                    ));
                }
            };
            out.push(Fault { step_prefix: step.to_string(), kind, times });
        }
        Ok(Self { latency: Duration::from_millis(latency_ms), faults: out })
    }

    pub fn from_env() -> Result<Self, String> {
        let latency = std::env::var("KSCTL_SIM_LATENCY_MS")
            .ok()
            .map(|v| v.parse::<u64>().map_err(|_| format!("KSCTL_SIM_LATENCY_MS={v:?} is not a number")))
            .transpose()?;
        Self::parse(latency.unwrap_or(0), &std::env::var("KSCTL_SIM_FAULTS").unwrap_or_default())
    }
}

pub struct Sim {
    store: DynStore,
    cfg: SimConfig,
    fired: Mutex<HashMap<usize, u32>>,
}

impl Sim {
    pub fn new(store: DynStore, cfg: SimConfig) -> Self {
        Self { store, cfg, fired: Mutex::new(HashMap::new()) }
    }

    /// Every simulated step goes through here: latency and the faults planned before it, then
    /// `effect` (the call to the simulated cloud, host or API), then a `crash_after` fault.
    pub async fn run<T>(
        &self,
        step: &str,
        effect: impl std::future::Future<Output = Result<T, PhaseError>>,
    ) -> Result<T, PhaseError> {
        if !self.cfg.latency.is_zero() {
            tokio::time::sleep(self.cfg.latency).await;
        }
        match self.fire(step, |k| k != FaultKind::CrashAfter) {
            Some(FaultKind::Retryable) => {
                return Err(PhaseError::retryable(format!("simulated transient failure at {step}")));
            }
            Some(FaultKind::Permanent) => {
                return Err(PhaseError::permanent(format!("simulated permanent failure at {step}")));
            }
            Some(FaultKind::Crash) => crash(step, "at"),
            _ => {}
        }
        let out = effect.await?;
        if self.fire(step, |k| k == FaultKind::CrashAfter).is_some() {
            crash(step, "after");
        }
        Ok(out)
    }

    fn fire(&self, step: &str, which: impl Fn(FaultKind) -> bool) -> Option<FaultKind> {
        fire(&self.cfg.faults, &mut self.fired.lock().expect("fault lock"), step, which)
    }

    /// Every simulated resource of a cluster (the sweep-by-tag view).
    pub async fn list(&self, cluster: &ClusterId) -> Result<Vec<SimResource>, PhaseError> {
        let parent = keys::sim_prefix(cluster);
        let rows = self.store.children(parent.trim_end_matches('.')).await?;
        rows.into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v.value).map_err(|e| PhaseError::permanent(format!("sim resource {k}: {e}")))
            })
            .collect()
    }

    /// Looks a resource up by its tag.
    pub async fn find(&self, cluster: &ClusterId, name: &str) -> Result<Option<SimResource>, PhaseError> {
        Ok(self.list(cluster).await?.into_iter().find(|r| r.name == name))
    }

    /// Creates a resource with a fresh id (as a cloud API does): calling it twice makes two.
    pub async fn create(
        &self,
        cluster: &ClusterId,
        kind: &str,
        name: &str,
        role: Option<Role>,
        index: u32,
        size: u32,
    ) -> Result<SimResource, PhaseError> {
        let id = format!("{}-{}", kind.replace('_', ""), &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let n = fastrand::u32(1..250);
        let r = SimResource {
            id: id.clone(),
            cluster: cluster.clone(),
            kind: kind.into(),
            name: name.into(),
            role,
            index,
            public_ip: if kind == "vm" { format!("203.0.113.{n}") } else { String::new() },
            private_ip: if kind == "vm" { format!("10.0.{}.{}", n % 3, fastrand::u32(2..250)) } else { String::new() },
            size,
            applied: vec![],
            created_at_ms: ksctl_core::now_ms(),
        };
        put_new(self.store.as_ref(), &format!("{}{id}", keys::sim_prefix(cluster)), &r).await?;
        Ok(r)
    }

    /// Looks up by tag, creates only if absent.
    pub async fn ensure(
        &self,
        cluster: &ClusterId,
        kind: &str,
        name: &str,
        role: Option<Role>,
        index: u32,
        size: u32,
    ) -> Result<SimResource, PhaseError> {
        match self.find(cluster, name).await? {
            Some(r) => Ok(r),
            None => self.create(cluster, kind, name, role, index, size).await,
        }
    }

    /// Deletes by id; "not found" is done.
    pub async fn delete(&self, cluster: &ClusterId, id: &str) -> Result<(), PhaseError> {
        Ok(self.store.delete(&format!("{}{id}", keys::sim_prefix(cluster))).await?)
    }

    /// Changes a resource in place (node pool size, host steps).
    pub async fn update(
        &self,
        cluster: &ClusterId,
        id: &str,
        f: impl Fn(&mut SimResource) + Send,
    ) -> Result<SimResource, PhaseError> {
        let key = format!("{}{id}", keys::sim_prefix(cluster));
        let out = modify(self.store.as_ref(), &key, |cur: Option<SimResource>| {
            let mut r = cur.ok_or_else(|| format!("simulated resource {id} does not exist"))?;
            f(&mut r);
            Ok::<_, String>(Some(r))
        })
        .await?;
        out.map(|r| r.expect("written")).map_err(PhaseError::permanent)
    }

    /// Runs a host step on a simulated VM (recorded in its history).
    pub async fn apply_on_host(&self, cluster: &ClusterId, host_id: &str, step: &str) -> Result<(), PhaseError> {
        let step = step.to_string();
        self.update(cluster, host_id, move |r| r.applied.push(step.clone())).await.map(|_| ())
    }
}

/// The first planned fault for `step` of a kind `which` accepts that has firings left; counts it.
fn fire(
    faults: &[Fault],
    fired: &mut HashMap<usize, u32>,
    step: &str,
    which: impl Fn(FaultKind) -> bool,
) -> Option<FaultKind> {
    for (i, f) in faults.iter().enumerate() {
        if !step.starts_with(&f.step_prefix) || !which(f.kind) {
            continue;
        }
        let n = fired.entry(i).or_default();
        if *n < f.times {
            *n += 1;
            return Some(f.kind);
        }
    }
    None
}

/// Ends the process at once, as kill -9 would. Only test builds carry it: crash faults are
/// refused when parsed by builds without the `crash-injection` feature.
fn crash(step: &str, when: &str) -> ! {
    #[cfg(feature = "crash-injection")]
    {
        eprintln!("simulated crash {when} {step}");
        std::process::abort();
    }
    #[cfg(not(feature = "crash-injection"))]
    unreachable!("crash fault at {step} ({when}) in a build without crash-injection")
}

/// A PEM-shaped block of random bytes: what the simulator hands out as keys and certificates,
/// so that tests can check no such block ever reaches the store unsealed.
pub fn fake_pem(label: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..96).map(|_| fastrand::u8(..)).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

/// A random bearer token in the shape kubeadm/k3s use (`abcdef.0123456789abcdef`).
pub fn fake_token() -> String {
    let hex = |n: usize| (0..n).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect::<String>();
    format!("{}.{}", hex(6), hex(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse() {
        let c = SimConfig::parse(5, "cloud.vm=retryable*2, k8s=permanent, bootstrap=permanent").unwrap();
        assert_eq!(c.faults.len(), 3);
        // Crashes only where the build can crash on purpose.
        let crash = SimConfig::parse(0, "bootstrap=crash_after");
        assert_eq!(crash.is_ok(), cfg!(feature = "crash-injection"));
        match crash {
            Ok(c) => assert_eq!(c.faults[0].kind, FaultKind::CrashAfter),
            Err(e) => assert!(e.contains("crash-injection"), "{e}"),
        }
        assert_eq!(c.faults[0].times, 2);
        assert_eq!(c.faults[1].times, u32::MAX);
        assert!(SimConfig::parse(0, "cloud.vm").is_err());
        assert!(SimConfig::parse(0, "cloud.vm=crash_later").is_err());
        assert!(SimConfig::parse(0, "cloud.vm=maybe").is_err());
    }

    #[test]
    fn faults_fire_by_prefix_kind_and_count() {
        let c = SimConfig::parse(0, "cloud.vm=retryable*2,cloud=crash_after*1").unwrap();
        let mut fired = HashMap::new();
        let before = |k| k != FaultKind::CrashAfter;
        let after = |k| k == FaultKind::CrashAfter;
        assert_eq!(fire(&c.faults, &mut fired, "cloud.network", before), None);
        assert_eq!(fire(&c.faults, &mut fired, "cloud.vm", before), Some(FaultKind::Retryable));
        assert_eq!(fire(&c.faults, &mut fired, "cloud.vm", before), Some(FaultKind::Retryable));
        assert_eq!(fire(&c.faults, &mut fired, "cloud.vm", before), None, "fired twice, then the step succeeds");
        assert_eq!(fire(&c.faults, &mut fired, "cloud.vm", after), Some(FaultKind::CrashAfter));
        assert_eq!(fire(&c.faults, &mut fired, "cloud.network", after), None, "counted per fault");
        assert_eq!(fire(&c.faults, &mut fired, "k8s.namespace", after), None);
    }
}
