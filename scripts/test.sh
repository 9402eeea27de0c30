#!/usr/bin/env bash
# The test command: installs what the tests need, then checks formatting, generated CRDs,
# lints, and runs every test (unit, integration, end-to-end against real components).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
. scripts/env.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
echo "== fmt"; cargo fmt --all -- --check
echo "== build"; cargo build --workspace --all-targets
echo "== generated CRDs"; bash scripts/gen-crds.sh --check
echo "== helm chart"; bash scripts/check-chart.sh
echo "== argo cd health checks"; bash scripts/gen-argocd.sh --check
echo "== alert rules"; promtool check rules charts/tidewater/files/prometheus-rules.yaml
(cd e2e/prometheus; promtool test rules alerts_test.yaml)
echo "== dependency boundaries"; bash scripts/check-deps.sh
echo "== file length"; bash scripts/check-length.sh
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
# The images the chart names, built by the same recipe from the debug binaries just built
# (tagged <version>-debug; a release build would add ~15 minutes): e2e/tests/images.rs runs them.
echo "== container images"; bash scripts/build-images.sh --debug
echo "== tests"; TIDEWATER_IMAGE_SUFFIX=-debug cargo nextest run --workspace
# The Kubernetes walk needs a real API server: the one KUBECONFIG names, or a control plane
# started here from binaries found on this machine (scripts/control-plane.sh; none is
# installed by setup.sh because no package registry ships kube-apiserver).
if [ -n "${KUBECONFIG:-}" ]; then
  echo "== kubernetes e2e against $KUBECONFIG"
  cargo nextest run -p tidewater-e2e --test kubernetes --test operator_ha --no-capture
elif ! command -v kubectl >/dev/null 2>&1; then
  echo "== kubernetes e2e: SKIPPED (kubectl is not on PATH; see docs/operator.md, \"Kubernetes end-to-end suite\")"
elif ! found=$(bash scripts/control-plane.sh find); then
  echo "== kubernetes e2e: SKIPPED (KUBECONFIG is not set and control-plane binaries are $found; see docs/operator.md, \"Kubernetes end-to-end suite\")"
else
  cp_dir=$(mktemp -d /tmp/tidewater-cp.XXXXXX)
  trap 'bash scripts/control-plane.sh stop "$cp_dir"' EXIT
  echo "== kubernetes e2e on a local control plane ($found; $cp_dir)"
  kubeconfig=$(bash scripts/control-plane.sh start "$cp_dir")
  KUBECONFIG=$kubeconfig TIDEWATER_E2E_CONTROL_PLANE=$cp_dir \
    cargo nextest run -p tidewater-e2e --test kubernetes --test operator_ha --no-capture
fi
