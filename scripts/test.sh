#!/usr/bin/env bash
# The project's test command: formatting, lints, generated-file drift, unit and integration tests.
# Needs python3 with pyrqlite (`pip install pyrqlite`) and openssl; .ci/run installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (node, operator)"
cargo clippy -p litecluster-node -p litecluster-operator --all-targets -- -D warnings
step "CRDs match the Rust types"
cargo run -q -p litecluster-operator -- crd | diff -u crds/sqliteclusters.litecluster.io.yaml - \
  || { echo "crds/ is stale: regenerate with 'cargo run -p litecluster-operator -- crd > crds/sqliteclusters.litecluster.io.yaml'"; exit 1; }
step "node: unit and integration tests (real processes on loopback, pyrqlite)"
cargo test -p litecluster-node
step "operator: unit and mocked-API reconcile tests"
cargo test -p litecluster-operator
printf '\nall tests passed in %ss\n' "$(( $(date +%s) - started ))"
