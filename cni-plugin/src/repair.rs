//! Self-healing capture: every enrolled pod's rules are checked on an interval and rewritten
//! when something removed them (a node reboot that kept the pod's namespace, `iptables -F` by
//! another tool), without restarting the pod. Istio's agent leaves such a pod uncaptured until
//! it restarts (istio/istio#60882).
//!
//! The check is [`rules::install`] itself: it reads the namespace's tables and writes only
//! when they differ from what capture needs, so a pod whose rules are intact costs one
//! `iptables-save`. Each pod is checked under the agent's mutex, so a check never races a
//! release (which removes the rules and must not see them written back).

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::InstallReason;
use crate::node::{blocking, NodeCtx};
use crate::pods::Pods;
use crate::rules;

/// Checks every enrolled pod's rules every `interval`, forever.
pub async fn run(agent: &NodeCtx, pods: &tokio::sync::Mutex<Pods>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_all(agent, pods).await;
    }
}

/// One pass over the pods enrolled now; how many were repaired.
pub async fn check_all(agent: &NodeCtx, pods: &tokio::sync::Mutex<Pods>) -> usize {
    let mut repaired = 0;
    for pod in agent.hub.all() {
        // Under the lock, and only if the pod is still enrolled with the same namespace.
        let _held = pods.lock().await;
        let still = agent
            .hub
            .get(&pod.uid)
            .is_some_and(|now| Arc::ptr_eq(&now.netns, &pod.netns));
        if !still {
            continue;
        }
        let opts = agent.config.capture.clone();
        let netns = pod.netns.clone();
        let checked = blocking(move || rules::install(&netns, &opts).map_err(|e| e.to_string()))
            .await
            .and_then(|r| r);
        let shown = format!("{}/{}", pod.info.namespace, pod.info.name);
        match checked {
            Ok(false) => {}
            Ok(true) => {
                repaired += 1;
                agent.metrics.installed(InstallReason::repair);
                tracing::warn!(pod = %shown, "capture rules were missing or changed; rewritten");
            }
            Err(e) => {
                agent.metrics.install_failed();
                tracing::warn!(pod = %shown, error = %e, "checking capture rules");
            }
        }
    }
    repaired
}
