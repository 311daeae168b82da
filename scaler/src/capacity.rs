//! Learning a replica's capacity (requests per second it serves within its SLO) when the policy does not
//! state one.
//!
//! Two kinds of evidence, per closed telemetry window: the per-replica load of windows that met the SLO
//! (a replica *can* serve at least that much), and the per-replica load of windows where the service
//! itself broke its SLO under high load (it *cannot* serve that much). The estimate is the lowest
//! saturation seen, else the highest healthy load seen. The second is conservative by construction:
//! before a service has ever been pushed to its limit, Tidewatch scales as if the busiest healthy load
//! seen so far were the limit. Violations at low load (a bug, a bad pod, a slow dependency) say nothing
//! about capacity and are ignored.

use serde::{Deserialize, Serialize};

/// Windows of evidence needed before an estimate is given.
pub const MIN_WINDOWS: u32 = 30;
/// A violation counts as saturation only at this share of the busiest healthy load or more.
const SATURATION_SHARE: f64 = 0.8;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityLearner {
    healthy_max: Option<f64>,
    saturated_min: Option<f64>,
    windows: u32,
}

impl CapacityLearner {
    /// Starts from a previous estimate (as kept in the policy's status), counted as full evidence.
    pub fn resume(estimate: f64) -> CapacityLearner {
        CapacityLearner {
            healthy_max: Some(estimate).filter(|e| e.is_finite() && *e > 0.0),
            saturated_min: None,
            windows: MIN_WINDOWS,
        }
    }

    /// Takes in one closed window: the load per ready replica, whether the service met its SLO, and
    /// whether the service itself (not a dependency) is the likely cause when it did not.
    pub fn observe(&mut self, per_replica: f64, slo_met: bool, own_fault: bool) {
        if !per_replica.is_finite() || per_replica <= 0.0 {
            return;
        }
        self.windows = self.windows.saturating_add(1);
        if slo_met {
            self.healthy_max = Some(self.healthy_max.map_or(per_replica, |m| m.max(per_replica)));
        } else if own_fault
            && self
                .healthy_max
                .is_some_and(|m| per_replica >= SATURATION_SHARE * m)
        {
            self.saturated_min = Some(self.saturated_min.map_or(per_replica, |m| m.min(per_replica)));
        }
    }

    /// Requests per second per replica, once there is enough evidence.
    pub fn estimate(&self) -> Option<f64> {
        if self.windows < MIN_WINDOWS {
            return None;
        }
        self.saturated_min.or(self.healthy_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_conservatively_then_from_saturation() {
        let mut c = CapacityLearner::default();
        for i in 0..MIN_WINDOWS {
            c.observe(40.0 + f64::from(i % 10), true, false);
        }
        assert_eq!(c.estimate(), Some(49.0));
        // A violation at low load (a slow dependency, a bug) is no evidence.
        c.observe(10.0, false, true);
        c.observe(45.0, false, false);
        assert_eq!(c.estimate(), Some(49.0));
        // Breaking the SLO at high load, by its own fault: that is where capacity ends.
        c.observe(47.0, false, true);
        assert_eq!(c.estimate(), Some(47.0));
    }

    #[test]
    fn no_estimate_without_evidence() {
        let mut c = CapacityLearner::default();
        c.observe(f64::NAN, true, false);
        c.observe(0.0, true, false);
        assert_eq!(c.estimate(), None);
        assert_eq!(CapacityLearner::resume(12.0).estimate(), Some(12.0));
    }
}
