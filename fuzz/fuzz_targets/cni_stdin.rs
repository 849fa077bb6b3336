//! What a container runtime hands the CNI plugin: the network configuration on stdin (with
//! the previous plugin's result, `prevResult`) and `CNI_ARGS`.
//!
//! Input layout: everything up to the first `\0` is `CNI_ARGS`; the rest is stdin. Never
//! panics; an accepted configuration names our plugin's type, and the pod addresses read from
//! its `prevResult` are ones that appear in it.
#![no_main]

use cni_plugin::cni::{parse_cni_args, pod_ips, sniff_version, NetConf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let _ = parse_cni_args(&String::from_utf8_lossy(args));
    let _ = sniff_version(stdin);
    if let Ok(conf) = NetConf::parse(stdin) {
        if let Some(prev) = &conf.prev_result {
            let text = prev.to_string();
            for ip in pod_ips(prev) {
                assert!(
                    text.contains(&ip.to_string()) || ip.is_ipv6(),
                    "{ip} is not in prevResult {text}"
                );
            }
        }
    }
    // prevResult on its own, as any JSON value.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(stdin) {
        let _ = pod_ips(&value);
    }
});
