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
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"; cargo nextest run --workspace
if [ -z "${KUBECONFIG:-}" ]; then
  echo "== kubernetes e2e: SKIPPED (KUBECONFIG is not set; see docs/operator.md, \"Kubernetes end-to-end suite\")"
else
  echo "== kubernetes e2e ran against $KUBECONFIG (e2e/tests/kubernetes.rs)"
fi
