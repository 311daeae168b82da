#!/usr/bin/env bash
# Runs every test of the workspace. The integration tests talk to the real binary with real third-party
# clients, so this first installs the ones they use (idempotent: a second run skips what is there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bench/peers/install.sh python prometheus
# The Kubernetes tests (tests/it/common/kube.rs): etcd, and kube-apiserver and helm built from Go modules.
tests/k8s/install.sh
# The Kafka tests (tests/it/kafka.rs): an Apache Kafka 4 broker from Maven Central jars (needs a JDK and Maven),
# and the compiler and make that build the rdkafka crate's bundled librdkafka. (Their operator and web UI checks
# also use the kube-apiserver above and the browser below.)
tests/kafka/install.sh
# The browser test (tests/it/web_ui.rs): Debian's chromium driven by playwright-core; no browser download.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
[ tests/browser/node_modules/.package-lock.json -nt tests/browser/package-lock.json ] \
  || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# Dependency policy (deny.toml, reviewed in SECURITY.md): licences, duplicate and banned crates, sources.
# Advisories need the RustSec database from GitHub, which CI cannot reach, so they are not checked here.
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny@0.20.2
cargo deny --log-level error check licenses bans sources
cargo test --workspace --locked "$@"
