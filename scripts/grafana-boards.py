#!/usr/bin/env python3
"""Writes the Grafana dashboards in deploy/grafana/ (run it after changing a panel here; the
JSON files are what operators import, and tests/e2e/monitoring.rs checks every metric they name
against what the relay and agent export)."""
import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, desc=""):
    targets = [
        {"refId": chr(ord("A") + i), "expr": e, "legendFormat": l, "datasource": DS}
        for i, (e, l) in enumerate(exprs)
    ]
    return {"type": kind, "title": title, "description": desc, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {}, "_w": w, "_h": h}


def board(uid, title, description, rows, extra_vars=()):
    panels, y, pid = [], 0, 1
    for row_title, row in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid += 1
        y += 1
        x, row_h = 0, 0
        for p in row:
            w, h = p.pop("_w"), p.pop("_h")
            if x + w > 24:
                x, y = 0, y + row_h
                row_h = 0
            p["id"] = pid
            pid += 1
            p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
            panels.append(p)
            x += w
            row_h = max(row_h, h)
        y += row_h
    variables = [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                  "query": "prometheus", "current": {}, "hide": 0}]
    variables += list(extra_vars)
    return {
        "__inputs": [], "uid": uid, "title": title, "description": description,
        "tags": ["nowconnect"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": []}, "panels": panels,
    }


def query_var(name, label, metric, lbl):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": f"label_values({metric}, {lbl})", "refId": name},
            "definition": f"label_values({metric}, {lbl})", "includeAll": True, "multi": True,
            "allValue": ".*", "current": {}, "refresh": 2, "hide": 0}


I = 'instance=~"$instance"'
relay = board(
    "nowconnect-relay", "NowConnect relay",
    "Client connections, bytes, FIN/RST, queue overflows, PDP, agent tunnels, authentication and "
    "the portal of NowConnect relays (metric catalog: docs/metrics.md).",
    [
        ("Clients", [
            panel("Client connections accepted /s", [
                (f'sum by (connector) (rate(nowconnect_tcp_connections_total{{{I}}}[5m]))', "{{connector}}")], "ops", w=8),
            panel("Client connections open", [
                (f'sum by (connector) (nowconnect_tcp_active_connections{{{I}}})', "{{connector}}")], w=8),
            panel("Connection duration", [
                (f'histogram_quantile(0.5, sum by (le) (rate(nowconnect_connection_duration_seconds_bucket{{{I}}}[5m])))', "p50"),
                (f'histogram_quantile(0.99, sum by (le) (rate(nowconnect_connection_duration_seconds_bucket{{{I}}}[5m])))', "p99")], "s", w=8),
            panel("Bytes/s by connector and direction (c2p: client to agent, p2c: agent to client)", [
                (f'sum by (connector, direction) (rate(nowconnect_tcp_bytes_total{{{I}}}[5m]))', "{{connector}} {{direction}}")], "Bps", w=16),
            panel("Clients refused before any byte", [
                (f'sum by (reason) (rate(nowconnect_connections_rejected_total{{{I}}}[5m]))', "{{reason}}")], "ops", w=8),
        ]),
        ("Streams", [
            panel("FIN /s", [
                (f'sum(rate(nowconnect_fin_sent{{{I}}}[5m]))', "sent"),
                (f'sum(rate(nowconnect_fin_recv{{{I}}}[5m]))', "received")], "ops", w=8),
            panel("RST /s", [
                (f'sum(rate(nowconnect_rst_sent{{{I}}}[5m]))', "sent"),
                (f'sum(rate(nowconnect_rst_recv{{{I}}}[5m]))', "received")], "ops", w=8),
            panel("Queue overflows (streams reset)", [
                (f'sum by (connector, side) (increase(nowconnect_queue_overflow_total{{{I}}}[5m]))', "{{connector}} {{side}}")], w=8),
            panel("Bytes held by the relay", [
                (f'sum by (dir) (nowconnect_buffered_bytes{{{I}}})', "{{dir}}")], "bytes", w=12),
            panel("Listener accept errors", [
                (f'sum by (connector) (increase(nowconnect_listener_accept_errors_total{{{I}}}[5m]))', "{{connector}}")], w=12),
        ]),
        ("Policy decisions", [
            panel("PDP decisions /s", [
                (f'sum(rate(nowconnect_pdp_allow_total{{{I}}}[5m]))', "allow"),
                (f'sum(rate(nowconnect_pdp_deny_total{{{I}}}[5m]))', "deny"),
                (f'sum(rate(nowconnect_pdp_errors_total{{{I}}}[5m]))', "error")], "ops", w=12),
            panel("Policies in force", [
                (f'max by (policy) (nowconnect_policy_enabled{{{I}}})', "{{policy}}")], w=12),
        ]),
        ("Agent tunnels", [
            panel("Agents connected", [
                (f'sum(nowconnect_agents_connected{{{I}}})', "tunnels")], w=6),
            panel("Agents per connector (0: its clients are refused)", [
                (f'max by (connector) (nowconnect_connector_agents{{{I}}})', "{{connector}}")], w=6),
            panel("Tunnel reconnects by agent and reason (15 min)", [
                (f'sum by (agent, reason) (increase(nowconnect_tunnel_reconnects_total{{{I}}}[15m]))', "{{agent}} {{reason}}")], w=6),
            panel("Tunnel uptime by agent", [
                (f'max by (agent) (nowconnect_tunnel_uptime_seconds{{{I}}})', "{{agent}}")], "s", w=6),
            panel("Tunnels ended by reason", [
                (f'sum by (reason) (increase(nowconnect_agent_disconnects_total{{{I}}}[15m]))', "{{reason}}")], w=12),
            panel("Relay ready (/readyz)", [
                (f'min by (instance) (nowconnect_relay_ready{{{I}}})', "{{instance}}")], w=12),
        ]),
        ("Authentication and portal", [
            panel("Agent authentication failures by reason", [
                (f'sum by (reason) (rate(nowconnect_agent_auth_failures_total{{{I}}}[5m]))', "{{reason}}")], "ops", w=8),
            panel("Portal authentication failures by reason", [
                (f'sum by (reason) (rate(nowconnect_portal_auth_failures_total{{{I}}}[5m]))', "{{reason}}")], "ops", w=8),
            panel("JWKS refreshes", [
                (f'sum by (result) (increase(nowconnect_jwks_refreshes_total{{{I}}}[1h]))', "{{result}}"),
                (f'max(nowconnect_jwks_keys{{{I}}})', "keys cached")], w=8),
            panel("Portal requests by route and status", [
                (f'sum by (route, status) (rate(nowconnect_portal_requests_total{{{I}}}[5m]))', "{{route}} {{status}}")], "reqps", w=12),
            panel("Audit", [
                (f'sum(rate(nowconnect_audit_records_total{{{I}}}[5m]))', "records/s"),
                (f'sum(increase(nowconnect_audit_write_errors_total{{{I}}}[5m]))', "write errors"),
                (f'sum(increase(nowconnect_ui_csp_reports_total{{{I}}}[5m]))', "dashboard CSP reports")], w=12),
        ]),
    ],
    [query_var("instance", "Relay", "nowconnect_agents_connected", "instance")],
)

A = 'instance=~"$agent"'
fleet = board(
    "nowconnect-agents", "NowConnect agent fleet",
    "Agents' own endpoints (NC_METRICS_PORT) and what the relays see of each agent's tunnel.",
    [
        ("Tunnels", [
            panel("Tunnel up", [(f'nowconnect_agent_tunnel_up{{{A}}}', "{{instance}}")], w=8),
            panel("Tunnel uptime", [(f'nowconnect_agent_tunnel_uptime_seconds{{{A}}}', "{{instance}}")], "s", w=8),
            panel("Reconnects by reason (1 h)", [
                (f'sum by (instance, reason) (increase(nowconnect_agent_reconnects_total{{{A}}}[1h]))', "{{instance}} {{reason}}")], w=8),
            panel("Token seconds to expiry", [(f'nowconnect_agent_token_expiry_seconds{{{A}}}', "{{instance}}")], "s", w=8),
            panel("Streams open", [(f'nowconnect_agent_streams_active{{{A}}}', "{{instance}}")], w=8),
            panel("Bytes/s (c2p: from clients, p2c: to clients)", [
                (f'sum by (instance, direction) (rate(nowconnect_agent_bytes_total{{{A}}}[5m]))', "{{instance}} {{direction}}")], "Bps", w=8),
            panel("Target connect failures by connector (15 min)", [
                (f'sum by (instance, connector) (increase(nowconnect_agent_target_connect_failures_total{{{A}}}[15m]))', "{{instance}} {{connector}}")], w=24),
        ]),
        ("Seen from the relays", [
            panel("Tunnel uptime by agent (relay side)", [
                ('max by (agent) (nowconnect_tunnel_uptime_seconds)', "{{agent}}")], "s", w=12),
            panel("Tunnel reconnects by agent and reason (relay side, 1 h)", [
                ('sum by (agent, reason) (increase(nowconnect_tunnel_reconnects_total[1h]))', "{{agent}} {{reason}}")], w=12),
        ]),
    ],
    [query_var("agent", "Agent endpoint", "nowconnect_agent_tunnel_up", "instance")],
)

for name, b in [("nowconnect-relay.json", relay), ("nowconnect-agents.json", fleet)]:
    (OUT / name).write_text(json.dumps(b, indent=2) + "\n")
    print("wrote", OUT / name)
