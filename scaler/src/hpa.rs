//! The Kubernetes HPA v2 replica calculation, reproduced: the reactive floor under every predictive
//! answer Tidewatch gives.
//!
//! For a per-pod metric with a target value (or a utilisation target), the HPA computes
//! `ratio = current / target` over the ready pods and proposes `ceil(ratio × ready)`, unless the ratio is
//! within the tolerance (10 % by default) of 1, in which case it keeps the current count. Pods that are not
//! ready, and pods whose metric is missing, are handled conservatively so as not to over-react: when
//! scaling up, missing pods count as using 0 and not-ready pods are left out (they may still be warming);
//! when scaling down, missing pods count as using the full target. If those assumptions flip the
//! direction, or bring the ratio within tolerance, the HPA does nothing. This mirrors
//! `pkg/controller/podautoscaler/replica_calculator.go` (`GetMetricReplicas` / `calcPlainMetricReplicas`).

/// One pod as the HPA sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodMetric {
    /// The pod's metric value, if the metrics pipeline has one.
    pub value: Option<f64>,
    /// Ready and not being deleted. Not-ready pods (still starting) are set aside when scaling up.
    pub ready: bool,
}

/// The HPA's answer, with its reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    pub replicas: u32,
    pub reason: String,
}

/// Default HPA tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// The replicas the HPA would want for `pods` (the current pods of the target) against a per-pod
/// `target` value, before min/max and behaviour limits.
pub fn desired_replicas(pods: &[PodMetric], target: f64, tolerance: f64) -> Recommendation {
    let current = pods.len() as u32;
    let keep = |why: String| Recommendation {
        replicas: current,
        reason: why,
    };
    if target <= 0.0 || !target.is_finite() {
        return keep("no valid target: keeping the current replicas".into());
    }
    let with_metrics: Vec<(f64, bool)> = pods
        .iter()
        .filter_map(|p| p.value.map(|v| (v, p.ready)))
        .collect();
    let missing = pods.iter().filter(|p| p.value.is_none()).count();
    // Not-ready pods with a metric are set aside (they may be starting and read high); counted later.
    let ready_values: Vec<f64> = with_metrics.iter().filter(|(_, r)| *r).map(|(v, _)| *v).collect();
    let unready = with_metrics.len() - ready_values.len();
    if ready_values.is_empty() {
        return keep("no ready pod reports the metric: keeping the current replicas".into());
    }
    let usage: f64 = ready_values.iter().sum();
    let ratio = usage / (target * ready_values.len() as f64);
    let scale_up = ratio > 1.0;
    if missing == 0 && unready == 0 {
        if (ratio - 1.0).abs() <= tolerance {
            return keep(format!("usage ratio {ratio:.2} within tolerance {tolerance}"));
        }
        let want = (ratio * ready_values.len() as f64).ceil() as u32;
        return Recommendation {
            replicas: want,
            reason: format!("usage ratio {ratio:.2} over {} ready pods", ready_values.len()),
        };
    }
    // Fill the gaps on the side that damps the move: missing pods use 0 when scaling up and the full target
    // when scaling down; not-ready pods use 0 when scaling up and are ignored when scaling down.
    let mut filled = usage;
    let mut count = ready_values.len() as f64;
    if scale_up {
        count += (missing + unready) as f64;
    } else {
        filled += target * missing as f64;
        count += missing as f64;
    }
    let new_ratio = filled / (target * count);
    if (new_ratio - 1.0).abs() <= tolerance || (new_ratio > 1.0) != scale_up {
        return keep(format!(
            "usage ratio {ratio:.2} becomes {new_ratio:.2} counting {missing} pods without metrics and {unready} not ready: no change"
        ));
    }
    let want = (new_ratio * count).ceil() as u32;
    // The filled-in pods can make the count move against the ratio; then the HPA keeps what it has.
    if (new_ratio < 1.0 && want > current) || (new_ratio > 1.0 && want < current) {
        return keep(format!(
            "usage ratio {new_ratio:.2} would move replicas the other way: no change"
        ));
    }
    Recommendation {
        replicas: want,
        reason: format!(
            "usage ratio {new_ratio:.2} counting {missing} pods without metrics and {unready} not ready"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(vals: &[f64]) -> Vec<PodMetric> {
        vals.iter()
            .map(|&v| PodMetric {
                value: Some(v),
                ready: true,
            })
            .collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            pods: Vec<PodMetric>,
            target: f64,
            want: u32,
        }
        let mut missing_one = ready(&[90.0, 90.0]);
        missing_one.push(PodMetric {
            value: None,
            ready: true,
        });
        let mut unready_hot = ready(&[60.0, 60.0]);
        unready_hot.push(PodMetric {
            value: Some(200.0),
            ready: false,
        });
        let mut low_missing = ready(&[10.0, 10.0]);
        low_missing.push(PodMetric {
            value: None,
            ready: true,
        });
        let cases = [
            Case {
                name: "double the load, double the pods",
                pods: ready(&[100.0, 100.0]),
                target: 50.0,
                want: 4,
            },
            Case {
                name: "within 10% tolerance: no change",
                pods: ready(&[54.0, 54.0]),
                target: 50.0,
                want: 2,
            },
            Case {
                name: "just past tolerance: up",
                pods: ready(&[56.0, 56.0]),
                target: 50.0,
                want: 3,
            },
            Case {
                name: "half the load, half the pods",
                pods: ready(&[25.0, 25.0, 25.0, 25.0]),
                target: 50.0,
                want: 2,
            },
            Case {
                name: "rounding is up",
                pods: ready(&[30.0, 30.0, 30.0]),
                target: 50.0,
                want: 2,
            },
            // Scaling up with a pod missing its metric: it counts as 0 → (90+90+0)/(3*50)=1.2 → 4.
            Case {
                name: "missing metric damps scale-up",
                pods: missing_one,
                target: 50.0,
                want: 4,
            },
            // A not-ready pod reading high is not trusted: (60+60+0)/(3*50)=0.8 flips the direction → keep 3.
            Case {
                name: "not-ready pod cannot trigger scale-up",
                pods: unready_hot,
                target: 50.0,
                want: 3,
            },
            // Scaling down with a pod missing: it counts as the full target → (10+10+50)/(3*50)=0.47 → 2.
            Case {
                name: "missing metric damps scale-down",
                pods: low_missing,
                target: 50.0,
                want: 2,
            },
            Case {
                name: "no target: keep",
                pods: ready(&[10.0]),
                target: 0.0,
                want: 1,
            },
        ];
        for c in cases {
            let r = desired_replicas(&c.pods, c.target, TOLERANCE);
            assert_eq!(r.replicas, c.want, "{}: {}", c.name, r.reason);
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn no_ready_pods_keeps_the_count() {
        let pods = [
            PodMetric {
                value: None,
                ready: true,
            },
            PodMetric {
                value: Some(500.0),
                ready: false,
            },
        ];
        assert_eq!(desired_replicas(&pods, 50.0, TOLERANCE).replicas, 2);
    }
}
