#!/usr/bin/env bash
# Runs every test of the workspace. The integration tests talk to the real binary with real third-party
# clients, so this first installs the ones they use (idempotent: a second run skips what is there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bench/peers/install.sh python prometheus
cargo test --workspace --locked "$@"
