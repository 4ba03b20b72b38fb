//go:build tools

// Package tools records the binaries built from this module so that
// `go mod tidy` keeps their dependencies. Build them with
// ../scripts/build-control-plane.sh, not with `go build` on this package.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
