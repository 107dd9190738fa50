#!/usr/bin/env bash
# Builds the Go interoperability oracle (tests/oracle/main.go) against Debian's packaged
# stargz-snapshotter estargz library (v0.12) in GOPATH mode: no Go module proxy is needed.
# The package source is fetched with `apt-get download` into the build folder (never committed).
# Idempotent: does nothing when the binary is newer than main.go. Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${ORACLE_BUILD_DIR:-$repo/build/oracle}"
bin="$out/oracle"
pkg=golang-github-containerd-stargz-snapshotter-dev
mkdir -p "$out"
if [[ -x "$bin" && "$bin" -nt "$here/main.go" && "$bin" -nt "$here/build.sh" ]]; then
  echo "$bin"
  exit 0
fi
gopath_pkg="$out/pkg/usr/share/gocode"
if [[ ! -d "$gopath_pkg/src/github.com/containerd/stargz-snapshotter/estargz" ]]; then
  rm -rf "$out/pkg" "$out"/*.deb
  # apt-get download writes into the current directory; _apt cannot write there, which only warns.
  # On a machine whose package lists were never fetched, refresh them once and retry.
  (cd "$out" && { apt-get download -q "$pkg" || { apt-get update -qq && apt-get download -q "$pkg"; }; } >&2)
  dpkg-deb -x "$out"/${pkg}_*.deb "$out/pkg"
fi
# GOPATH mode wants the program inside a GOPATH src tree.
src="$out/gopath/src/lazypull-oracle"
mkdir -p "$src"
cp "$here/main.go" "$src/main.go"
export GO111MODULE=off GOFLAGS=-mod=mod GOCACHE="$out/gocache"
export GOPATH="$out/gopath:$gopath_pkg:/usr/share/gocode"
unset GOFLAGS
(cd "$src" && go build -o "$bin.tmp" .) >&2
mv "$bin.tmp" "$bin"
echo "$bin"
