#!/usr/bin/env bash
# Runs every test: installs packages, builds (release + ASan/UBSan + a clang libFuzzer build),
# runs the unit tests under both builds, a short fuzz run of the frame decoder and the router,
# and the integration tests (real PostgreSQL 15 clusters, real clients).
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

CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHARDGATE_FUZZ=ON -DSHARDGATE_INTEGRATION=OFF \
  -DSHARDGATE_FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >/dev/null
cmake --build build-fuzz -j "$jobs" --target fuzz_frame fuzz_router

echo "== fuzzing the frame decoder and the router (${FUZZ_SECONDS:-15} s each)"
ctest --test-dir build-fuzz -L fuzz --output-on-failure

echo "== unit tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -L unit --output-on-failure

echo "== all tests (release build)"
ctest --test-dir build --output-on-failure "$@"
