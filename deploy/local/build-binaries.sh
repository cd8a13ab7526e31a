#!/usr/bin/env bash
# Builds the local stack's control-plane binaries from the Go module proxy with the ordinary `go`
# client and caches them outside the checkout, one folder per pin:
#   ${DEDICAP_CACHE:-~/.cache/dedicap}/bin/<component>-<version>/
# A component is rebuilt only when its pin in versions.env changes (or its folder is missing).
# Go's module and build caches are shared between runs, so a rebuild after a pin change is faster.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${DEDICAP_CACHE:-$HOME/.cache/dedicap}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS=-mod=mod
mkdir -p "$cache/bin" "$cache/src"

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '\nbuild-binaries: FAILED at step: %s\n' "$current" >&2; }
trap fail ERR
current=setup

# Kubernetes: k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every staging module
# with ./staging/...), so a wrapper module requires it and maps each staging module to its
# published v0.Y.Z. Versions are stamped so `--version` tells the truth (helm and kubectl read it).
build_kubernetes() {
  local out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] \
     && [ -x "$out/kube-scheduler" ] && [ -x "$out/kubectl" ]; then return; fi
  current="kubernetes $KUBERNETES_VERSION"
  step "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION (cold: tens of minutes on 2 cores)"
  local src="$cache/src/kubernetes-$KUBERNETES_VERSION"
  rm -rf "$src" && mkdir -p "$src"
  local staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller"
  {
    echo "module dedicap.dev/localstack/kubernetes"
    echo
    echo "go 1.25.0"
    echo
    echo "godebug default=go1.25"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	k8s.io/$m => k8s.io/$m $KUBERNETES_STAGING_VERSION"; done
    echo ")"
    echo
    echo "tool ("
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo ")"
  } > "$src/go.mod"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$src" && step "resolving modules" && go mod tidy \
    && step "compiling (go build, $(nproc) cores)" \
    && go build -trimpath -ldflags "$ld" -o "$src/out/" \
         k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
         k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$out" && mv "$src/out" "$out"
  "$out/kube-apiserver" --version >&2
}

# etcd: its server module has a package main at the root but also replace directives, so it is
# built from its own wrapper (kept apart from Kubernetes' so version selection does not mix).
build_etcd() {
  local out="$cache/bin/etcd-$ETCD_VERSION"
  if [ -x "$out/etcd" ]; then return; fi
  current="etcd $ETCD_VERSION"
  step "building etcd $ETCD_VERSION"
  local src="$cache/src/etcd-$ETCD_VERSION"
  rm -rf "$src" && mkdir -p "$src"
  printf 'module dedicap.dev/localstack/etcd\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' \
    "$ETCD_VERSION" > "$src/go.mod"
  (cd "$src" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
    -o "$src/out/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$out" && mv "$src/out" "$out"
  "$out/etcd" --version >&2
}

# prometheus-operator: its go.mod replaces its own pkg/apis and pkg/client with ./pkg/..., so it
# too is built from a wrapper module that requires the published ones. Its CRDs (part of the same
# module) are kept beside the binary for the local stack to install.
build_prometheus_operator() {
  local out="$cache/bin/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [ -x "$out/prometheus-operator" ] && [ -d "$out/crds" ]; then return; fi
  current="prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  step "building prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  local src="$cache/src/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  local mod=github.com/prometheus-operator/prometheus-operator
  rm -rf "$src" && mkdir -p "$src"
  printf 'module dedicap.dev/localstack/prometheus-operator\n\ngo 1.25.0\n\nrequire %s %s\n\ntool %s/cmd/operator\n' \
    "$mod" "$PROMETHEUS_OPERATOR_VERSION" "$mod" > "$src/go.mod"
  (cd "$src" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}" \
    -o "$src/out/prometheus-operator" "$mod/cmd/operator")
  local dir
  dir=$(cd "$src" && go list -m -f '{{.Dir}}' "$mod")
  mkdir -p "$src/out/crds" && cp "$dir"/example/prometheus-operator-crd/*.yaml "$src/out/crds/"
  chmod -R u+w "$src/out"
  rm -rf "$out" && mv "$src/out" "$out"
  "$out/prometheus-operator" --version >&2
}

# Prometheus: Debian's package is built without Kubernetes service discovery, which the
# configuration prometheus-operator generates needs. Its Go module is versioned v0.3XX.Y for
# Prometheus 3.XX.Y, and its go.mod replaces fsnotify: a wrapper module again. No web UI assets
# are embedded (the HTTP API is all the stack uses).
build_prometheus() {
  local out="$cache/bin/prometheus-$PROMETHEUS_VERSION"
  if [ -x "$out/prometheus" ]; then return; fi
  current="prometheus $PROMETHEUS_VERSION"
  step "building prometheus $PROMETHEUS_VERSION (module $PROMETHEUS_MODULE_VERSION)"
  local src="$cache/src/prometheus-$PROMETHEUS_VERSION"
  local mod=github.com/prometheus/prometheus
  rm -rf "$src" && mkdir -p "$src"
  printf 'module dedicap.dev/localstack/prometheus\n\ngo 1.25.0\n\nrequire %s %s\n\nreplace github.com/fsnotify/fsnotify v1.8.0 => github.com/fsnotify/fsnotify v1.7.0\n\ntool %s/cmd/prometheus\n' \
    "$mod" "$PROMETHEUS_MODULE_VERSION" "$mod" > "$src/go.mod"
  (cd "$src" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
    -o "$src/out/prometheus" "$mod/cmd/prometheus")
  rm -rf "$out" && mv "$src/out" "$out"
  "$out/prometheus" --version >&2
}

# kwok and helm have no replace directives: a plain `go install pkg@version` works.
go_install() { # name version package ldflags
  local name=$1 version=$2 pkg=$3 ld=$4
  local out="$cache/bin/$name-$version"
  if [ -x "$out/$name" ]; then return; fi
  current="$name $version"
  step "building $name $version"
  GOBIN="$out.tmp" go install -trimpath -ldflags "$ld" "$pkg@$version"
  rm -rf "$out" && mv "$out.tmp" "$out"
}

build_kubernetes
build_etcd
build_prometheus_operator
build_prometheus
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

# One folder with a link per binary, so callers need one PATH entry.
current="linking $cache/bin/current"
cur="$cache/bin/current"; mkdir -p "$cur"
ln -sfn "$cache/bin/kubernetes-$KUBERNETES_VERSION/kube-apiserver" "$cur/kube-apiserver"
ln -sfn "$cache/bin/kubernetes-$KUBERNETES_VERSION/kube-controller-manager" "$cur/kube-controller-manager"
ln -sfn "$cache/bin/kubernetes-$KUBERNETES_VERSION/kube-scheduler" "$cur/kube-scheduler"
ln -sfn "$cache/bin/kubernetes-$KUBERNETES_VERSION/kubectl" "$cur/kubectl"
ln -sfn "$cache/bin/etcd-$ETCD_VERSION/etcd" "$cur/etcd"
ln -sfn "$cache/bin/kwok-$KWOK_VERSION/kwok" "$cur/kwok"
ln -sfn "$cache/bin/helm-$HELM_VERSION/helm" "$cur/helm"
ln -sfn "$cache/bin/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/prometheus-operator" \
  "$cur/prometheus-operator"
ln -sfn "$cache/bin/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/crds" \
  "$cur/prometheus-operator-crds"
ln -sfn "$cache/bin/prometheus-$PROMETHEUS_VERSION/prometheus" "$cur/prometheus"
step "binaries ready in $cur"
