#!/usr/bin/env bash
# Put Debian's Prometheus server at DEST, for the tests that read engine metrics through
# a real Prometheus (tests/k8s/test_prometheus_signals_k8s.py). Usage: prometheus.sh DEST
#
# The package is downloaded, not installed: no service, no user, no files outside the
# cache. The binary is kept as ~/.cache/aiplane/bin/prometheus-<Debian version> and
# DEST is a link to it, so a second run only (re)links. PROMETHEUS_VERSION pins a
# version; by default it is the candidate apt knows (after an `apt-get update`, as root,
# if it knows none).
set -euo pipefail
dest="${1:?usage: prometheus.sh DEST}"
cache="${AIPLANE_CACHE:-$HOME/.cache/aiplane}/bin"
candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }
version="${PROMETHEUS_VERSION:-$(candidate)}"
if { [ -z "$version" ] || [ "$version" = "(none)" ]; } && [ "$(id -u)" = 0 ]; then
  echo "prometheus.sh: apt knows no prometheus package yet: apt-get update (once)"
  apt-get update -q >/dev/null
  version="$(candidate)"
fi
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  echo "prometheus.sh: apt knows no prometheus package (run apt-get update, or set PROMETHEUS_VERSION)" >&2
  exit 1
fi
binary="$cache/prometheus-$version"

link() {
  mkdir -p "$(dirname "$dest")"
  ln -sf "$binary" "$dest"
}

if [ -x "$binary" ]; then
  echo "prometheus (Debian $version): cached in $cache"
  link
  exit 0
fi
echo "prometheus (Debian $version): downloading the package (once)"
mkdir -p "$cache"
work="$(mktemp -d "$cache/.prometheus-XXXXXX")"
trap 'rm -rf "$work"' EXIT
# As root, apt warns that its _apt sandbox user cannot write here; the download works.
(cd "$work" && apt-get download -q "prometheus=$version")
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
"$work/root/usr/bin/prometheus" --version
# Atomic: a download cut short never leaves a half-written binary in the cache.
cp "$work/root/usr/bin/prometheus" "$binary.tmp"
mv "$binary.tmp" "$binary"
link
