#!/usr/bin/env bash
# Installs every Debian package lazypull's tests, demo and benchmarks need. Idempotent: apt-get is
# only called when a package is missing, so `make install` is quick on a machine that has them.
set -euo pipefail
packages=(
  python3 python3-venv python3-dev gcc libc6-dev make git ca-certificates  # libc6-dev: gcc -static probes
  docker-registry apache2-utils openssl          # registry, htpasswd, test CA
  runc containerd stargz-snapshotter skopeo      # runtime and interoperability peers
  podman buildah                                 # additional layer store clients (tests/podman)
  golang-go golang-github-klauspost-compress-dev golang-github-cespare-xxhash-dev
  golang-github-opencontainers-go-digest-dev golang-github-vbatts-tar-split-dev
  golang-golang-x-sync-dev                       # the Go oracle (GOPATH mode)
  busybox-static debootstrap iproute2 zstd kmod util-linux
  systemd                                        # systemd-analyze verify of contrib/systemd (no running systemd)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian registry package starts a system service on port 5000; lazypull's tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true
