"""Lint and render charts/convoy-agent with Helm's own engine (helm-python-sdk),
printing one JSON object for the Rust test (agent/tests/chart.rs) to check."""
import json
import sys

import helm_python as helm

chart_dir = sys.argv[1]
values = json.loads(sys.argv[2])
out = {}
out["lint"] = helm.chart.lint(chart_dir, values, strict=True, namespace="convoy-system", kube_version="v1.32.0")
out["lint_defaults"] = helm.chart.lint(chart_dir, None, namespace="convoy-system", kube_version="v1.32.0")
with helm.Chart.load(chart_dir) as chart:
    out["metadata"] = chart.metadata
    out["render"] = chart.render(values, name="convoy-agent", namespace="convoy-system", is_install=True)
    variant = json.loads(json.dumps(values))
    variant["bootstrap"] = {"token": "", "existingSecret": "my-token"}
    variant["trustedKeys"] = []
    variant["trustedKeysExistingConfigMap"] = "fleet-keys"
    variant["persistence"] = {"enabled": True, "size": "1Gi"}
    variant["metrics"] = {"port": 9191, "service": {"enabled": True, "type": "ClusterIP"}, "serviceMonitor": {"enabled": True, "interval": "15s"}}
    out["render_variant"] = chart.render(variant, name="edge", namespace="agents", is_install=True)
    restricted = json.loads(json.dumps(values))
    restricted["rbac"] = {"mode": "restricted", "extraRules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}
    out["lint_restricted"] = helm.chart.lint(chart_dir, restricted, strict=True, namespace="convoy-system", kube_version="v1.32.0")
    out["render_restricted"] = chart.render(restricted, name="convoy-agent", namespace="convoy-system", is_install=True)
    errors = {}
    for label, bad in [
        ("drift", {"agent": {"driftMode": "sometimes"}}),
        ("address", {"hub": {"address": "http://plaintext:8443"}}),
        ("concurrency", {"agent": {"concurrency": 0}}),
        ("rbac_mode", {"rbac": {"mode": "admin"}}),
    ]:
        merged = json.loads(json.dumps(values))
        for k, v in bad.items():
            merged[k] = {**merged.get(k, {}), **v}
        try:
            chart.validate_schema(chart.merge_values(merged))
            errors[label] = None
        except helm.HelmError as e:
            errors[label] = str(e)
    out["schema_errors"] = errors
    try:
        missing = json.loads(json.dumps(values))
        missing["trustedKeys"] = []
        chart.render(missing, name="x", namespace="convoy-system")
        out["missing_keys_error"] = None
    except helm.HelmError as e:
        out["missing_keys_error"] = str(e)
print(json.dumps(out))
