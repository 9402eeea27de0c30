#!/usr/bin/env bash
# The dependency boundaries of the architecture, from `cargo tree` (each package resolved on
# its own, as `cargo build -p` builds it): the operator never links the data path (Kafka,
# Arrow, Parquet, Iceberg), and the runtime never talks to the Kubernetes API (kube-client,
# kube-runtime). A positive control first shows the check finds a crate that is linked.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/env.sh

linked() { # PACKAGE → the crate names it links (normal dependencies)
  cargo tree -q -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u
}

status=0
runtime=$(linked tidewater-runtime)
operator=$(linked tidewater-operator)
# Positive control: a check that cannot fail proves nothing.
if ! grep -qx rdkafka <<<"$runtime"; then
  echo "check-deps: cargo tree output not understood (rdkafka not seen in tidewater-runtime)" >&2
  exit 1
fi
for crate in rdkafka rdkafka-sys arrow-array parquet iceberg; do
  if grep -qx "$crate" <<<"$operator"; then
    echo "check-deps: tidewater-operator links $crate (the operator must not link the data path):" >&2
    cargo tree -q -p tidewater-operator -e normal -i "$crate" | head -20 >&2
    status=1
  fi
done
for crate in kube-client kube-runtime; do
  if grep -qx "$crate" <<<"$runtime"; then
    echo "check-deps: tidewater-runtime links $crate (the runtime needs no Kubernetes API):" >&2
    cargo tree -q -p tidewater-runtime -e normal -i "$crate" | head -20 >&2
    status=1
  fi
done
[ $status = 0 ] && echo "dependency boundaries hold: operator without rdkafka/arrow/parquet/iceberg, runtime without kube-client/kube-runtime"
exit $status
