//! Every retry and poll policy ksctl uses, named for the wait it is for, as `backon` builders:
//! a loop says which wait it is and the numbers live here. Operations that fail and are tried
//! again use `backon::Retryable::retry`; polls that wait for a state (with their own deadline)
//! take their pauses from the policy's iterator (`BackoffBuilder::build`).
use backon::{ConstantBuilder, ExponentialBuilder};
use std::time::Duration;

/// Tries of one cloud API call that failed transiently or was throttled, in all.
pub const CLOUD_CALL_ATTEMPTS: usize = 6;

/// SSH to a host that may still be booting: 0.5 s doubling to 8 s, `attempts` tries in all.
pub fn ssh_connect(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(attempts.saturating_sub(1) as usize)
}

/// A cloud API call that failed transiently or was throttled (unless the cloud says how long to
/// wait): 0.2 s doubling (to 3.2 s over the 5 pauses of [`CLOUD_CALL_ATTEMPTS`] tries), each
/// with up to as much again at random so that replicas throttled together spread out.
pub fn cloud_call() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_millis(12_800))
        .with_jitter()
        .with_max_times(CLOUD_CALL_ATTEMPTS - 1)
}

/// A cloud resource changing state (an instance starting, an EKS cluster coming up): 0.5 s
/// doubling to `max`, for as long as the caller's deadline allows.
pub fn cloud_wait(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(Duration::from_millis(500)).with_max_delay(max).without_max_times()
}

/// A delete the cloud refuses while something still uses the resource: 0.5 s doubling to 15 s,
/// 20 tries in all.
pub fn still_in_use() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(15))
        .with_max_times(19)
}

/// Polling for a condition at a steady pace (a Kubernetes object becoming ready, instances
/// terminating), for as long as the caller's deadline allows.
pub fn poll(every: Duration) -> ConstantBuilder {
    ConstantBuilder::new().with_delay(every).without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn policies_grow_cap_and_stop() {
        let ssh: Vec<Duration> = ssh_connect(4).build().collect();
        assert_eq!(ssh, [500, 1000, 2000].map(Duration::from_millis), "4 tries: 3 pauses");
        assert_eq!(ssh_connect(1).build().count(), 0);
        let cloud: Vec<Duration> = cloud_call().build().collect();
        assert_eq!(cloud.len(), CLOUD_CALL_ATTEMPTS - 1);
        assert!(cloud.iter().all(|d| *d >= Duration::from_millis(200) && *d <= Duration::from_millis(25_600)));
        assert_eq!(still_in_use().build().count(), 19);
        let wait: Vec<Duration> = cloud_wait(Duration::from_secs(10)).build().take(8).collect();
        assert_eq!(wait.last(), Some(&Duration::from_secs(10)));
        assert_eq!(poll(Duration::from_secs(1)).build().take(100).count(), 100);
    }
}
