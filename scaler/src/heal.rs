//! Self-healing decisions, pure like `decide()`. A restart is aimed only at a pod the models single out
//! as the cause: this policy's own service must be one of the likely causes (the analyzer lists only
//! services with nothing anomalous downstream, so never a caller of a sick dependency; another
//! incident elsewhere may rank first), its cause must name one pod among healthy siblings, and that
//! pod must belong to the target now. Then the budget (restarts per window), an exponential backoff
//! and a last-sibling guard decide whether it happens now or is held back, and a held-back action is
//! reported like a taken one.

use serde::{Deserialize, Serialize};

use crate::crd::Healing;

/// A likely cause as the analyzer ranks it (most explanatory first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CauseInput {
    pub service: String,
    pub pod: Option<String>,
    pub explanation: String,
}

/// What the healer knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealInputs {
    pub now_ms: i64,
    /// The policy's service.
    pub service: String,
    /// Causes at the latest window close, best first.
    pub causes: Vec<CauseInput>,
    /// Names of the target's pods now, and how many of them are ready.
    pub pods: Vec<String>,
    pub ready_pods: u32,
    /// Restarts already made for this policy: `(ts_ms, pod)`.
    pub restarts: Vec<(i64, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HealDecision {
    /// Nothing to heal; `reason` says why when there was something to consider.
    None {
        reason: String,
    },
    Restart {
        pod: String,
        reason: String,
    },
    /// A restart was warranted but is not taken now.
    HeldBack {
        pod: String,
        reason: String,
    },
}

/// `service`'s own entry among the likely `causes`, if it is one. Every cause is a root cause (its
/// callers are its symptoms, not causes): one that ranks below another, explaining fewer symptoms, is
/// still at fault itself.
pub fn own_cause<'a>(causes: &'a [CauseInput], service: &str) -> Option<&'a CauseInput> {
    causes.iter().find(|c| c.service == service)
}

/// Decides whether to restart a pod of `inp.service` now.
pub fn heal(cfg: &Healing, inp: &HealInputs) -> HealDecision {
    let none = |r: String| HealDecision::None { reason: r };
    let Some(ours) = own_cause(&inp.causes, &inp.service) else {
        return none(String::new());
    };
    let Some(pod) = ours.pod.clone() else {
        let rank = if inp.causes.first().is_some_and(|c| c.service == inp.service) {
            "the likely cause"
        } else {
            "a likely cause"
        };
        return none(format!(
            "{} is {rank} but no single pod stands out among its siblings: no restart ({})",
            inp.service, ours.explanation
        ));
    };
    if !inp.pods.contains(&pod) {
        return none(format!("pod {pod} singled out but no longer part of the target"));
    }
    let held = |why: String| HealDecision::HeldBack {
        pod: pod.clone(),
        reason: format!("{}; {why}", ours.explanation),
    };
    if !cfg.enabled {
        return held("healing is disabled for this policy".into());
    }
    if inp.restarts.iter().any(|(_, p)| *p == pod) {
        return held(format!("{pod} was already restarted once: not again"));
    }
    let window_ms = i64::from(cfg.window_seconds.max(1)) * 1000;
    let recent: Vec<i64> = inp
        .restarts
        .iter()
        .filter(|(t, _)| inp.now_ms - t < window_ms)
        .map(|(t, _)| *t)
        .collect();
    if recent.len() as i64 >= i64::from(cfg.max_restarts.max(0)) {
        return held(format!(
            "restart budget spent: {} of {} in {} s",
            recent.len(),
            cfg.max_restarts,
            cfg.window_seconds
        ));
    }
    if let Some(&last) = recent.iter().max() {
        // Backoff doubles with every restart inside the window.
        let exp = (recent.len() as u32 - 1).min(16);
        let wait_ms = i64::from(cfg.backoff_seconds.max(0)) * 1000 * (1i64 << exp);
        if inp.now_ms - last < wait_ms {
            return held(format!(
                "backing off: {} s since the last restart, {} s needed",
                (inp.now_ms - last) / 1000,
                wait_ms / 1000
            ));
        }
    }
    if inp.ready_pods < 2 {
        return held(format!(
            "only {} ready pod(s): restarting {pod} would leave none serving",
            inp.ready_pods
        ));
    }
    HealDecision::Restart {
        pod,
        reason: ours.explanation.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Healing {
        Healing {
            enabled: true,
            max_restarts: 2,
            window_seconds: 3600,
            backoff_seconds: 300,
            ..Healing::default()
        }
    }

    fn inputs(causes: Vec<CauseInput>) -> HealInputs {
        HealInputs {
            now_ms: 10_000_000,
            service: "inventory".into(),
            causes,
            pods: vec!["inventory-a".into(), "inventory-b".into(), "inventory-c".into()],
            ready_pods: 3,
            restarts: vec![],
        }
    }

    fn cause(service: &str, pod: Option<&str>) -> CauseInput {
        CauseInput {
            service: service.into(),
            pod: pod.map(Into::into),
            explanation: format!("{service} is the likely cause"),
        }
    }

    #[test]
    fn table() {
        let restart = |p: &str| HealDecision::Restart {
            pod: p.into(),
            reason: "inventory is the likely cause".into(),
        };
        type Tweak = fn(&mut Healing, &mut HealInputs);
        let cases: Vec<(&str, Tweak, &str)> = vec![
            ("the singled-out pod is restarted", |_, _| {}, "restart"),
            ("no causes: nothing", |_, i| i.causes.clear(), "none"),
            (
                "another incident ranks first: ours is still at fault",
                |_, i| {
                    i.causes = vec![cause("shipping", None), cause("inventory", Some("inventory-b"))];
                },
                "restart",
            ),
            (
                "only another service is a cause (ours a symptom or healthy): never",
                |_, i| i.causes = vec![cause("postgres", Some("postgres-0"))],
                "none",
            ),
            (
                "no single pod: never",
                |_, i| i.causes = vec![cause("inventory", None)],
                "none",
            ),
            (
                "pod gone: never",
                |_, i| i.causes = vec![cause("inventory", Some("inventory-z"))],
                "none",
            ),
            ("disabled: held back", |c, _| c.enabled = false, "held"),
            (
                "same pod twice: held back",
                |_, i| {
                    i.restarts = vec![(0, "inventory-b".into())];
                },
                "held",
            ),
            (
                "budget spent: held back",
                |_, i| {
                    i.restarts = vec![
                        (i.now_ms - 3_000_000, "x".into()),
                        (i.now_ms - 2_000_000, "y".into()),
                    ];
                },
                "held",
            ),
            (
                "budget frees up after the window",
                |_, i| {
                    i.restarts = vec![
                        (i.now_ms - 7_200_000, "x".into()),
                        (i.now_ms - 3_700_000, "y".into()),
                    ];
                },
                "restart",
            ),
            (
                "backoff: held back",
                |_, i| i.restarts = vec![(i.now_ms - 100_000, "x".into())],
                "held",
            ),
            (
                "after backoff",
                |_, i| i.restarts = vec![(i.now_ms - 301_000, "x".into())],
                "restart",
            ),
            ("last ready pod: held back", |_, i| i.ready_pods = 1, "held"),
        ];
        for (name, tweak, want) in cases {
            let mut c = cfg();
            let mut i = inputs(vec![cause("inventory", Some("inventory-b"))]);
            tweak(&mut c, &mut i);
            let got = heal(&c, &i);
            let kind = match &got {
                HealDecision::None { .. } => "none",
                HealDecision::Restart { .. } => "restart",
                HealDecision::HeldBack { .. } => "held",
            };
            assert_eq!(kind, want, "{name}: {got:?}");
            if want == "restart" {
                assert_eq!(got, restart("inventory-b"), "{name}");
            }
        }
    }
}
