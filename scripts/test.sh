#!/usr/bin/env bash
# Runs every test: installs packages, builds (release + ASan/UBSan), runs the unit tests under
# both builds and the integration tests (real PostgreSQL 15 clusters, real clients).
#   scripts/test.sh            all tests
#   scripts/test.sh -L unit    only tests with that ctest label (extra args go to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSHARDGATE_SANITIZE=ON \
  -DSHARDGATE_INTEGRATION=OFF >/dev/null
cmake --build build-asan -j "$jobs"

echo "== unit tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -L unit --output-on-failure

echo "== all tests (release build)"
ctest --test-dir build --output-on-failure "$@"
