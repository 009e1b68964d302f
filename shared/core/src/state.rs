//! ksctl's cluster state machine: which operation each state allows, and what it leads to.
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    Creating,
    Running,
    CreationFailed,
    Configuring,
    ConfiguringFailed,
    Deleting,
    DeletionFailed,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::CreationFailed => "creation_failed",
            Self::Configuring => "configuring",
            Self::ConfiguringFailed => "configuring_failed",
            Self::Deleting => "deleting",
            Self::DeletionFailed => "deletion_failed",
        }
    }
    /// A state in which an operation is under way and only reads are allowed.
    pub fn is_busy(self) -> bool {
        matches!(self, Self::Creating | Self::Configuring | Self::Deleting)
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Delete,
    ScaleUp,
    ScaleDown,
    /// Installs an addon's stack (`ksctl cluster addons enable`).
    AddonEnable,
    /// Removes an addon's stack (`ksctl cluster addons disable`).
    AddonDisable,
    /// Applies a user's application stack (`ksctl cluster apps apply`).
    AppsApply,
    /// Removes what a user's application stack applied (`ksctl cluster apps delete`).
    AppsDelete,
}

impl OpKind {
    pub const ALL: [OpKind; 8] = [
        Self::Create,
        Self::Delete,
        Self::ScaleUp,
        Self::ScaleDown,
        Self::AddonEnable,
        Self::AddonDisable,
        Self::AppsApply,
        Self::AppsDelete,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::ScaleUp => "scale_up",
            Self::ScaleDown => "scale_down",
            Self::AddonEnable => "addon_enable",
            Self::AddonDisable => "addon_disable",
            Self::AppsApply => "apps_apply",
            Self::AppsDelete => "apps_delete",
        }
    }
    /// The state the cluster moves to while this operation runs.
    pub fn busy_state(self) -> ClusterState {
        match self {
            Self::Create => ClusterState::Creating,
            Self::Delete => ClusterState::Deleting,
            Self::ScaleUp
            | Self::ScaleDown
            | Self::AddonEnable
            | Self::AddonDisable
            | Self::AppsApply
            | Self::AppsDelete => ClusterState::Configuring,
        }
    }
    /// The state a permanent failure of this operation leaves.
    pub fn failed_state(self) -> ClusterState {
        match self {
            Self::Create => ClusterState::CreationFailed,
            Self::Delete => ClusterState::DeletionFailed,
            Self::ScaleUp
            | Self::ScaleDown
            | Self::AddonEnable
            | Self::AddonDisable
            | Self::AppsApply
            | Self::AppsDelete => ClusterState::ConfiguringFailed,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides whether `op` may start on a cluster in `current` (`None`: no such cluster).
/// Returns the reason when it may not.
pub fn check_transition(current: Option<ClusterState>, op: OpKind) -> Result<ClusterState, String> {
    use ClusterState::*;
    match (current, op) {
        (None, OpKind::Create) | (Some(CreationFailed), OpKind::Create) => Ok(Creating),
        (None, _) => Err("no such cluster".into()),
        (Some(s), _) if s.is_busy() => {
            Err(format!("the cluster is {s}: an operation is under way and only reads are allowed until it ends"))
        }
        (Some(s), OpKind::Create) => Err(format!("a cluster with this name already exists (state {s})")),
        (Some(Running | CreationFailed | ConfiguringFailed | DeletionFailed), OpKind::Delete) => Ok(Deleting),
        (
            Some(Running | ConfiguringFailed),
            OpKind::ScaleUp
            | OpKind::ScaleDown
            | OpKind::AddonEnable
            | OpKind::AddonDisable
            | OpKind::AppsApply
            | OpKind::AppsDelete,
        ) => Ok(Configuring),
        (Some(s), op) => Err(format!("{op} is not allowed while the cluster is {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClusterState::*;

    #[test]
    fn create_only_when_absent_or_failed() {
        assert_eq!(check_transition(None, OpKind::Create), Ok(Creating));
        assert_eq!(check_transition(Some(CreationFailed), OpKind::Create), Ok(Creating));
        assert!(check_transition(Some(Running), OpKind::Create).unwrap_err().contains("already exists"));
    }

    #[test]
    fn busy_states_allow_nothing() {
        for s in [Creating, Deleting, Configuring] {
            for op in OpKind::ALL {
                assert!(check_transition(Some(s), op).is_err(), "{s} {op}");
            }
        }
    }

    #[test]
    fn scale_needs_running_or_configuring_failed() {
        assert!(check_transition(Some(Running), OpKind::ScaleUp).is_ok());
        assert!(check_transition(Some(ConfiguringFailed), OpKind::ScaleDown).is_ok());
        assert!(check_transition(Some(CreationFailed), OpKind::ScaleUp).is_err());
        assert!(check_transition(Some(DeletionFailed), OpKind::ScaleUp).is_err());
        assert!(check_transition(None, OpKind::ScaleUp).is_err());
        assert_eq!(check_transition(Some(Running), OpKind::AddonEnable), Ok(Configuring));
        assert!(check_transition(Some(CreationFailed), OpKind::AddonDisable).is_err());
    }

    #[test]
    fn delete_from_settled_states() {
        for s in [Running, CreationFailed, ConfiguringFailed, DeletionFailed] {
            assert_eq!(check_transition(Some(s), OpKind::Delete), Ok(Deleting));
        }
    }
}
