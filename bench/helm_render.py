"""The helm-python-sdk side of the `helm` benchmark area (bench/src/helm.rs):
render CHART_DIR N times in this one process with Helm's engine, as
`helm template` would, with the same release name, namespace and (default)
values as Convoy's render worker. Prints JSON: per-iteration milliseconds of
`Chart.load` + `Chart.render` ("loadRender") and of `render` of a loaded
chart ("render"), and the number of objects of one render ("objects":
YAML documents with a kind, test hooks and NOTES.txt excluded, as in ours).
"""
import json
import sys
import time

import yaml
from helm_python import Chart

chart_dir, n = sys.argv[1], int(sys.argv[2])
opts = {"name": "ingress-nginx", "namespace": "ingress"}


def objects(rendered):
    count = 0
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or "kind" not in doc:
                continue
            hook = (doc.get("metadata") or {}).get("annotations", {}) or {}
            if "test" in str(hook.get("helm.sh/hook", "")).split(","):
                continue
            count += 1
    return count


with Chart.load(chart_dir) as c:
    first = c.render({}, **opts)  # warm-up, as the worker side has one
load_render, render = [], []
for _ in range(n):
    t0 = time.perf_counter()
    with Chart.load(chart_dir) as c:
        c.render({}, **opts)
    load_render.append((time.perf_counter() - t0) * 1e3)
with Chart.load(chart_dir) as c:
    for _ in range(n):
        t0 = time.perf_counter()
        c.render({}, **opts)
        render.append((time.perf_counter() - t0) * 1e3)
json.dump({"loadRender": load_render, "render": render, "objects": objects(first)}, sys.stdout)
