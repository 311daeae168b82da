#!/usr/bin/env bash
# Install the third-party peers Tidewatch is tested and benchmarked against.
#
#   bench/peers/install.sh [--force] [all|python|rotel|prometheus|otelcol|telemetrygen]...
#   bench/peers/install.sh check      # print what is installed, run nothing else
#
# No argument means "all". Idempotent: each step is skipped when the pinned
# version is already in place (--force redoes the named steps).
#
# Everything goes under ${TIDEWATCH_PEERS:-$HOME/.cache/tidewatch-peers};
# executables are in its bin/ (add it to PATH). Exceptions: `python` installs
# into the current python3 (python3 -m pip), `prometheus` installs the Debian
# package (/usr/bin/prometheus, /usr/bin/promtool; needs root) and only links
# the binaries into bin/.
#
# Only package registries are used: PyPI, the Go module proxy, Debian apt.
#
# Environment:
#   TIDEWATCH_PEERS      cache dir (default ~/.cache/tidewatch-peers)
#   PYTHON               python interpreter (default python3)
#   PEERS_GO_JOBS        go build -p value (default 1, keeps one core free)
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore  # quiet pip when run as root

# ---- pinned versions (see README.md; bump together) ----------------------
OTELCOL_VERSION=0.158.0        # OCB builder == core components == contrib components
TELEMETRYGEN_VERSION=0.157.0   # contrib cmd/telemetrygen: a separate load generator; 0.158.0+ not served
OTEL_PY_VERSION=1.45.2         # opentelemetry-sdk and the OTLP exporters
ROTEL_VERSION=0.0.1a15         # PyPI "rotel" (its binary reports 0.0.1-alpha10)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS=${TIDEWATCH_PEERS:-$HOME/.cache/tidewatch-peers}
BIN=$PEERS/bin
PYTHON=${PYTHON:-python3}
GO_JOBS=${PEERS_GO_JOBS:-1}
FORCE=0

OTELCOL_NAME=otelcol-tidewatch-bench
OTELCOL_MANIFEST=$HERE/otelcol-builder.yaml
BUILDER_MOD=go.opentelemetry.io/collector/cmd/builder
TELEMETRYGEN_MOD=github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen

log() { printf '[peers] %s\n' "$*" >&2; }
die() { printf '[peers] ERROR: %s\n' "$*" >&2; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "go not found on PATH (need Go >= 1.25)"
}

# go env with GOFLAGS extended by -p=N (an env GOFLAGS would otherwise replace
# whatever `go env -w GOFLAGS=...` set, so start from the effective value).
go_env() {
  local flags
  flags="$(go env GOFLAGS) -p=$GO_JOBS"
  env GOFLAGS="${flags# }" "$@"
}

# Module version a Go binary was built from ("" if unknown / not a Go binary).
go_mod_version() {
  [ -x "$1" ] || return 0
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

# ---- python: OTel SDK + OTLP exporters into the current interpreter -------
PY_PKGS=(opentelemetry-sdk opentelemetry-exporter-otlp
         opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http)

python_installed() {
  "$PYTHON" - "$OTEL_PY_VERSION" "${PY_PKGS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
want, pkgs = sys.argv[1], sys.argv[2:]
try:
    ok = all(version(p) == want for p in pkgs)
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

install_python() {
  if [ "$FORCE" = 0 ] && python_installed; then
    log "python: OTel SDK/exporters $OTEL_PY_VERSION already installed in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    return
  fi
  local specs=() p
  for p in "${PY_PKGS[@]}"; do specs+=("$p==$OTEL_PY_VERSION"); done
  log "python: $PYTHON -m pip install ${specs[*]}"
  "$PYTHON" -m pip install --disable-pip-version-check -q "${specs[@]}"
  python_installed || die "python: packages not importable at $OTEL_PY_VERSION after install"
}

# ---- rotel: the PyPI wheel ships the Rust binary as rotel/rotel-agent -----
# Installed with --target into the cache (not into the current python), the
# binary is linked as bin/rotel.
install_rotel() {
  local dir=$PEERS/rotel/$ROTEL_VERSION
  local agent=$dir/rotel/rotel-agent
  if [ "$FORCE" = 0 ] && [ -x "$agent" ] && [ "$(readlink "$BIN/rotel" 2>/dev/null)" = "$agent" ]; then
    log "rotel: $ROTEL_VERSION already installed ($BIN/rotel -> $agent)"
    return
  fi
  log "rotel: pip install --target $dir rotel==$ROTEL_VERSION"
  rm -rf "$dir"
  mkdir -p "$dir" "$BIN"
  # --no-deps: we only want the binary (its python wrapper needs typing-extensions).
  "$PYTHON" -m pip install --disable-pip-version-check -q --no-deps --target "$dir" "rotel==$ROTEL_VERSION"
  [ -x "$agent" ] || die "rotel: $agent not found in the wheel"
  ln -sfn "$agent" "$BIN/rotel"
  "$BIN/rotel" --version >/dev/null || die "rotel: $BIN/rotel --version failed"
}

# ---- prometheus: Debian package, service left stopped and disabled ---------
prometheus_service_off() {
  # The Debian package enables prometheus.service. We only want the binaries:
  # stop it if it runs, disable it so it does not come up at boot.
  local sudo=("$@")
  if [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    # No running systemd (containers): drop the enablement symlink offline,
    # stop a SysV-started daemon if any.
    if command -v systemctl >/dev/null 2>&1; then
      "${sudo[@]}" systemctl disable prometheus.service >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/prometheus ]; then
      "${sudo[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
      "${sudo[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
}

install_prometheus() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
  if [ "$FORCE" = 0 ] && [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
    log "prometheus: already installed ($(/usr/bin/prometheus --version 2>&1 | head -1))"
  else
    if [ "${#sudo[@]}" -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
      die "prometheus: need root (or sudo) for apt-get"
    fi
    # Keep the package's postinst from starting the daemon: policy-rc.d exit
    # 101 makes invoke-rc.d / deb-systemd-invoke skip starts. Only installed if
    # the machine has none (Docker images usually ship one already).
    local policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
      "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
      policy_added=1
    fi
    local rc=0 candidate
    candidate=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }')
    if [ -z "$candidate" ]; then
      log "prometheus: apt-get update"
      "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q || rc=$?
    fi
    if [ "$rc" = 0 ]; then
      log "prometheus: apt-get install -y --no-install-recommends prometheus"
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends prometheus || rc=$?
    fi
    if [ "$policy_added" = 1 ]; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" = 0 ] || die "prometheus: apt-get failed (exit $rc)"
  fi
  if [ "${#sudo[@]}" = 0 ] || command -v sudo >/dev/null 2>&1; then prometheus_service_off "${sudo[@]}"; fi
  mkdir -p "$BIN"
  ln -sfn /usr/bin/prometheus "$BIN/prometheus"
  ln -sfn /usr/bin/promtool "$BIN/promtool"
}

# ---- otelcol: OCB-built collector with the RED connectors -----------------
install_otelcol() {
  need_go
  local tools=$PEERS/tools build=$PEERS/otelcol-build out=$BIN/$OTELCOL_NAME
  local builder=$tools/builder-v$OTELCOL_VERSION
  local sum stamp=$build/manifest.sha256
  sum=$(sha256sum "$OTELCOL_MANIFEST" | cut -d' ' -f1)
  if [ "$FORCE" = 0 ] && [ -x "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] \
     && "$out" --version >/dev/null 2>&1; then
    log "otelcol: already built from this manifest ($("$out" --version))"
    return
  fi
  mkdir -p "$tools" "$build" "$BIN"
  if [ "$(go_mod_version "$builder")" != "v$OTELCOL_VERSION" ]; then
    log "otelcol: go install $BUILDER_MOD@v$OTELCOL_VERSION"
    local gobin
    gobin=$(mktemp -d "$tools/.gobin.XXXXXX")
    go_env GOBIN="$gobin" go install "$BUILDER_MOD@v$OTELCOL_VERSION"
    mv -f "$gobin/builder" "$builder"
    rmdir "$gobin"
  fi
  log "otelcol: building $OTELCOL_NAME from $OTELCOL_MANIFEST (several minutes on a cold cache)"
  rm -rf "$build/_build"
  # The manifest's output_path is relative (./_build): run from the build dir.
  (cd "$build" && go_env "$builder" --config "$OTELCOL_MANIFEST")
  install -m 755 "$build/_build/$OTELCOL_NAME" "$out"
  "$out" --version >/dev/null || die "otelcol: $out --version failed"
  echo "$sum" >"$stamp"
}

# ---- telemetrygen: load generator from contrib -----------------------------
install_telemetrygen() {
  need_go
  local out=$BIN/telemetrygen
  if [ "$FORCE" = 0 ] && [ "$(go_mod_version "$out")" = "v$TELEMETRYGEN_VERSION" ]; then
    log "telemetrygen: v$TELEMETRYGEN_VERSION already installed ($out)"
    return
  fi
  mkdir -p "$BIN"
  log "telemetrygen: go install $TELEMETRYGEN_MOD@v$TELEMETRYGEN_VERSION"
  go_env GOBIN="$BIN" go install "$TELEMETRYGEN_MOD@v$TELEMETRYGEN_VERSION"
}

# ---- check: report what is there ------------------------------------------
check() {
  local ok=0
  printf 'cache: %s\n' "$PEERS"
  if python_installed; then printf 'python       OK   otel sdk/exporters %s (%s)\n' "$OTEL_PY_VERSION" "$(command -v "$PYTHON")"
  else printf 'python       MISSING\n'; ok=1; fi
  if [ -x "$BIN/rotel" ]; then printf 'rotel        OK   %s (%s)\n' "$("$BIN/rotel" --version 2>&1)" "$BIN/rotel"
  else printf 'rotel        MISSING\n'; ok=1; fi
  if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
    printf 'prometheus   OK   %s\n' "$(/usr/bin/prometheus --version 2>&1 | head -1)"
  else printf 'prometheus   MISSING\n'; ok=1; fi
  if [ -x "$BIN/$OTELCOL_NAME" ]; then printf 'otelcol      OK   %s (%s)\n' "$("$BIN/$OTELCOL_NAME" --version 2>&1)" "$BIN/$OTELCOL_NAME"
  else printf 'otelcol      MISSING\n'; ok=1; fi
  if [ -x "$BIN/telemetrygen" ]; then printf 'telemetrygen OK   %s (%s)\n' "$(command -v go >/dev/null && go_mod_version "$BIN/telemetrygen")" "$BIN/telemetrygen"
  else printf 'telemetrygen MISSING\n'; ok=1; fi
  return $ok
}

# ---- main -------------------------------------------------------------------
steps=()
for arg in "$@"; do
  case "$arg" in
    -f|--force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    all) steps+=(python rotel prometheus otelcol telemetrygen) ;;
    python|rotel|prometheus|otelcol|telemetrygen) steps+=("$arg") ;;
    check) check; exit $? ;;
    *) die "unknown argument: $arg (want: all python rotel prometheus otelcol telemetrygen check --force)" ;;
  esac
done
[ "${#steps[@]}" -gt 0 ] || steps=(python rotel prometheus otelcol telemetrygen)

mkdir -p "$BIN"
for s in "${steps[@]}"; do "install_$s"; done
log "done; binaries in $BIN (export PATH=\"$BIN:\$PATH\")"
