"""Lint and render charts/convoy-hub with Helm's own engine (helm-python-sdk),
printing one JSON object for the Rust test (hub/tests/chart.rs) to check."""
import json
import sys

import helm_python as helm

chart_dir = sys.argv[1]
agent_chart = sys.argv[2]
HA = {
    "mode": "ha",
    "replicas": 3,
    "ca": {"existingSecret": "hub-ca"},
    "signing": {"existingSecret": "hub-signing"},
    "adminToken": {"existingSecret": "hub-admin"},
    "store": {"etcd": {"endpoints": ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"], "tlsSecret": "etcd-client"}},
    "hub": {"serverNames": ["hub.example.com"], "extraConfig": {"events": {"retain": 5000}}},
    "fleet": {"documents": "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata: {name: fleet}\nspec: {url: https://git.example/fleet.git}\n"},
}
VARIANT = {
    "ingress": {"enabled": True, "className": "nginx", "host": "hooks.example.com"},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "persistence": {"enabled": False},
}
out = {"lint": {}, "render": {}, "schema_errors": {}, "fail": {}}
for label, values in [("single", None), ("ha", HA), ("variant", VARIANT)]:
    out["lint"][label] = helm.chart.lint(chart_dir, values, strict=True, namespace="convoy", kube_version="v1.32.0")
with helm.Chart.load(chart_dir) as chart:
    out["render"]["single"] = chart.render({}, name="convoy-hub", namespace="convoy", is_install=True)
    out["render"]["ha"] = chart.render(HA, name="convoy-hub", namespace="convoy", is_install=True)
    out["render"]["variant"] = chart.render(VARIANT, name="fleet", namespace="convoy", is_install=True)
    for label, bad in [
        ("mode", {"mode": "active-active"}),
        ("endpoint", {"store": {"etcd": {"endpoints": ["etcd:2379"]}}}),
        ("port", {"hub": {"grpcPort": 70000}}),
    ]:
        try:
            chart.validate_schema(chart.merge_values(bad))
            out["schema_errors"][label] = None
        except helm.HelmError as e:
            out["schema_errors"][label] = str(e)
    for label, values in [
        ("no_etcd", {**HA, "store": {"etcd": {"endpoints": []}}}),
        ("no_ca", {**HA, "ca": {"existingSecret": ""}}),
        ("no_signing", {**HA, "signing": {"existingSecret": ""}}),
    ]:
        try:
            chart.render(values, name="x", namespace="convoy")
            out["fail"][label] = None
        except helm.HelmError as e:
            out["fail"][label] = str(e)
with helm.Chart.load(agent_chart) as agent:
    merged = agent.merge_values({})
    out["agent_security"] = {"pod": merged["podSecurityContext"], "container": merged["securityContext"]}
with helm.Chart.load(chart_dir) as hub:
    merged = hub.merge_values({})
    out["hub_security"] = {"pod": merged["podSecurityContext"], "container": merged["securityContext"]}
print(json.dumps(out))
