//! The HPA v2 `behavior` rules, reproduced: stabilisation windows over past recommendations, then rate
//! limits from the scaling policies over past scale events, then min/max. The state the HPA keeps in
//! memory (recommendations and scale events per autoscaler) is an explicit, serialisable value here, so
//! `decide()` stays pure and every decision can be replayed from its logged inputs.
//!
//! Mirrors `normalizeDesiredReplicasWithBehaviors` in kubernetes `pkg/controller/podautoscaler/horizontal.go`:
//! `stabilizeRecommendationWithBehaviors`, `convertDesiredReplicasWithBehaviorRate`,
//! `calculateScaleUpLimitWithScalingRules` and `calculateScaleDownLimitWithBehaviors`.

use serde::{Deserialize, Serialize};

use crate::crd::{Behavior, PolicyType, ScalingRules, SelectPolicy};

/// What the HPA remembers between two reconciles of one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleHistory {
    /// Unstabilised recommendations: `(ts_ms, replicas)`.
    pub recommendations: Vec<(i64, u32)>,
    /// Replicas added by scale-ups: `(ts_ms, added)`.
    pub scale_ups: Vec<(i64, u32)>,
    /// Replicas removed by scale-downs: `(ts_ms, removed)`.
    pub scale_downs: Vec<(i64, u32)>,
}

/// The rule that shaped a decision: the HPA's `ScalingLimited` condition reasons, plus Tidewatch's
/// cooldown. Serialised (and shown) as the reason's name, as the HPA writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// No rule changed the desired count.
    #[default]
    DesiredWithinRange,
    ScaleUpStabilized,
    ScaleDownStabilized,
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
    /// Held by the policy's cooldown since the last scaling action.
    Cooldown,
}

impl Limit {
    /// The reason's name, as in the HPA's conditions and Kubernetes Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::DesiredWithinRange => "DesiredWithinRange",
            Limit::ScaleUpStabilized => "ScaleUpStabilized",
            Limit::ScaleDownStabilized => "ScaleDownStabilized",
            Limit::ScaleUpLimit => "ScaleUpLimit",
            Limit::ScaleDownLimit => "ScaleDownLimit",
            Limit::TooManyReplicas => "TooManyReplicas",
            Limit::TooFewReplicas => "TooFewReplicas",
            Limit::Cooldown => "Cooldown",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of normalisation, with the HPA's condition reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    pub replicas: u32,
    pub reason: Limit,
}

impl ScaleHistory {
    /// Records an actual change of the target's replicas.
    pub fn record_scale(&mut self, now_ms: i64, from: u32, to: u32) {
        if to > from {
            self.scale_ups.push((now_ms, to - from));
        } else if to < from {
            self.scale_downs.push((now_ms, from - to));
        }
    }

    /// Forgets what no window or policy period of `behavior` can look at any more, so the history stays
    /// bounded (the HPA recycles outdated slots for the same reason).
    pub fn prune(&mut self, now_ms: i64, behavior: &Behavior) {
        let secs = |r: &ScalingRules| i64::from(r.stabilization_window_seconds.max(0));
        let longest = |r: &ScalingRules| {
            r.policies
                .iter()
                .map(|p| i64::from(p.period_seconds.max(0)))
                .max()
                .unwrap_or(0)
        };
        let keep_recs = secs(&behavior.scale_up).max(secs(&behavior.scale_down)) * 1000;
        let keep_events = longest(&behavior.scale_up).max(longest(&behavior.scale_down)) * 1000;
        self.recommendations.retain(|(t, _)| now_ms - t <= keep_recs);
        self.scale_ups.retain(|(t, _)| now_ms - t <= keep_events);
        self.scale_downs.retain(|(t, _)| now_ms - t <= keep_events);
    }
}

fn within(events: &[(i64, u32)], now_ms: i64, period_seconds: i32) -> i64 {
    let cutoff = now_ms - i64::from(period_seconds) * 1000;
    events
        .iter()
        .filter(|(t, _)| *t > cutoff)
        .map(|(_, n)| i64::from(*n))
        .sum()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// The furthest count one direction's policies allow now: the highest for scale-up, the lowest for
/// scale-down. Each policy measures its change from the count at the start of its period.
fn policy_limit(dir: Direction, current: u32, h: &ScaleHistory, now_ms: i64, rules: &ScalingRules) -> i64 {
    let current = i64::from(current);
    // `Max` picks the policy allowing the largest change: the highest count up, the lowest down.
    let pick_high = match (rules.select_policy, dir) {
        (SelectPolicy::Disabled, _) => return current,
        (SelectPolicy::Max, Direction::Up) | (SelectPolicy::Min, Direction::Down) => true,
        (SelectPolicy::Max, Direction::Down) | (SelectPolicy::Min, Direction::Up) => false,
    };
    let mut result: Option<i64> = None;
    for p in &rules.policies {
        let start = current - within(&h.scale_ups, now_ms, p.period_seconds)
            + within(&h.scale_downs, now_ms, p.period_seconds);
        let share = f64::from(p.value) / 100.0;
        let proposed = match (dir, p.type_) {
            (Direction::Up, PolicyType::Pods) => start + i64::from(p.value),
            // Rounded up: otherwise a small count could never grow.
            (Direction::Up, PolicyType::Percent) => (start as f64 * (1.0 + share)).ceil() as i64,
            (Direction::Down, PolicyType::Pods) => start - i64::from(p.value),
            // Truncated, as the HPA does.
            (Direction::Down, PolicyType::Percent) => (start as f64 * (1.0 - share)) as i64,
        };
        result = Some(result.map_or(proposed, |r| {
            if pick_high {
                r.max(proposed)
            } else {
                r.min(proposed)
            }
        }));
    }
    // No policy: no limit.
    result.unwrap_or(match dir {
        Direction::Up => i64::MAX,
        Direction::Down => i64::MIN,
    })
}

/// Applies stabilisation, rate limits and min/max to `desired`, recording `desired` as the newest
/// recommendation in `h`.
pub fn normalize(
    desired: u32,
    current: u32,
    min: u32,
    max: u32,
    behavior: &Behavior,
    h: &mut ScaleHistory,
    now_ms: i64,
) -> Normalized {
    // Stabilisation: the lowest recent recommendation bounds a scale-up, the highest a scale-down.
    let up_cutoff = now_ms - i64::from(behavior.scale_up.stabilization_window_seconds) * 1000;
    let down_cutoff = now_ms - i64::from(behavior.scale_down.stabilization_window_seconds) * 1000;
    let (mut up, mut down) = (desired, desired);
    for &(t, r) in &h.recommendations {
        if t > up_cutoff {
            up = up.min(r);
        }
        if t > down_cutoff {
            down = down.max(r);
        }
    }
    let mut stabilized = current;
    if stabilized < up {
        stabilized = up;
    }
    if stabilized > down {
        stabilized = down;
    }
    h.recommendations.push((now_ms, desired));
    let stab_reason = if stabilized != desired {
        if desired >= current {
            Limit::ScaleUpStabilized
        } else {
            Limit::ScaleDownStabilized
        }
    } else {
        Limit::DesiredWithinRange
    };

    // Rate limits and bounds.
    let (cur, want) = (i64::from(current), i64::from(stabilized));
    if want > cur {
        let limit = policy_limit(Direction::Up, current, h, now_ms, &behavior.scale_up).max(cur);
        let (allowed, reason) = if i64::from(max) > limit {
            (limit, Limit::ScaleUpLimit)
        } else {
            (i64::from(max), Limit::TooManyReplicas)
        };
        if want > allowed {
            return Normalized {
                replicas: allowed.clamp(0, i64::from(u32::MAX)) as u32,
                reason,
            };
        }
    } else if want < cur {
        let limit = policy_limit(Direction::Down, current, h, now_ms, &behavior.scale_down).min(cur);
        let (allowed, reason) = if i64::from(min) < limit {
            (limit, Limit::ScaleDownLimit)
        } else {
            (i64::from(min), Limit::TooFewReplicas)
        };
        if want < allowed {
            return Normalized {
                replicas: allowed.clamp(0, i64::from(u32::MAX)) as u32,
                reason,
            };
        }
    }
    Normalized {
        replicas: stabilized,
        reason: stab_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScalingPolicy;

    fn behavior() -> Behavior {
        Behavior::default()
    }

    #[test]
    fn scale_down_waits_out_the_stabilisation_window() {
        let b = behavior();
        let mut h = ScaleHistory::default();
        // A recommendation of 8 two minutes ago keeps a later 3 from taking effect for 5 minutes.
        assert_eq!(normalize(8, 8, 1, 20, &b, &mut h, 0).replicas, 8);
        let n = normalize(3, 8, 1, 20, &b, &mut h, 120_000);
        assert_eq!((n.replicas, n.reason), (8, Limit::ScaleDownStabilized));
        let n = normalize(3, 8, 1, 20, &b, &mut h, 301_000);
        assert_eq!((n.replicas, n.reason), (3, Limit::DesiredWithinRange));
    }

    #[test]
    fn scale_up_is_limited_by_the_larger_default_policy() {
        let b = behavior();
        let mut h = ScaleHistory::default();
        // From 2: +100 % gives 4, +4 pods gives 6; Max picks 6.
        let n = normalize(30, 2, 1, 50, &b, &mut h, 0);
        assert_eq!((n.replicas, n.reason), (6, Limit::ScaleUpLimit));
        h.record_scale(0, 2, 6);
        // Within the same 15 s period the budget is spent: start of period was 2, limit still 6.
        let n = normalize(30, 6, 1, 50, &b, &mut h, 10_000);
        assert_eq!(n.replicas, 6);
        // After the period, from 6: 12 or 10 → 12.
        let n = normalize(30, 6, 1, 50, &b, &mut h, 16_000);
        assert_eq!(n.replicas, 12);
    }

    #[test]
    fn bounds_and_disabled_directions() {
        let mut b = behavior();
        let mut h = ScaleHistory::default();
        let n = normalize(30, 10, 1, 12, &b, &mut h, 0);
        assert_eq!((n.replicas, n.reason), (12, Limit::TooManyReplicas));
        b.scale_down.stabilization_window_seconds = 0;
        let n = normalize(0, 5, 2, 12, &b, &mut ScaleHistory::default(), 0);
        assert_eq!((n.replicas, n.reason), (2, Limit::TooFewReplicas));
        b.scale_down.select_policy = SelectPolicy::Disabled;
        let n = normalize(2, 5, 1, 12, &b, &mut ScaleHistory::default(), 0);
        assert_eq!((n.replicas, n.reason), (5, Limit::ScaleDownLimit));
    }

    #[test]
    fn min_policy_picks_the_smaller_change() {
        let mut b = behavior();
        b.scale_up.select_policy = SelectPolicy::Min;
        let n = normalize(30, 10, 1, 50, &b, &mut ScaleHistory::default(), 0);
        // +100 % → 20, +4 → 14; Min picks 14.
        assert_eq!(n.replicas, 14);
        b.scale_down = ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    type_: PolicyType::Pods,
                    value: 1,
                    period_seconds: 60,
                },
                ScalingPolicy {
                    type_: PolicyType::Percent,
                    value: 10,
                    period_seconds: 60,
                },
            ],
        };
        // From 10: -1 → 9, -10 % → 9 (truncated): 9.
        let n = normalize(1, 10, 1, 50, &b, &mut ScaleHistory::default(), 0);
        assert_eq!(n.replicas, 9);
    }

    #[test]
    fn prune_keeps_only_what_windows_can_see() {
        let b = behavior();
        let mut h = ScaleHistory::default();
        for i in 0..100 {
            normalize(3, 3, 1, 5, &b, &mut h, i * 10_000);
        }
        h.record_scale(0, 3, 4);
        h.prune(1_000_000, &b);
        assert!(h.recommendations.iter().all(|(t, _)| 1_000_000 - t <= 300_000));
        assert!(h.scale_ups.is_empty());
    }
}
