#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 from binaries already on this machine
# (etcd, kube-apiserver, kube-controller-manager, optionally kube-scheduler), for the
# Kubernetes e2e walk. This script only STARTS them: it neither fetches nor builds them.
#
#   bash scripts/control-plane.sh start DIR   # certificates, kubeconfig, PIDs under DIR
#   bash scripts/control-plane.sh stop DIR    # stops what `start` started, by PID
#   bash scripts/control-plane.sh restart-apiserver DIR
#   bash scripts/control-plane.sh find        # exit 0 when the binaries are present
#
# Binaries are looked up in $KUBE_BIN_DIR, then on PATH. `start` prints the kubeconfig path;
# every server listens on 127.0.0.1 only, over https with client certificates (etcd on
# plain http, loopback).
set -euo pipefail
cmd=${1:?usage: control-plane.sh start|stop|restart-apiserver|find [DIR]}
dir=${2:-}

find_bin() {
  if [ -n "${KUBE_BIN_DIR:-}" ] && [ -x "$KUBE_BIN_DIR/$1" ]; then
    echo "$KUBE_BIN_DIR/$1"
  else
    command -v "$1" 2>/dev/null || return 1
  fi
}

missing() {
  local m=()
  for b in etcd kube-apiserver kube-controller-manager; do
    find_bin "$b" >/dev/null || m+=("$b")
  done
  echo "${m[*]}"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # URL WHAT
  for _ in $(seq 1 120); do
    if curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
      "$1" >/dev/null 2>&1 || curl -sf "$1" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "control-plane: $2 not ready after 60 s; log: $dir/$2.log" >&2
  tail -20 "$dir/$2.log" >&2
  return 1
}

certs() {
  local p="$dir/pki"
  mkdir -p "$p"
  [ -f "$p/admin.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tidewater-e2e-ca \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  sign() { # NAME SUBJECT [SAN]
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
    # X.509 v3 with usages (rustls, which kube-rs uses, refuses v1 certificates).
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >"$p/$1.ext"
    if [ -n "${3:-}" ]; then
      printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >>"$p/$1.ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >>"$p/$1.ext"
    fi
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 2 -extfile "$p/$1.ext" -out "$p/$1.crt" 2>/dev/null
  }
  sign apiserver /CN=kube-apiserver "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.96.0.1"
  sign admin "/O=system:masters/CN=tidewater-e2e-admin"
  sign controller-manager /CN=system:kube-controller-manager
  sign scheduler /CN=system:kube-scheduler
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

kubeconfig() { # USER FILE
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$(cat "$dir/apiserver.port")", certificate-authority: "$dir/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$dir/pki/$1.crt", client-key: "$dir/pki/$1.key"}
contexts:
- name: local
  context: {cluster: local, user: $1, namespace: default}
current-context: local
EOF
}

start_apiserver() {
  local port
  port=$(cat "$dir/apiserver.port")
  # The binary `start` found (a restart may run without KUBE_BIN_DIR).
  [ -s "$dir/kube-apiserver.bin" ] || find_bin kube-apiserver >"$dir/kube-apiserver.bin"
  "$(cat "$dir/kube-apiserver.bin")" \
    --etcd-servers="http://127.0.0.1:$(cat "$dir/etcd.port")" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC \
    >>"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  wait_ready "https://127.0.0.1:$port/readyz" kube-apiserver
}

stop_pid() { # NAME
  local f="$dir/$1.pid"
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "$cmd" in
  find)
    m=$(missing)
    if [ -n "$m" ]; then echo "not found (KUBE_BIN_DIR or PATH): $m"; exit 1; fi
    echo "found: $(find_bin kube-apiserver)"
    ;;
  start)
    [ -n "$dir" ] || { echo "usage: control-plane.sh start DIR" >&2; exit 2; }
    m=$(missing)
    [ -z "$m" ] || { echo "control-plane: not found (KUBE_BIN_DIR or PATH): $m" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    certs
    free_port >"$dir/etcd.port"
    free_port >"$dir/apiserver.port"
    "$(find_bin etcd)" --data-dir "$dir/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$(cat "$dir/etcd.port")" \
      --listen-peer-urls "http://127.0.0.1:$(free_port)" >>"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    wait_ready "http://127.0.0.1:$(cat "$dir/etcd.port")/health" etcd
    start_apiserver
    kubeconfig admin "$dir/kubeconfig"
    kubeconfig controller-manager "$dir/controller-manager.kubeconfig"
    kubeconfig scheduler "$dir/scheduler.kubeconfig"
    "$(find_bin kube-controller-manager)" \
      --kubeconfig="$dir/controller-manager.kubeconfig" \
      --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
      --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
      --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
      --use-service-account-credentials=true \
      --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller' \
      >>"$dir/kube-controller-manager.log" 2>&1 &
    echo $! >"$dir/kube-controller-manager.pid"
    if find_bin kube-scheduler >/dev/null; then
      "$(find_bin kube-scheduler)" --kubeconfig="$dir/scheduler.kubeconfig" \
        --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
        --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
        >>"$dir/kube-scheduler.log" 2>&1 &
      echo $! >"$dir/kube-scheduler.pid"
    fi
    echo "$dir/kubeconfig"
    ;;
  restart-apiserver)
    [ -n "$dir" ] && [ -f "$dir/apiserver.port" ] || { echo "usage: control-plane.sh restart-apiserver DIR (of a started control plane)" >&2; exit 2; }
    stop_pid kube-apiserver
    start_apiserver
    ;;
  stop)
    [ -n "$dir" ] || { echo "usage: control-plane.sh stop DIR" >&2; exit 2; }
    for n in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$n"; done
    ;;
  *) echo "usage: control-plane.sh start|stop|restart-apiserver|find [DIR]" >&2; exit 2 ;;
esac
