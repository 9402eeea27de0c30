#!/usr/bin/env bash
# The Helm chart with the real Helm engine: lint, render, parse every rendered object, compare
# the chart's CRDs with the generated ones, and check that values.schema.json refuses bad values.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
helm="$root/bin/helm"
chart="$root/charts/tidewater"
"$helm" lint --strict "$chart"
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
"$helm" template tw "$chart" --namespace tidewater-system --include-crds > "$rendered"
.venv/bin/python - "$rendered" "$root/crds" "$chart/Chart.yaml" "$root/Cargo.toml" <<'PY'
import glob, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
want = ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "CustomResourceDefinition", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
assert kinds == want, f"rendered kinds {kinds}, expected {want}"
generated = {}
for f in glob.glob(f"{sys.argv[2]}/*.yaml"):
    for d in yaml.safe_load_all(open(f)):
        if d:
            generated[d["metadata"]["name"]] = d
crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
assert crds == generated, "chart CRDs differ from crds/*.yaml: run scripts/gen-crds.sh"
dep = next(d for d in docs if d["kind"] == "Deployment")
c = dep["spec"]["template"]["spec"]["containers"][0]
assert c["securityContext"]["readOnlyRootFilesystem"] is True
assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]
env = {e["name"]: e for e in c["env"]}
assert env["TIDEWATER_LEADER_ELECT"]["value"] == "true" and "POD_NAMESPACE" in env
# One version: the workspace's is the chart's appVersion and both images' tag.
version = re.search(r'^version = "(.*)"$', open(sys.argv[4]).read(), re.M).group(1)
assert yaml.safe_load(open(sys.argv[3]))["appVersion"] == version, "Chart.yaml appVersion != Cargo.toml version"
assert c["image"] == f"ghcr.io/tidewater/operator:{version}", c["image"]
assert env["TIDEWATER_RUNTIME_IMAGE"]["value"] == f"ghcr.io/tidewater/runtime:{version}"
role = next(d for d in docs if d["kind"] == "Role")
assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
print(f"chart: {len(docs)} objects render and parse; CRDs match crds/")
PY
# Monitoring on: PodMonitors, the PrometheusRule (exactly the rules file promtool tests) and
# the dashboard ConfigMap (JSON whose every panel has a query).
"$helm" template tw "$chart" --namespace tidewater-system --set monitoring.podMonitors.enabled=true \
  --set monitoring.prometheusRule.enabled=true --set monitoring.grafanaDashboard.enabled=true > "$rendered"
.venv/bin/python - "$rendered" "$chart" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
assert len(by_kind.get("PodMonitor", [])) == 2, sorted(by_kind)
rule = by_kind["PrometheusRule"][0]
assert rule["spec"] == yaml.safe_load(open(f"{sys.argv[2]}/files/prometheus-rules.yaml")), "PrometheusRule differs from files/prometheus-rules.yaml"
cm = by_kind["ConfigMap"][0]
assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
dash = json.loads(cm["data"]["tidewater.json"])
assert dash == json.load(open(f"{sys.argv[2]}/files/grafana-dashboard.json"))
assert dash["panels"] and all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dash["panels"])
print(f"chart: monitoring renders {len(rule['spec']['groups'])} rule groups, {len(dash['panels'])} dashboard panels")
PY
# HA: two replicas get a PodDisruptionBudget; a NetworkPolicy when asked.
"$helm" template tw "$chart" --set replicas=2 --set networkPolicy.enabled=true > "$rendered"
.venv/bin/python - "$rendered" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = [d["kind"] for d in docs]
assert "PodDisruptionBudget" in kinds and "NetworkPolicy" in kinds, kinds
dep = next(d for d in docs if d["kind"] == "Deployment")
assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
print("chart: 2 replicas render with a PodDisruptionBudget and a NetworkPolicy")
PY
# OpenTelemetry on: the operator exports and tells the pods it renders where to.
"$helm" template tw "$chart" --set openTelemetry.endpoint=http://otel-collector.monitoring:4317 \
  --set logFormat=json > "$rendered"
.venv/bin/python - "$rendered" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
env = [e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]]
values = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "TIDEWATER_PODS_OTLP_ENDPOINT"]:
    assert values[name] == "http://otel-collector.monitoring:4317", values
assert values["TIDEWATER_PODS_OTLP_PROTOCOL"] == "grpc" and values["TIDEWATER_LOG_FORMAT"] == "json"
# $(POD_NAME) expands only when defined earlier in the list.
assert env.index("POD_NAME") < env.index("OTEL_RESOURCE_ATTRIBUTES"), env
print("chart: OpenTelemetry values reach the operator and, through it, the pods")
PY
if "$helm" template tw "$chart" --set openTelemetry.protocol=http/json >/dev/null 2>&1; then
  echo "values.schema.json accepted openTelemetry.protocol=http/json" >&2
  exit 1
fi
if "$helm" template tw "$chart" --set replicas=11 >/dev/null 2>&1; then
  echo "values.schema.json accepted replicas=11" >&2
  exit 1
fi
if "$helm" template tw "$chart" --set replicas=2 --set leaderElection.enabled=false >/dev/null 2>&1; then
  echo "values.schema.json accepted 2 replicas without leader election" >&2
  exit 1
fi
if "$helm" template tw "$chart" --set coordinatorAddress=magic >/dev/null 2>&1; then
  echo "values.schema.json accepted coordinatorAddress=magic" >&2
  exit 1
fi
echo "chart: lint clean, bad values refused"
