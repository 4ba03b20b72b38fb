#!/usr/bin/env bash
# Build the Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler) from the k8s.io/kubernetes Go module pinned in e2e/k8s/go.mod,
# and helm from its Go module, into a versioned cache directory:
#
#   ${LITECLUSTER_CACHE:-$HOME/.cache/litecluster}/k8s-<version>-go<goversion>/bin/
#
# A binary already there with a matching stamp is not rebuilt, so a warm run
# takes a second and says "cached". etcd is not built here: the Rust launcher
# takes the official binary shipped in the `etcd-bin-vendored` crate.
#
# Progress goes to stderr; the last line on stdout is the bin directory.
#
# Usage: build-control-plane.sh [--print-bindir]
#   --print-bindir   print the bin directory and exit without building
#
# Environment:
#   LITECLUSTER_CACHE  cache root (default $HOME/.cache/litecluster)
#   GOMODCACHE         Go module cache (default $LITECLUSTER_CACHE/gomod)
#   GOCACHE            Go build cache (Go's default, ~/.cache/go-build)
#   NICE               niceness for the go builds (default 10)
set -euo pipefail

# Keep these in step with e2e/k8s/go.mod (k8s.io/kubernetes and the v0.X.Y replaces).
K8S_VERSION=v1.33.13
# Commit time of the tag as recorded by the Go module proxy; used as buildDate
# so that builds are reproducible.
K8S_BUILD_DATE=2026-06-11T16:59:07Z
HELM_VERSION=v3.18.6

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod_dir=$(cd "$script_dir/../k8s" && pwd)

log() { printf '[build-control-plane %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH (Go >= 1.24 is needed)"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
go_version=$(go env GOVERSION)
go_version=${go_version#go}

cache_root=${LITECLUSTER_CACHE:-$HOME/.cache/litecluster}
out_dir=$cache_root/k8s-$K8S_VERSION-go$go_version
bin_dir=$out_dir/bin

if [[ ${1:-} == --print-bindir ]]; then
    echo "$bin_dir"
    exit 0
fi

export GOMODCACHE=${GOMODCACHE:-$cache_root/gomod}
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
nice_level=${NICE:-10}

mkdir -p "$bin_dir"

# One build at a time per cache directory (tests may start in parallel).
exec 9>"$out_dir/.lock"
if ! flock -n 9; then
    log "another build holds $out_dir/.lock; waiting"
    flock 9
fi

k8s_major=${K8S_VERSION#v}; k8s_major=${k8s_major%%.*}
k8s_minor=${K8S_VERSION#v*.}; k8s_minor=${k8s_minor%%.*}
# The stamp covers go.mod/go.sum too, so editing the pins rebuilds.
mod_sum=$(cat "$mod_dir/go.mod" "$mod_dir/go.sum" | sha256sum | cut -c1-16)
k8s_stamp="kubernetes $K8S_VERSION go$go_version mod:$mod_sum"
helm_stamp="helm $HELM_VERSION go$go_version"

# is_cached NAME STAMP: the binary exists, runs, and was built from the same pins.
is_cached() {
    [[ -x $bin_dir/$1 && -f $bin_dir/.$1.stamp && "$(cat "$bin_dir/.$1.stamp")" == "$2" ]]
}

# run_go LOGFILE LABEL ARGS...: run a go command at low priority with its -v output
# in LOGFILE, printing a heartbeat every 30 s so a long cold build shows progress.
run_go() {
    local logfile=$1 label=$2; shift 2
    : >"$logfile"
    nice -n "$nice_level" go "$@" >>"$logfile" 2>&1 &
    local pid=$! started=$SECONDS next=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if (( SECONDS >= next )); then
            log "  $label: $(grep -c . "$logfile" || true) packages compiled, $((SECONDS - started))s"
            next=$((next + 30))
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$logfile" >&2
        die "$label failed; full log: $logfile"
    fi
    log "  $label: done in $((SECONDS - started))s"
}

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler)
log "cache: $bin_dir"
log "kubernetes $K8S_VERSION, helm $HELM_VERSION, go $go_version (GOMODCACHE=$GOMODCACHE)"

need_k8s=()
for b in "${k8s_bins[@]}"; do
    if is_cached "$b" "$k8s_stamp"; then
        log "cached: $b"
    else
        need_k8s+=("$b")
    fi
done

if (( ${#need_k8s[@]} )); then
    log "building ${need_k8s[*]} from k8s.io/kubernetes@$K8S_VERSION (cold: tens of minutes on 2 cores)"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION"
        ldflags+=" -X $pkg.gitMajor=$k8s_major"
        ldflags+=" -X $pkg.gitMinor=$k8s_minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
        ldflags+=" -X $pkg.buildDate=$K8S_BUILD_DATE"
    done
    tmp=$(mktemp -d "$out_dir/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    pkgs=()
    for b in "${need_k8s[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    log "  downloading modules"
    (cd "$mod_dir" && nice -n "$nice_level" go mod download) || die "go mod download failed in $mod_dir"
    (cd "$mod_dir" && run_go "$out_dir/build-k8s.log" "go build" build -v -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
    for b in "${need_k8s[@]}"; do
        mv -f "$tmp/$b" "$bin_dir/$b"
        echo "$k8s_stamp" >"$bin_dir/.$b.stamp"
        log "built: $b ($(du -h "$bin_dir/$b" | cut -f1))"
    done
fi

if is_cached helm "$helm_stamp"; then
    log "cached: helm"
else
    log "building helm $HELM_VERSION"
    helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    # Helm's compiled-in default Kubernetes version (used by `helm template`/lint).
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        helm_ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
    done
    tmp_helm=$(mktemp -d "$out_dir/.build-helm.XXXXXX")
    # `go install pkg@version` builds outside any main module, from helm's own go.mod.
    (cd "$tmp_helm" && GOFLAGS="-trimpath -buildvcs=false" GOBIN="$tmp_helm" \
        run_go "$out_dir/build-helm.log" "go install helm" install -v -ldflags "$helm_ldflags" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
    mv -f "$tmp_helm/helm" "$bin_dir/helm"
    rm -rf "$tmp_helm"
    echo "$helm_stamp" >"$bin_dir/.helm.stamp"
    log "built: helm ($(du -h "$bin_dir/helm" | cut -f1))"
fi

"$bin_dir/kube-apiserver" --version >&2
"$bin_dir/helm" version --short >&2
log "control plane binaries ready in ${SECONDS}s total"
echo "$bin_dir"
