#!/usr/bin/env bash
# The README's test command: every test of the workspace, unit to end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
# Binaries first: the end-to-end tests run the real `ringmesh`, `loadgen` and
# `ringmesh-bench` processes from target/debug.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
