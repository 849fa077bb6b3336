#!/usr/bin/env python3
"""Validates every manifest under manifests/ against the real schemas.

- Kubernetes kinds: kubernetes-validate (PyPI), strict mode, for one Kubernetes version.
- The mesh's custom resources (the examples, the GatewayClass): the openAPIV3Schema of their
  own CRD in manifests/crds/ (the one the API server would check), with jsonschema.
- The CRDs themselves: kubernetes-validate (CustomResourceDefinition is a Kubernetes kind).
- Prometheus (manifests/prometheus/): `promtool check config` on both scrape configs,
  `promtool check rules` and the alert rules' unit tests (`promtool test rules`); the Grafana
  dashboards (manifests/dashboards/): up to date with scripts/dashboards.py, and every panel
  query parses as PromQL (promtool, with the template variables filled in).
- The ztunnel DaemonSet upgrades without a drop: surge first (maxSurge 1, maxUnavailable 0), its
  DRAIN_DEADLINE_SECS below terminationGracePeriodSeconds.

Usage: scripts/validate-manifests.py [KUBERNETES_VERSION]   (default 1.37.0, the newest kubernetes-validate knows)
Exit status 0 when everything passes; each failure is printed with its file and object.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "manifests")
VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.37.0"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def nullable(schema):
    """OpenAPI's `nullable: true` as JSON Schema: null is also allowed."""
    if isinstance(schema, dict):
        out = {k: nullable(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(schema, list):
        return [nullable(v) for v in schema]
    return schema


def crd_schemas():
    schemas = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "crds", "*.yaml"))):
        for crd in documents(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = nullable(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def promtool(*args):
    """Runs promtool; a failure message, or None."""
    try:
        out = subprocess.run(["promtool", *args], capture_output=True, text=True)
    except FileNotFoundError:
        return "promtool not found: install the Debian package prometheus"
    if out.returncode != 0:
        return f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return None


def expand(expr):
    """A dashboard query as Prometheus receives it from Grafana, variables filled in."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(node|namespace|workload)\}?", ".*", expr)


def observability():
    """Failure messages of the Prometheus and dashboard checks."""
    prom = os.path.join(ROOT, "prometheus")
    failures = []
    checks = [
        ("check", "config", os.path.join(prom, "prometheus.yml")),
        ("check", "rules", os.path.join(prom, "recording-rules.yml"), os.path.join(prom, "alert-rules.yml")),
        ("test", "rules", os.path.join(prom, "alert-rules.test.yml")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # Debian's Prometheus is built without Kubernetes discovery: everything else of the
        # Kubernetes config (relabelling, rule files) is checked with a static target instead.
        with open(os.path.join(prom, "prometheus-kubernetes.yml")) as f:
            text = f.read()
        sd = "  kubernetes_sd_configs:\n  - role: pod\n"
        if sd not in text:
            failures.append("prometheus-kubernetes.yml: no `kubernetes_sd_configs: [role: pod]`")
        k8s = os.path.join(tmp, "prometheus-kubernetes.yml")
        with open(k8s, "w") as f:
            f.write(text.replace(sd, "  static_configs:\n  - targets: ['pod:15020']\n"))
        for rules in ("recording-rules.yml", "alert-rules.yml"):
            with open(os.path.join(prom, rules)) as src, open(os.path.join(tmp, rules), "w") as dst:
                dst.write(src.read())
        checks.append(("check", "config", k8s))
        # Every dashboard query, as a recording rule: promtool parses it.
        rules = []
        for path in sorted(glob.glob(os.path.join(ROOT, "dashboards", "*.json"))):
            with open(path) as f:
                dashboard = json.load(f)
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expand(target["expr"])})
        queries = os.path.join(tmp, "dashboard-queries.yml")
        with open(queries, "w") as f:
            json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
        checks.append(("check", "rules", queries))
        for args in checks:
            failure = promtool(*args)
            if failure:
                failures.append(failure.replace(tmp, "<tmp>"))
    dashboards = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards.py"), "--check"],
        capture_output=True, text=True,
    )
    if dashboards.returncode != 0:
        failures.append(dashboards.stdout + dashboards.stderr)
    print(f"prometheus configs, rules, rule tests and {len(rules)} dashboard queries checked with promtool: "
          f"{len(failures)} failed")
    return failures


def ztunnel_upgrade(doc):
    """The ztunnel DaemonSet must upgrade without dropping a connection: a surge pod first
    (maxSurge 1, maxUnavailable 0), and a drain deadline shorter than the grace period."""
    if (doc.get("kind"), doc.get("metadata", {}).get("name")) != ("DaemonSet", "ztunnel"):
        return []
    spec = doc["spec"]
    rolling = spec.get("updateStrategy", {}).get("rollingUpdate", {})
    failures = []
    if rolling.get("maxSurge") != 1 or rolling.get("maxUnavailable") != 0:
        failures.append(f"updateStrategy must be maxSurge 1, maxUnavailable 0 (zero-drop upgrade), got {rolling}")
    pod = spec["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
    drain = int(env.get("DRAIN_DEADLINE_SECS", 20))
    if drain >= grace:
        failures.append(f"DRAIN_DEADLINE_SECS {drain} must be below terminationGracePeriodSeconds {grace}")
    return failures


def main():
    schemas = crd_schemas()
    files = sorted(
        p
        for p in glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)
        if os.path.basename(p) != "kustomization.yaml"
    )
    failures, checked = [], 0
    for path in files:
        rel = os.path.relpath(path, os.path.join(ROOT, ".."))
        for doc in documents(path):
            name = f"{rel}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            checked += 1
            key = (doc.get("apiVersion"), doc.get("kind"))
            failures.extend(f"{name}: {f}" for f in ztunnel_upgrade(doc))
            try:
                if key in schemas:
                    jsonschema.validate(doc, schemas[key])
                else:
                    kubernetes_validate.validate(doc, VERSION, True)
            except Exception as e:  # each failure is reported, none stops the others
                message = getattr(e, "message", str(e))
                failures.append(f"{name}: {message}")
    failures.extend(observability())
    for f in failures:
        print(f"FAIL {f}")
    print(f"{checked} objects in {len(files)} files checked against Kubernetes {VERSION} and the mesh's CRDs: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
