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
.venv/bin/python - "$rendered" "$root/crds" <<'PY'
import glob, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
want = ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "CustomResourceDefinition", "Deployment", "Service", "ServiceAccount"]
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
print(f"chart: {len(docs)} objects render and parse; CRDs match crds/")
PY
if "$helm" template tw "$chart" --set replicas=5 >/dev/null 2>&1; then
  echo "values.schema.json accepted replicas=5" >&2
  exit 1
fi
if "$helm" template tw "$chart" --set coordinatorAddress=magic >/dev/null 2>&1; then
  echo "values.schema.json accepted coordinatorAddress=magic" >&2
  exit 1
fi
echo "chart: lint clean, bad values refused"
