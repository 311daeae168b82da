#!/usr/bin/env bash
# Installs what the Kubernetes tests need (tests/it/common/kube.rs, tests/it/deploy_manifests.rs), idempotently:
#   - etcd (Debian's etcd-server package),
#   - kube-apiserver, built from the k8s.io/kubernetes Go module (no prebuilt download exists here),
#   - helm, built from the helm.sh/helm/v3 Go module.
# The binaries are cached in ${TIDEWATCH_TOOLS:-$HOME/.cache/tidewatch-tools}; a second run does nothing.
# Go's module and build caches stay where `go env` puts them (outside the clone).
#
#   tests/k8s/install.sh            # all three
#   tests/k8s/install.sh etcd helm  # only some
set -euo pipefail

KUBE_VERSION=1.34.4 # newest 1.34 patch on the Go module proxy when this was written
HELM_VERSION=3.22.0
TOOLS="${TIDEWATCH_TOOLS:-$HOME/.cache/tidewatch-tools}"
mkdir -p "$TOOLS"

log() { echo "tests/k8s/install.sh: $*" >&2; }

need_go() {
  command -v go >/dev/null 2>&1 && return
  [ -x /usr/local/go/bin/go ] && { export PATH="/usr/local/go/bin:$PATH"; return; }
  log "needs a Go toolchain (go) on PATH to build $1"
  exit 1
}

install_etcd() {
  if command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; then
    log "etcd: $(command -v etcd || echo /usr/bin/etcd)"
    return
  fi
  if ! apt-cache show etcd-server >/dev/null 2>&1; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  # The package starts a system etcd on 2379 where systemd runs; the tests start their own on free ports.
  log "etcd: $(command -v etcd)"
}

install_kube_apiserver() {
  local bin="$TOOLS/kube-apiserver-v$KUBE_VERSION"
  if [ ! -x "$bin" ]; then
    need_go kube-apiserver
    local src="$TOOLS/src/kube-apiserver-v$KUBE_VERSION"
    mkdir -p "$src"
    log "building kube-apiserver v$KUBE_VERSION in $src (slow: ~2000 packages)"
    # k8s.io/kubernetes requires its staging modules (k8s.io/api, apimachinery, ...) at v0.0.0 and
    # replaces them with ./staging paths in its own go.mod, which a dependent module does not inherit:
    # pin every one of them to the matching published v0.X.Y here. The list is read from that go.mod.
    local kmod
    kmod="$(cd "$src" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" \
      | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [ -f "$kmod" ] || { log "could not download k8s.io/kubernetes@v$KUBE_VERSION's go.mod"; exit 1; }
    local staging
    staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$kmod" | sort -u)"
    [ -n "$staging" ] || { log "no staging replace directives found in $kmod"; exit 1; }
    {
      echo "module tidewatch.test/kube-apiserver"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$kmod")"
      echo
      echo "require k8s.io/kubernetes v$KUBE_VERSION"
      echo
      echo "replace ("
      for m in $staging; do echo "	$m => $m v0.${KUBE_VERSION#1.}"; done
      echo ")"
    } >"$src/go.mod"
    # The upstream cmd/kube-apiserver/main.go, as a module of our own (a main package cannot be imported).
    cat >"$src/main.go" <<'EOF'
// kube-apiserver for tidewatch's tests: the same program as k8s.io/kubernetes/cmd/kube-apiserver.
package main

import (
	"os"
	_ "time/tzdata" // for CronJob time zone support

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
EOF
    (cd "$src" && go mod tidy)
    local v="k8s.io/component-base/version"
    local minor="${KUBE_VERSION#1.}"
    minor="${minor%%.*}"
    local ldflags="-s -w -X $v.gitVersion=v$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
  fi
  ln -sfn "kube-apiserver-v$KUBE_VERSION" "$TOOLS/kube-apiserver"
  log "kube-apiserver: $bin"
}

install_helm() {
  local bin="$TOOLS/helm-v$HELM_VERSION"
  if [ ! -x "$bin" ]; then
    need_go helm
    log "building helm v$HELM_VERSION"
    local gobin
    gobin="$(mktemp -d)"
    local ver="helm.sh/helm/v3/internal/version"
    CGO_ENABLED=0 GOBIN="$gobin" GOFLAGS=-mod=mod go install -trimpath \
      -ldflags "-s -w -X $ver.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
    mv "$gobin/helm" "$bin"
    rmdir "$gobin"
  fi
  ln -sfn "helm-v$HELM_VERSION" "$TOOLS/helm"
  log "helm: $bin"
}

[ $# -gt 0 ] || set -- etcd kube-apiserver helm
for what in "$@"; do
  case "$what" in
    etcd) install_etcd ;;
    kube-apiserver) install_kube_apiserver ;;
    helm) install_helm ;;
    *) log "unknown tool $what (etcd, kube-apiserver, helm)"; exit 2 ;;
  esac
done
