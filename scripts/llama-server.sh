#!/usr/bin/env bash
# Build llama.cpp's own llama-server once, from the llama.cpp source that the
# llama-cpp-python sdist vendors (the same version as the wheel), and keep it under
# ~/.cache/aiplane/bin. Usage: llama-server.sh PYTHON DEST  (DEST: where to link it)
#
# GGML_NATIVE=OFF: a native build on these virtual CPUs uses instructions they
# advertise but trap on. No OpenSSL, no web UI and no prebuilt UI download: the
# server is only ever an upstream on loopback, and nothing is fetched at build time.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
py="${1:-python3}"
dest="${2:-}"
cache="${AIPLANE_CACHE:-$HOME/.cache/aiplane}/bin"
# Fixes carried until llama.cpp has them (each patch says what and why); the cached
# binary is keyed by them, so changing a patch rebuilds it.
patches="$(cd "$(dirname "$0")" && pwd)/llama-server-patches"
patched="$(cat "$patches"/*.patch | sha256sum | cut -c1-8)"
binary="$cache/llama-server-$version-$patched"

link() {
  if [ -n "$dest" ]; then
    mkdir -p "$(dirname "$dest")"
    ln -sf "$binary" "$dest"
  fi
}

if [ -x "$binary" ]; then
  echo "llama-server (llama.cpp of llama-cpp-python $version, patches $patched): cached in $cache"
  link
  exit 0
fi
echo "llama-server (llama.cpp of llama-cpp-python $version): building (about 5 minutes on 2 cores, once)"
mkdir -p "$cache"
work="$(mktemp -d "$cache/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
for p in "$patches"/*.patch; do
  patch -s -p1 -d "$src" <"$p"
done
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DGGML_CCACHE=OFF >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
"$work/build/bin/llama-server" --version
# Atomic: a build cut short never leaves a half-written binary in the cache.
mv "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
link
