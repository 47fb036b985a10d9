#!/usr/bin/env bash
# Build llama-cpp-python once and keep the wheel under ~/.cache/aiplane/wheels.
# GGML_NATIVE=OFF: a native build on these virtual CPUs uses instructions they
# advertise but trap on (illegal instruction at the first request).
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${AIPLANE_CACHE:-$HOME/.cache/aiplane}/wheels"
py="${1:-python3}"
mkdir -p "$cache"
if ls "$cache"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $version: cached wheel in $cache"
  exit 0
fi
echo "llama-cpp-python $version: building (about 5 minutes on 2 cores, once)"
CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$py" -m pip wheel --no-deps -w "$cache" "llama-cpp-python==$version"
