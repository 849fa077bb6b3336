//! The traffic-capture rules written inside a pod's network namespace (in-pod mode).
//!
//! Pure builders: they produce `iptables-restore` input and `ip` arguments; whoever runs
//! inside the pod netns (the CNI node agent, or the e2e harness) applies them.
//!
//! What the rules do:
//! - outbound TCP from the application is redirected to ztunnel's 15001;
//! - inbound TCP (except HBONE on 15008) is redirected to ztunnel's 15006;
//! - ztunnel's own sockets carry mark 0x539 and are never captured;
//! - connections ztunnel opens to the app with a spoofed source are connmarked 0x111 so the
//!   replies are routed back to ztunnel (policy routing table 100);
//! - kubelet probes (SNATed to 169.254.7.127 on the host) pass untouched.

use std::net::Ipv4Addr;

/// Mark on every socket ztunnel opens in a pod network namespace.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Connection mark for connections ztunnel opened towards the application.
pub const CONN_MARK: u32 = 0x111;
/// Mask applied to both marks.
pub const MARK_MASK: u32 = 0xfff;
/// Policy-routing table that sends connmarked replies back to the local stack.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the policy-routing rule.
pub const RULE_PRIORITY: u32 = 32764;
/// Source address the node uses for kubelet health probes.
pub const PROBE_SNAT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PORT: u16 = 15006;
/// HBONE port (never redirected).
pub const HBONE_PORT: u16 = 15008;
/// DNS capture port.
pub const DNS_PORT: u16 = 15053;

/// Options for the capture rules.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Also redirect DNS (UDP 53) to ztunnel's DNS proxy.
    pub capture_dns: bool,
}

/// `iptables-restore --noflush` input installing the IPv4 capture rules.
///
/// The `ISTIO_*` chains are declared (so re-applying flushes them rather than duplicating
/// their rules); the jumps from the built-in chains must be absent before applying — use
/// [`iptables_cleanup_v4`] first when re-applying.
pub fn iptables_rules_v4(opts: &CaptureOptions) -> String {
    let mark = format!("0x{ZTUNNEL_MARK:x}/0x{MARK_MASK:x}");
    let connmark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
    let probe = PROBE_SNAT_IP;
    let mut nat_output = vec![
        format!("-A ISTIO_OUTPUT -d {probe}/32 -p tcp -m tcp -j ACCEPT"),
        format!("-A ISTIO_OUTPUT -p tcp -m connmark --mark {connmark} -j ACCEPT"),
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT".to_string(),
    ];
    if opts.capture_dns {
        nat_output.push(format!(
            "-A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -m mark ! --mark {mark} -j REDIRECT --to-ports {DNS_PORT}"
        ));
    }
    nat_output.push(format!(
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
    let lines = [
        "*mangle".to_string(),
        ":ISTIO_PRERT - [0:0]".to_string(),
        ":ISTIO_OUTPUT - [0:0]".to_string(),
        "-A PREROUTING -j ISTIO_PRERT".to_string(),
        "-A OUTPUT -j ISTIO_OUTPUT".to_string(),
        format!("-A ISTIO_PRERT -m mark --mark {mark} -j CONNMARK --set-xmark {connmark}"),
        format!(
            "-A ISTIO_OUTPUT -m connmark --mark {connmark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
        "COMMIT".to_string(),
        "*nat".to_string(),
        ":ISTIO_PRERT - [0:0]".to_string(),
        ":ISTIO_OUTPUT - [0:0]".to_string(),
        "-A PREROUTING -j ISTIO_PRERT".to_string(),
        "-A OUTPUT -j ISTIO_OUTPUT".to_string(),
        format!("-A ISTIO_PRERT -s {probe}/32 -p tcp -m tcp -j ACCEPT"),
        format!(
            "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport {HBONE_PORT} -m mark ! --mark {mark} -j REDIRECT --to-ports {INBOUND_PORT}"
        ),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    for rule in nat_output {
        out.push_str(&rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input removing everything [`iptables_rules_v4`] installs:
/// the built-in chains are flushed of our jumps by deleting them, then our chains go.
///
/// Deleting a jump that is absent fails the whole restore, so callers check with
/// [`installed_jumps`] first, or simply ignore failure when nothing was installed.
pub fn iptables_cleanup_v4() -> String {
    let mut out = String::new();
    for table in ["mangle", "nat"] {
        out.push_str(&format!(
            "*{table}\n-D PREROUTING -j ISTIO_PRERT\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_PRERT\n-X ISTIO_PRERT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        ));
    }
    out
}

/// Whether `iptables-save` output shows our jumps installed.
pub fn installed_jumps(iptables_save: &str) -> bool {
    iptables_save.lines().any(|l| {
        l.trim() == "-A PREROUTING -j ISTIO_PRERT" || l.trim() == "-A OUTPUT -j ISTIO_OUTPUT"
    })
}

/// `ip` argument lists for the policy routing that returns connmarked replies to ztunnel.
pub fn ip_route_setup_v4() -> Vec<Vec<String>> {
    let mark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
    vec![
        strings(&[
            "rule",
            "add",
            "fwmark",
            &mark,
            "pref",
            &RULE_PRIORITY.to_string(),
            "lookup",
            &ROUTE_TABLE.to_string(),
        ]),
        strings(&[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &ROUTE_TABLE.to_string(),
        ]),
    ]
}

/// `ip` argument lists undoing [`ip_route_setup_v4`].
pub fn ip_route_cleanup_v4() -> Vec<Vec<String>> {
    let mark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
    vec![
        strings(&[
            "rule",
            "del",
            "fwmark",
            &mark,
            "pref",
            &RULE_PRIORITY.to_string(),
            "lookup",
            &ROUTE_TABLE.to_string(),
        ]),
        strings(&[
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &ROUTE_TABLE.to_string(),
        ]),
    ]
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_documented_capture_exactly() {
        let want = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m connmark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";
        assert_eq!(iptables_rules_v4(&CaptureOptions::default()), want);
    }

    #[test]
    fn dns_capture_adds_one_rule_before_the_tcp_redirect() {
        let rules = iptables_rules_v4(&CaptureOptions { capture_dns: true });
        let dns = rules.find("--dport 53").expect("dns rule");
        let tcp = rules.find("--to-ports 15001").expect("tcp rule");
        assert!(dns < tcp);
        assert!(rules.contains("-j REDIRECT --to-ports 15053"));
    }

    #[test]
    fn cleanup_and_detection_cover_what_is_installed() {
        let cleanup = iptables_cleanup_v4();
        assert_eq!(cleanup.matches("-D PREROUTING -j ISTIO_PRERT").count(), 2);
        assert!(installed_jumps(&iptables_rules_v4(
            &CaptureOptions::default()
        )));
        assert!(!installed_jumps("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"));
        assert_eq!(
            ip_route_setup_v4()[0].join(" "),
            "rule add fwmark 0x111/0xfff pref 32764 lookup 100"
        );
        assert_eq!(ip_route_cleanup_v4()[1][0..2], ["route", "del"]);
    }
}
