#!/usr/bin/env python3
"""Writes the Grafana dashboards in manifests/dashboards/ from the definitions below, so the
three dashboards share one data source variable, one set of template variables and one panel
style. The JSON is checked in (it is what users import); edit this file, not the JSON.

Usage: scripts/dashboards.py           write manifests/dashboards/*.json
       scripts/dashboards.py --check   exit 1 if a checked-in file differs from what this writes

Queries use the metric names of docs/observability.md, the target labels of
manifests/prometheus/ (`job`, `node`), `$__rate_interval` for rates, and `=~"$var"` for every
template variable (each has an "All" option matching `.*`). A counter whose series appear
only once something happened (NACKs, CSR failures) is written `X or <a series that always
exists> * 0`, so the panel shows 0, not "No data", when nothing went wrong.
"""
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "manifests", "dashboards")
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
ZT = 'job="ztunnel", node=~"$node"'


def rate(metric, selector, by, window=RI):
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{window}]))"


def q(expr, legend):
    return {"expr": expr, "legend": legend}


def panel(title, unit, description, *queries, kind="timeseries"):
    return {"title": title, "unit": unit, "description": description, "queries": queries, "kind": kind}


# --- template variables ----------------------------------------------------------------------
def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


NODE = variable("node", "Node", 'label_values(up{job="ztunnel"}, node)')
NAMESPACE = variable(
    "namespace",
    "Namespace",
    'label_values(istio_tcp_connections_opened_total{reporter="destination"}, destination_workload_namespace)',
)
WORKLOAD = variable(
    "workload",
    "Workload",
    'label_values(istio_tcp_connections_opened_total{reporter="destination", '
    'destination_workload_namespace=~"$namespace"}, destination_workload)',
)
# The destination workload a connection or request went to.
DEST = 'destination_workload_namespace=~"$namespace", destination_workload=~"$workload"'

# --- (a) ztunnel by node ---------------------------------------------------------------------
ZTUNNEL = {
    "uid": "mesh-ztunnel-by-node",
    "title": "Mesh / Ztunnel by node",
    "file": "ztunnel-by-node.json",
    "description": "Each node's ztunnel: connections, bytes, CPU, memory, runtime, xDS, certificates, "
    "authorization. Filter by node, and by the destination namespace and workload.",
    "variables": [NODE, NAMESPACE, WORKLOAD],
    "rows": [
        ("Connections", [
            panel("Connections opened and closed /s", "cps",
                  "TCP connections ztunnel opened and closed per second (both reporters), by node.",
                  q(rate("istio_tcp_connections_opened_total", f"{ZT}, {DEST}", "node"), "{{node}} opened"),
                  q(rate("istio_tcp_connections_closed_total", f"{ZT}, {DEST}", "node"), "{{node}} closed")),
            panel("Active connections", "short",
                  "Connections open now, by node and direction (inbound: to a pod on the node).",
                  q('sum by (node, direction) (ztunnel_connections_active{job="ztunnel", node=~"$node", '
                    'namespace=~"$namespace", workload=~"$workload"})', "{{node}} {{direction}}")),
            panel("Active connections by pod (top 10)", "short",
                  "The pods on the selected nodes with the most open connections.",
                  q('topk(10, sum by (node, namespace, pod) (ztunnel_connections_active{job="ztunnel", '
                    'node=~"$node", namespace=~"$namespace", workload=~"$workload"}))',
                    "{{node}} {{namespace}}/{{pod}}")),
            panel("Connection failures /s by reason", "cps",
                  "Connections ztunnel could not complete: denied, upstream_connect, no_healthy_upstream, "
                  "tls_handshake, hbone, unknown_destination, timeout, other; and connections reset "
                  "while still queued because ztunnel was out of file descriptors (0 is healthy).",
                  q(rate("ztunnel_connection_failures_total", ZT, "node, direction, reason"),
                    "{{node}} {{direction}} {{reason}}"),
                  q(f"{rate('mesh_accept_shed_total', ZT, 'node')} "
                    f"or max by (node) (mesh_xds_connected{{{ZT}}}) * 0",
                    "{{node}} reset while queued (out of file descriptors)")),
        ]),
        ("Bytes", [
            panel("Bytes in /s", "Bps", "Bytes received from the connection's source, by node.",
                  q(rate("istio_tcp_received_bytes_total", f"{ZT}, {DEST}", "node"), "{{node}}")),
            panel("Bytes out /s", "Bps", "Bytes sent to the connection's source, by node.",
                  q(rate("istio_tcp_sent_bytes_total", f"{ZT}, {DEST}", "node"), "{{node}}")),
        ]),
        ("Resources", [
            panel("CPU", "percentunit", "ztunnel's CPU time per second (1 = one core), by node.",
                  q(rate("process_cpu_seconds_total", ZT, "node"), "{{node}}")),
            panel("Memory (resident)", "bytes", "ztunnel's resident memory, by node.",
                  q(f"sum by (node) (process_resident_memory_bytes{{{ZT}}})", "{{node}}")),
            panel("Tokio workers busy", "percentunit",
                  "Share of the runtime's worker time spent running tasks, by node and runtime "
                  "(1 = every worker busy all the time).",
                  q(f"{rate('tokio_worker_busy_seconds_total', ZT, 'node, runtime')} / "
                    f"sum by (node, runtime) (tokio_workers{{{ZT}}})", "{{node}} {{runtime}}")),
            panel("File descriptors used", "percentunit", "Open file descriptors over the limit, by node.",
                  q(f"sum by (node) (process_open_fds{{{ZT}}}) / sum by (node) (process_max_fds{{{ZT}}})",
                    "{{node}}")),
        ]),
        ("xDS and certificates", [
            panel("xDS connected", "short", "1 while the node's ztunnel holds its delta ADS stream to istiod-lite.",
                  q(f"max by (node) (mesh_xds_connected{{{ZT}}})", "{{node}}"), kind="stat"),
            panel("Seconds since the last xDS ACK", "s",
                  "How long ago ztunnel last accepted configuration (grows while nothing changes).",
                  q(f"time() - max by (node) (mesh_xds_last_ack_timestamp_seconds{{{ZT}}} > 0)", "{{node}}")),
            panel("xDS NACKs", "short", "Configuration ztunnel rejected in the window (0 is healthy).",
                  q(f"sum by (node) (increase(mesh_xds_nacks_total{{{ZT}}}[{RI}])) "
                    f"or max by (node) (mesh_xds_connected{{{ZT}}}) * 0", "{{node}}")),
            panel("Certificate expiry", "s", "Seconds until the node's first workload certificate expires.",
                  q(f"min by (node) (mesh_certificate_expiration_timestamp_seconds{{{ZT}}}) - time()", "{{node}}")),
            panel("Certificates", "short", "Workload certificates held (available) and being requested (pending).",
                  q(f"sum by (node, state) (mesh_certificates{{{ZT}}})", "{{node}} {{state}}")),
            panel("Certificate rotations and CSR failures", "short",
                  "Rotations in the window, and CSRs that failed (by reason; 0 is healthy).",
                  q(f"sum by (node) (increase(mesh_certificate_rotations_total{{{ZT}}}[{RI}]))", "{{node}} rotations"),
                  q(f"sum by (node, reason) (increase(mesh_certificate_requests_failed_total{{{ZT}}}[{RI}])) "
                    f"or max by (node) (mesh_xds_connected{{{ZT}}}) * 0", "{{node}} failed {{reason}}")),
        ]),
        ("Authorization", [
            panel("Denials /s by policy", "cps",
                  "Connections denied by authorization policy, by destination namespace and deciding policy "
                  "(\"default\": no policy allowed it).",
                  q(rate("ztunnel_authorization_decisions_total",
                         f'{ZT}, namespace=~"$namespace", decision="deny"', "node, namespace, policy"),
                    "{{node}} {{namespace}} {{policy}}")),
            panel("Decisions /s", "cps", "Authorization decisions, allow and deny, by node.",
                  q(rate("ztunnel_authorization_decisions_total", f'{ZT}, namespace=~"$namespace"', "node, decision"),
                    "{{node}} {{decision}}")),
        ]),
        ("CNI node agent", [
            panel("Enrolled pods", "short", "Pods the node agent has handed to ztunnel, by node.",
                  q('sum by (node) (cni_agent_enrolled_pods{job="cni-agent", node=~"$node"})', "{{node}}")),
            panel("Capture rule installs", "short", "Rule (re)installs in the window by reason: new, repair, restart.",
                  q('sum by (node, reason) (increase(cni_agent_rule_installs_total{job="cni-agent", node=~"$node"}'
                    f'[{RI}]))', "{{node}} {{reason}}")),
        ]),
    ],
}

# --- (b) workloads and services --------------------------------------------------------------
WP = f'reporter="waypoint", {DEST}'
L4 = f'job="ztunnel", reporter="destination", node=~"$node", {DEST}'
BY_SVC = "destination_service"
BY_WL = "destination_workload_namespace, destination_workload"


def quantile(p):
    return q(f"histogram_quantile({p}, sum by (le, {BY_SVC}) "
             f"(rate(istio_request_duration_milliseconds_bucket{{{WP}}}[{RI}])))",
             f"p{round(p * 100)} {{{{{BY_SVC}}}}}")


WORKLOADS = {
    "uid": "mesh-workloads-and-services",
    "title": "Mesh / Workloads and services",
    "file": "workloads-and-services.json",
    "description": "HTTP at the waypoints (requests, success rate, latency) and TCP at the destination "
    "ztunnels (connections, bytes), by destination service and workload.",
    "variables": [NODE, NAMESPACE, WORKLOAD],
    "rows": [
        ("HTTP through waypoints", [
            panel("Requests /s", "reqps", "Requests the waypoints handled, by destination service.",
                  q(rate("istio_requests_total", WP, BY_SVC), f"{{{{{BY_SVC}}}}}")),
            panel("Success rate", "percentunit", "Share of requests not answered with a 5xx, by destination service.",
                  q(rate("istio_requests_total", WP + ', response_code!~"5.."', BY_SVC) + " / "
                    + rate("istio_requests_total", WP, BY_SVC), f"{{{{{BY_SVC}}}}}")),
            panel("Latency p50 / p90 / p99", "ms",
                  "Request duration at the waypoint (istio_request_duration_milliseconds), by destination service.",
                  quantile(0.5), quantile(0.9), quantile(0.99)),
            panel("Requests /s by response code", "reqps", "By destination service and response code.",
                  q(rate("istio_requests_total", WP, f"{BY_SVC}, response_code"),
                    f"{{{{{BY_SVC}}}}} {{{{response_code}}}}")),
            panel("Request and response bytes /s", "Bps", "HTTP body bytes through the waypoints, by destination service.",
                  q(rate("istio_request_bytes_sum", WP, BY_SVC), f"{{{{{BY_SVC}}}}} request"),
                  q(rate("istio_response_bytes_sum", WP, BY_SVC), f"{{{{{BY_SVC}}}}} response")),
        ]),
        ("TCP at the destination ztunnel (every service, L4-only ones included)", [
            panel("Connections opened /s", "cps", "Connections into each workload, counted by its node's ztunnel.",
                  q(rate("istio_tcp_connections_opened_total", L4, BY_WL),
                    "{{destination_workload_namespace}}/{{destination_workload}}")),
            panel("Active connections", "short", "Inbound connections open now, by workload.",
                  q('sum by (namespace, workload) (ztunnel_connections_active{job="ztunnel", direction="inbound", '
                    'node=~"$node", namespace=~"$namespace", workload=~"$workload"})', "{{namespace}}/{{workload}}")),
            panel("Bytes received /s", "Bps", "Bytes from clients into each workload.",
                  q(rate("istio_tcp_received_bytes_total", L4, BY_WL),
                    "{{destination_workload_namespace}}/{{destination_workload}}")),
            panel("Bytes sent /s", "Bps", "Bytes from each workload back to its clients.",
                  q(rate("istio_tcp_sent_bytes_total", L4, BY_WL),
                    "{{destination_workload_namespace}}/{{destination_workload}}")),
            panel("Connections by security policy", "cps",
                  "mutual_tls: through the mesh; none: plaintext (a client outside the mesh).",
                  q(rate("istio_tcp_connections_opened_total", L4, f"{BY_WL}, connection_security_policy"),
                    "{{destination_workload}} {{connection_security_policy}}")),
        ]),
    ],
}

# --- (c) control plane -----------------------------------------------------------------------
IS = 'job="istiod"'
PX = 'job=~"ztunnel|waypoint", node=~"$node"'


def push_quantile(p):
    return q(f"histogram_quantile({p}, sum by (le, type) "
             f"(rate(istiod_lite_xds_push_latency_seconds_bucket{{{IS}}}[{RI}])))",
             f"p{round(p * 100)} {{{{type}}}}")


CONTROL = {
    "uid": "mesh-control-plane",
    "title": "Mesh / Control plane",
    "file": "control-plane.json",
    "description": "istiod-lite: connected proxies, pushes, push latency, NACKs, CSRs, config errors; and the "
    "proxies' side of xDS.",
    "variables": [NODE],
    "rows": [
        ("xDS", [
            panel("Proxies connected", "short", "Delta ADS streams open to istiod-lite (ztunnels and waypoints).",
                  q(f"sum(istiod_lite_xds_connected_proxies{{{IS}}})", "connected"), kind="stat"),
            panel("Pushes /s by type", "ops", "Responses istiod-lite pushed, by resource type.",
                  q(rate("istiod_lite_xds_pushes_total", IS, "type"), "{{type}}")),
            panel("Push latency p50 / p99", "s", "From a config change to the push, by resource type.",
                  push_quantile(0.5), push_quantile(0.99)),
            panel("NACKs by type", "short", "Pushes a proxy rejected in the window (0 is healthy).",
                  q(f"sum by (type) (increase(istiod_lite_xds_nacks_total{{{IS}}}[{RI}])) "
                    f"or sum(istiod_lite_xds_connected_proxies{{{IS}}}) * 0", "{{type}}")),
            panel("Resources by type", "short", "Resources in istiod-lite's current snapshot.",
                  q(f"sum by (type) (istiod_lite_xds_resources{{{IS}}})", "{{type}}")),
        ]),
        ("Certificates and config", [
            panel("CSRs /s by result and reason", "ops", "Certificate signing requests signed and refused.",
                  q(rate("istiod_lite_csr_total", IS, "result, reason"), "{{result}} {{reason}}")),
            panel("Config errors", "short", "Objects currently invalid and ignored, by kind (0 is healthy).",
                  q(f"sum by (kind) (istiod_lite_config_errors{{{IS}}}) "
                    f"or sum(istiod_lite_xds_connected_proxies{{{IS}}}) * 0", "{{kind}}")),
            panel("Config updates /s", "ops", "Snapshots built from config changes.",
                  q(f"sum(rate(istiod_lite_config_updates_total{{{IS}}}[{RI}]))", "updates")),
        ]),
        ("Proxies (ztunnels and waypoints)", [
            panel("xDS connected", "short", "1 while the proxy holds its stream, by job and node.",
                  q(f"max by (job, node, instance) (mesh_xds_connected{{{PX}}})", "{{job}} {{node}} {{instance}}")),
            panel("xDS apply latency p99", "s", "From a response received to applied, by proxy kind and type.",
                  q(f"histogram_quantile(0.99, sum by (le, job, type) (rate(mesh_xds_apply_seconds_bucket{{{PX}}}"
                    f"[{RI}])))", "{{job}} {{type}}")),
            panel("xDS reconnects", "short", "Stream re-establishments in the window, by proxy.",
                  q(f"sum by (job, node, instance) (increase(mesh_xds_reconnects_total{{{PX}}}[{RI}]))",
                    "{{job}} {{node}} {{instance}}")),
        ]),
        ("istiod-lite process", [
            panel("CPU", "percentunit", "istiod-lite's CPU time per second (1 = one core).",
                  q(f"sum(rate(process_cpu_seconds_total{{{IS}}}[{RI}]))", "cpu")),
            panel("Memory (resident)", "bytes", "istiod-lite's resident memory.",
                  q(f"sum(process_resident_memory_bytes{{{IS}}})", "resident")),
        ]),
    ],
}


# --- rendering -------------------------------------------------------------------------------
def render(d):
    panels, y, next_id = [], 0, 1
    for row_title, row_panels in d["rows"]:
        panels.append({"type": "row", "id": next_id, "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        for i, p in enumerate(row_panels):
            w = 12
            panels.append({
                "type": p["kind"],
                "id": next_id,
                "title": p["title"],
                "description": p["description"],
                "datasource": DS,
                "gridPos": {"h": 8, "w": w, "x": (i % 2) * w, "y": y + (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
                "options": ({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                             "tooltip": {"mode": "multi", "sort": "desc"}}
                            if p["kind"] == "timeseries" else
                            {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                             "colorMode": "value", "graphMode": "area"}),
                "targets": [{"datasource": DS, "refId": chr(ord("A") + j), "expr": t["expr"],
                             "legendFormat": t["legend"], "range": True}
                            for j, t in enumerate(p["queries"])],
            })
            next_id += 1
        y += ((len(row_panels) + 1) // 2) * 8
    datasource = {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {"selected": True, "text": "Prometheus", "value": "${DS_PROMETHEUS}"},
        "refresh": 1, "regex": "", "hide": 0,
    }
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "uid": d["uid"],
        "title": d["title"],
        "description": d["description"],
        "tags": ["mesh", "ambient"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [datasource] + d["variables"]},
        "panels": panels,
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for d in (ZTUNNEL, WORKLOADS, CONTROL):
        text = json.dumps(render(d), indent=2) + "\n"
        path = os.path.join(OUT, d["file"])
        if check:
            try:
                with open(path) as f:
                    if f.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
        else:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    for path in stale:
        print(f"STALE {os.path.relpath(path)}: run scripts/dashboards.py and commit the result")
    if check:
        print(f"dashboards: {3 - len(stale)} of 3 up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
