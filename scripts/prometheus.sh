#!/usr/bin/env bash
# Put Debian's Prometheus server at DEST and its promtool beside it ($(dirname DEST)/promtool),
# for the tests that read engine metrics through a real Prometheus
# (tests/k8s/test_prometheus_signals_k8s.py) and the ones that check the generated alert
# and recording rules (promtool check/test rules). Usage: prometheus.sh DEST
#
# The package is downloaded, not installed: no service, no user, no files outside the
# cache. The binaries are kept as ~/.cache/aiplane/bin/prometheus-<Debian version> and
# promtool-<Debian version>, and DEST and the promtool beside it are links to them, so a
# second run only (re)links; the package is downloaded again only when one is missing.
# PROMETHEUS_VERSION pins a version; by default it is the candidate apt knows (after an
# `apt-get update`, as root, if it knows none).
set -euo pipefail
dest="${1:?usage: prometheus.sh DEST}"
tool_dest="$(dirname "$dest")/promtool"
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
tool="$cache/promtool-$version"

link() {
  mkdir -p "$(dirname "$dest")"
  ln -sf "$binary" "$dest"
  ln -sf "$tool" "$tool_dest"
}

if [ -x "$binary" ] && [ -x "$tool" ]; then
  echo "prometheus and promtool (Debian $version): cached in $cache"
  link
  exit 0
fi
echo "prometheus and promtool (Debian $version): downloading the package (once)"
mkdir -p "$cache"
work="$(mktemp -d "$cache/.prometheus-XXXXXX")"
trap 'rm -rf "$work"' EXIT
# As root, apt warns that its _apt sandbox user cannot write here; the download works.
(cd "$work" && apt-get download -q "prometheus=$version")
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
"$work/root/usr/bin/prometheus" --version
"$work/root/usr/bin/promtool" --version
# Atomic: a download cut short never leaves a half-written binary in the cache. A binary
# already cached stays as it is (a running test may be executing it).
for name in prometheus promtool; do
  target="$cache/$name-$version"
  if [ ! -x "$target" ]; then
    cp "$work/root/usr/bin/$name" "$target.tmp"
    mv "$target.tmp" "$target"
  fi
done
link
