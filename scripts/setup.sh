#!/usr/bin/env bash
# Installs every Debian 12 package ShardGate needs to build, test, benchmark and run the demo.
# Idempotent: apt-get skips what is already installed.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libboost1.74-dev libboost-system1.74-dev libboost-coroutine1.74-dev
  libpqxx-dev libpq-dev libpg-query-dev libprotobuf-c-dev libxxhash-dev libtomlplusplus-dev
  nlohmann-json3-dev
  prometheus-cpp-dev libgtest-dev libgmock-dev libssl-dev
  postgresql-15 postgresql-client-15 pgbouncer
  python3 python3-psycopg2 python3-psycopg python3-asyncpg python3-yaml
  default-jdk-headless libpostgresql-jdbc-java
  ruby ruby-pg golang-go golang-github-jackc-pgx-v4-dev
  prometheus curl clang-14 libclang-rt-14-dev valgrind
  procps iproute2 util-linux dpkg-dev file
)
# Node.js and npm run the OpenAPI check in tests/integration/openapi. Ask Debian only for what
# the machine lacks: a Node.js from another origin (NodeSource's nodejs bundles npm and conflicts
# with Debian's npm package) must stay as it is.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Debian postgresql package starts a default cluster on 5432; ShardGate never uses it.
