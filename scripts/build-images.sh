#!/usr/bin/env bash
# Builds the images the chart names, ghcr.io/tidewater/runtime:<version> and
# ghcr.io/tidewater/operator:<version>, with podman, from the release binaries on an empty
# base (images/*.Containerfile): each binary, the shared libraries `ldd` lists, CA
# certificates, /etc/passwd and /etc/group with the non-root user 65532. No registry is
# needed. <version> is the workspace's (Cargo.toml), which is also the chart's appVersion.
# Prints each image's name and size.
#   --debug: from the debug binaries instead (tagged <version>-debug, never the chart's tag):
#   the same recipe in a minute, for the test command, which has those binaries already.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/env.sh
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/images/containers.conf}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
registry="${TIDEWATER_IMAGE_REGISTRY:-ghcr.io/tidewater}"
profile=release
suffix=""
if [ "${1:-}" = "--debug" ]; then
  profile=debug
  suffix="-debug"
  cargo build -p tidewater-runtime -p tidewater-operator >&2
else
  cargo build --release -p tidewater-runtime -p tidewater-operator >&2
fi
for pair in runtime:tidewater operator:tidewater-operator; do
  name=${pair%%:*}
  binary=${pair#*:}
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  fs="$ctx/rootfs"
  mkdir -p "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/tmp"
  chmod 1777 "$fs/tmp"
  # Debug info off (the release profile keeps line tables: 340 → 65 MiB); symbols stay, so a
  # panic's backtrace still names functions.
  strip --strip-debug -o "$fs/usr/local/bin/$binary" "$CARGO_TARGET_DIR/$profile/$binary"
  # The dynamic loader and every library the binary links (glibc, libgcc_s, OpenSSL, zlib).
  for lib in $(ldd "$fs/usr/local/bin/$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    cp --parents -L "$lib" "$fs/"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "$fs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$fs/etc/group"
  cp "images/$name.Containerfile" "$ctx/Containerfile"
  image="$registry/$name:$version$suffix"
  podman build --quiet --layers=false -t "$image" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
  size=$(podman image inspect --format '{{.Size}}' "$image")
  echo "$image $((size / 1024 / 1024)) MiB"
done
