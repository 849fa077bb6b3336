//! Tests of the PeerAuthentication translation.

use mesh::model::Workload;

use super::*;
use crate::translate::test_support::{run, warnings_about};
use crate::translate::{resources, Translated};

const STATIC: &str = "istio-system/istio_converted_static_strict";

/// Pods: `istio-system/ctl`, `apps/web`, `apps/db`, `legacy/old`, each labelled `app: <name>`.
const PODS: [(&str, &str); 4] = [
    ("istio-system", "ctl"),
    ("apps", "web"),
    ("apps", "db"),
    ("legacy", "old"),
];

/// Ports the behaviour tables probe.
const PORTS: [u16; 2] = [8080, 9090];

fn pods() -> String {
    PODS.iter()
        .enumerate()
        .map(|(i, (ns, name))| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n",
                i + 1
            )
        })
        .collect()
}

/// One PeerAuthentication; `spec` is a YAML flow mapping.
fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

/// The pods plus these PeerAuthentications, translated.
fn with(pas: &[(&str, &str, &str)]) -> Translated {
    let docs: String = pas
        .iter()
        .map(|(ns, name, spec)| pa(ns, name, spec))
        .collect();
    run(&(pods() + &docs))
}

fn find<'a>(t: &'a Translated, name: &str) -> &'a Workload {
    t.workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name}"))
}

fn keys(t: &Translated) -> Vec<String> {
    t.policies.iter().map(Policy::key).collect()
}

/// Whether the policies in scope for `pod` (global, its namespace's, the ones it lists) deny a
/// connection from `principal` (empty: plaintext) to `port`, as the node tunnel evaluates
/// them: any matching DENY denies. Only the fields this translation sets are read.
fn denied(t: &Translated, pod: &str, principal: &str, port: u16) -> bool {
    let w = find(t, pod);
    let matches = |m: &Match| {
        (m.principals.is_empty() || m.principals.iter().any(|s| s.matches(principal)))
            && !m.not_principals.iter().any(|s| s.matches(principal))
            && (m.destination_ports.is_empty() || m.destination_ports.contains(&port))
            && !m.not_destination_ports.contains(&port)
    };
    t.policies
        .iter()
        .filter(|p| match p.scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => p.namespace == w.namespace(),
            PolicyScope::WorkloadSelector => w.authorization_policies.contains(&p.key()),
        })
        .filter(|p| p.action == PolicyAction::Deny)
        .any(|p| {
            p.rules
                .iter()
                .any(|r| r.clauses.iter().all(|c| c.matches.iter().any(matches)))
        })
}

struct Case {
    name: &'static str,
    pas: &'static [(&'static str, &'static str, &'static str)],
    /// What each pod of [`PODS`] lists, in that order.
    attached: [Option<&'static str>; 4],
    /// Where plaintext is refused (pod, port); accepted everywhere else in [`PORTS`].
    refused: &'static [(&'static str, u16)],
}

const ALL: &[(&str, u16)] = &[
    ("ctl", 8080),
    ("ctl", 9090),
    ("web", 8080),
    ("web", 9090),
    ("db", 8080),
    ("db", 9090),
    ("old", 8080),
    ("old", 9090),
];

const MESH_STRICT: (&str, &str, &str) = ("istio-system", "default", "{mtls: {mode: STRICT}}");
const WEB: &str = "selector: {matchLabels: {app: web}}";

#[test]
fn modes_follow_scope_and_precedence() {
    let web_port = Some("apps/converted_peer_authentication_web-port");
    let cases = [
        Case {
            name: "mesh STRICT: every pod, root namespace included",
            pas: &[MESH_STRICT],
            attached: [Some(STATIC), Some(STATIC), Some(STATIC), Some(STATIC)],
            refused: ALL,
        },
        Case {
            name: "namespace PERMISSIVE under mesh STRICT",
            pas: &[MESH_STRICT, ("legacy", "default", "{mtls: {mode: PERMISSIVE}}")],
            attached: [Some(STATIC), Some(STATIC), Some(STATIC), None],
            refused: &[("ctl", 8080), ("ctl", 9090), ("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "namespace DISABLE under mesh STRICT",
            pas: &[MESH_STRICT, ("legacy", "default", "{mtls: {mode: DISABLE}}")],
            attached: [Some(STATIC), Some(STATIC), Some(STATIC), None],
            refused: &[("ctl", 8080), ("ctl", 9090), ("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "namespace UNSET inherits mesh STRICT",
            pas: &[MESH_STRICT, ("legacy", "default", "{}")],
            attached: [Some(STATIC), Some(STATIC), Some(STATIC), Some(STATIC)],
            refused: ALL,
        },
        Case {
            name: "namespace STRICT under mesh PERMISSIVE",
            pas: &[
                ("istio-system", "default", "{mtls: {mode: PERMISSIVE}}"),
                ("apps", "default", "{mtls: {mode: STRICT}}"),
            ],
            attached: [None, Some(STATIC), Some(STATIC), None],
            refused: &[("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "namespace STRICT, no mesh policy",
            pas: &[("apps", "default", "{mtls: {mode: STRICT}}")],
            attached: [None, Some(STATIC), Some(STATIC), None],
            refused: &[("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "workload STRICT in a PERMISSIVE namespace",
            pas: &[
                ("apps", "default", "{mtls: {mode: PERMISSIVE}}"),
                ("apps", "web-strict", "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}"),
            ],
            attached: [None, Some(STATIC), None, None],
            refused: &[("web", 8080), ("web", 9090)],
        },
        Case {
            name: "workload PERMISSIVE under namespace STRICT",
            pas: &[
                ("apps", "default", "{mtls: {mode: STRICT}}"),
                ("apps", "web-open", "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}"),
            ],
            attached: [None, None, Some(STATIC), None],
            refused: &[("db", 8080), ("db", 9090)],
        },
        Case {
            name: "workload DISABLE under mesh STRICT",
            pas: &[
                MESH_STRICT,
                ("apps", "web-off", "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}"),
            ],
            attached: [Some(STATIC), None, Some(STATIC), Some(STATIC)],
            refused: &[("ctl", 8080), ("ctl", 9090), ("db", 8080), ("db", 9090), ("old", 8080), ("old", 9090)],
        },
        Case {
            name: "workload UNSET inherits namespace STRICT",
            pas: &[
                ("apps", "default", "{mtls: {mode: STRICT}}"),
                ("apps", "web-unset", "{selector: {matchLabels: {app: web}}}"),
            ],
            attached: [None, Some(STATIC), Some(STATIC), None],
            refused: &[("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "port STRICT in a PERMISSIVE workload",
            pas: &[(
                "apps",
                "web-port",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9090: {mode: STRICT}}}",
            )],
            attached: [None, web_port, None, None],
            refused: &[("web", 9090)],
        },
        Case {
            name: "port STRICT, mode UNSET, nothing above",
            pas: &[(
                "apps",
                "web-port",
                "{selector: {matchLabels: {app: web}}, portLevelMtls: {9090: {mode: STRICT}}}",
            )],
            attached: [None, web_port, None, None],
            refused: &[("web", 9090)],
        },
        Case {
            name: "port PERMISSIVE in a STRICT workload",
            pas: &[(
                "apps",
                "web-port",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}",
            )],
            attached: [None, web_port, None, None],
            refused: &[("web", 9090)],
        },
        Case {
            name: "port DISABLE under an inherited namespace STRICT",
            pas: &[
                ("apps", "default", "{mtls: {mode: STRICT}}"),
                ("apps", "web-port", "{selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: DISABLE}}}"),
            ],
            attached: [None, web_port, Some(STATIC), None],
            refused: &[("web", 9090), ("db", 8080), ("db", 9090)],
        },
        Case {
            name: "port PERMISSIVE under an inherited mesh STRICT",
            pas: &[
                MESH_STRICT,
                ("apps", "web-port", "{selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
            ],
            attached: [Some(STATIC), web_port, Some(STATIC), Some(STATIC)],
            refused: &[("ctl", 8080), ("ctl", 9090), ("web", 9090), ("db", 8080), ("db", 9090), ("old", 8080), ("old", 9090)],
        },
        Case {
            name: "port STRICT under an inherited STRICT changes nothing",
            pas: &[
                MESH_STRICT,
                ("apps", "web-port", "{selector: {matchLabels: {app: web}}, portLevelMtls: {9090: {mode: STRICT}}}"),
            ],
            attached: [Some(STATIC), Some(STATIC), Some(STATIC), Some(STATIC)],
            refused: ALL,
        },
        Case {
            name: "port PERMISSIVE or UNSET under PERMISSIVE changes nothing",
            pas: &[(
                "apps",
                "web-port",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: UNSET}}}",
            )],
            attached: [None, None, None, None],
            refused: &[],
        },
        Case {
            name: "an empty selector is namespace-wide",
            pas: &[("apps", "all", "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}")],
            attached: [None, Some(STATIC), Some(STATIC), None],
            refused: &[("web", 8080), ("web", 9090), ("db", 8080), ("db", 9090)],
        },
    ];
    for case in cases {
        let t = with(case.pas);
        assert!(t.warnings.is_empty(), "{}: {:?}", case.name, t.warnings);
        for ((_, pod), expected) in PODS.iter().zip(case.attached) {
            let expected: Vec<String> = expected.into_iter().map(String::from).collect();
            assert_eq!(
                find(&t, pod).authorization_policies,
                expected,
                "{}: {pod}",
                case.name
            );
        }
        // Every generated policy: the static one, and a converted one only when a pod needs it.
        let mut generated = vec![STATIC.to_string()];
        if case.attached.contains(&web_port) {
            generated.insert(0, "apps/converted_peer_authentication_web-port".to_string());
        }
        assert_eq!(keys(&t), generated, "{}", case.name);
        for (_, pod) in PODS {
            for port in PORTS {
                assert_eq!(
                    denied(&t, pod, "", port),
                    case.refused.contains(&(pod, port)),
                    "{}: plaintext to {pod}:{port}",
                    case.name
                );
                assert!(
                    !denied(&t, pod, "cluster.local/ns/apps/sa/default", port),
                    "{}: HBONE to {pod}:{port} must pass",
                    case.name
                );
            }
        }
    }
}

#[test]
fn no_peer_authentication_generates_nothing() {
    let t = with(&[]);
    assert!(t.policies.is_empty(), "{:?}", t.policies);
    assert!(t
        .workloads
        .iter()
        .all(|w| w.authorization_policies.is_empty()));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn the_static_policy_denies_connections_without_an_identity() {
    let t = with(&[("legacy", "default", "{mtls: {mode: PERMISSIVE}}")]);
    // Sent as soon as any PeerAuthentication exists, even if no pod lists it yet.
    assert_eq!(
        t.policies,
        [Policy {
            name: "istio_converted_static_strict".into(),
            namespace: "istio-system".into(),
            scope: PolicyScope::WorkloadSelector,
            action: PolicyAction::Deny,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        not_principals: vec![StringMatch::Presence],
                        ..Match::default()
                    }]
                }]
            }],
            dry_run: false,
        }]
    );
}

fn converted(t: &Translated) -> &Policy {
    t.policies
        .iter()
        .find(|p| p.name.starts_with(CONVERTED_PREFIX))
        .unwrap_or_else(|| panic!("no converted policy in {:?}", t.policies))
}

fn deny_without_identity(namespace: &str, name: &str, ports: Match) -> Policy {
    Policy {
        name: format!("converted_peer_authentication_{name}"),
        namespace: namespace.into(),
        scope: PolicyScope::WorkloadSelector,
        action: PolicyAction::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![StringMatch::Presence],
                    ..ports
                }],
            }],
        }],
        dry_run: false,
    }
}

#[test]
fn strict_ports_of_a_permissive_policy_become_destination_ports() {
    let t = with(&[(
        "apps",
        "web-ports",
        "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9091: {mode: STRICT}, 8080: {mode: PERMISSIVE}, 9090: {mode: STRICT}}}",
    )]);
    assert_eq!(
        *converted(&t),
        deny_without_identity(
            "apps",
            "web-ports",
            Match {
                destination_ports: vec![9090, 9091],
                ..Match::default()
            }
        )
    );
}

#[test]
fn non_strict_ports_of_a_strict_policy_become_not_destination_ports() {
    let t = with(&[(
        "apps",
        "web-ports",
        "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8081: {mode: DISABLE}, 8080: {mode: PERMISSIVE}, 9090: {mode: STRICT}}}",
    )]);
    assert_eq!(
        *converted(&t),
        deny_without_identity(
            "apps",
            "web-ports",
            Match {
                not_destination_ports: vec![8080, 8081],
                ..Match::default()
            }
        )
    );
}

#[test]
fn generated_policies_go_on_the_wire_and_join_selected_authorization_policies() {
    let t = run(&(pods()
        + &pa("apps", "default", "{mtls: {mode: STRICT}}")
        + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: apps}\nspec: {selector: {matchLabels: {app: web}}, rules: [{}]}\n"));
    assert_eq!(
        find(&t, "web").authorization_policies,
        ["apps/allow-web", STATIC]
    );
    assert_eq!(find(&t, "db").authorization_policies, [STATIC]);
    let (_, authorizations) = resources(&t);
    let names: Vec<&str> = authorizations.keys().map(String::as_str).collect();
    assert_eq!(names, ["apps/allow-web", STATIC]);
    let wire = &authorizations[STATIC];
    assert_eq!(wire.scope, proto::security::Scope::WorkloadSelector as i32);
    assert_eq!(wire.action, proto::security::Action::Deny as i32);
    assert_eq!(
        wire.rules[0].clauses[0].matches[0].not_principals[0].match_type,
        Some(proto::security::string_match::MatchType::Presence(()))
    );
    let back = Policy::try_from(wire.clone()).expect("valid on the wire");
    assert_eq!(back.key(), STATIC);
}

#[test]
fn the_oldest_policy_of_a_level_wins_and_the_others_are_reported() {
    let dated = |ns: &str, name: &str, time: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{time}\"}}\nspec: {spec}\n")
    };
    let t = run(&(pods()
        + &dated(
            "apps",
            "a-new",
            "2024-01-01T00:00:00Z",
            "{mtls: {mode: STRICT}}",
        )
        + &dated(
            "apps",
            "b-old",
            "2020-01-01T00:00:00Z",
            "{mtls: {mode: PERMISSIVE}}",
        )
        + &dated(
            "apps",
            "web-new",
            "2024-01-01T00:00:00Z",
            &format!("{{{WEB}, mtls: {{mode: PERMISSIVE}}}}"),
        )
        + &dated(
            "apps",
            "web-old",
            "2020-01-01T00:00:00Z",
            &format!("{{{WEB}, mtls: {{mode: STRICT}}}}"),
        )));
    // Namespace level: b-old (PERMISSIVE) applies, so db accepts plaintext; workload level:
    // web-old (STRICT) applies to web.
    assert!(find(&t, "db").authorization_policies.is_empty());
    assert_eq!(find(&t, "web").authorization_policies, [STATIC]);
    assert_eq!(
        warnings_about(&t, "PeerAuthentication apps/a-new"),
        ["the namespace-wide PeerAuthentication apps/b-old is older and applies instead; ignored"]
    );
    assert_eq!(
        warnings_about(&t, "PeerAuthentication apps/web-new"),
        ["some pods it selects are also selected by the older PeerAuthentication apps/web-old, which applies to them instead"]
    );
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);

    // Without creation times (hand-written files), the first by name wins.
    let t = with(&[
        ("istio-system", "a", "{mtls: {mode: PERMISSIVE}}"),
        ("istio-system", "b", "{mtls: {mode: STRICT}}"),
    ]);
    assert!(t
        .workloads
        .iter()
        .all(|w| w.authorization_policies.is_empty()));
    assert_eq!(
        warnings_about(&t, "PeerAuthentication istio-system/b"),
        ["the mesh-wide PeerAuthentication istio-system/a is older and applies instead; ignored"]
    );
}

#[test]
fn a_selector_in_the_root_namespace_applies_to_nothing() {
    let t = with(&[(
        "istio-system",
        "ctl",
        "{selector: {matchLabels: {app: ctl}}, mtls: {mode: STRICT}}",
    )]);
    assert!(find(&t, "ctl").authorization_policies.is_empty());
    assert_eq!(
        warnings_about(&t, "PeerAuthentication istio-system/ctl"),
        ["a PeerAuthentication with a selector in the root namespace istio-system applies to no workload (as in Istio); ignored"]
    );
}

#[test]
fn port_level_settings_without_a_selector_are_read_the_strictest_way() {
    // Istio refuses these objects; a STRICT port makes the whole scope STRICT, and exemptions
    // from STRICT are dropped.
    for (spec, strict) in [
        (
            "{mtls: {mode: PERMISSIVE}, portLevelMtls: {9090: {mode: STRICT}}}",
            true,
        ),
        (
            "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}",
            true,
        ),
        (
            "{mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: DISABLE}}}",
            false,
        ),
        ("{portLevelMtls: {8080: {mode: DISABLE}}}", false),
    ] {
        let t = with(&[("apps", "bad", spec)]);
        let expected: Vec<String> = if strict { vec![STATIC.into()] } else { vec![] };
        assert_eq!(find(&t, "web").authorization_policies, expected, "{spec}");
        let warnings = warnings_about(&t, "PeerAuthentication apps/bad");
        assert_eq!(warnings.len(), 1, "{spec}: {warnings:?}");
        assert!(
            warnings[0].starts_with("portLevelMtls needs a workload selector (Istio refuses this object); read the strictest way: the port-level settings are dropped and "),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains(if strict {
                "mode STRICT applies to every port"
            } else {
                "applies to every port"
            }),
            "{}",
            warnings[0]
        );
    }
}

#[test]
fn unknown_modes_never_reach_the_translation() {
    // The config source refuses the document, so the whole new config is rejected and the
    // last good one stays in force: an unreadable STRICT never silently becomes PERMISSIVE.
    let yaml = pa("apps", "typo", "{mtls: {mode: STRCT}}");
    let problems = crate::config_source::ClusterState::from_yaml(&yaml).expect_err("refused");
    assert!(
        problems[0].reason.contains("STRCT"),
        "{:?}",
        problems[0].reason
    );
}

#[test]
fn generated_names_cannot_be_taken_by_authorization_policies() {
    let ap = |ns: &str, name: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{action: DENY, rules: [{{}}]}}\n")
    };
    let t = run(&(pods()
        + &pa("apps", "default", "{mtls: {mode: STRICT}}")
        + &ap("istio-system", "istio_converted_static_strict")
        + &ap("apps", "converted_peer_authentication_unrelated")));
    assert_eq!(
        keys(&t),
        ["apps/converted_peer_authentication_unrelated", STATIC]
    );
    assert_eq!(t.policies[1].rules[0].clauses.len(), 1, "the generated one");
    assert_eq!(
        warnings_about(&t, "AuthorizationPolicy istio-system/istio_converted_static_strict"),
        ["this name is reserved for a policy generated from PeerAuthentications (Kubernetes refuses `_` in names); policy skipped"]
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
}
