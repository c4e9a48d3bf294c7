#!/usr/bin/env bash
# The test command (README, `make test`, CI): installs what is missing, then checks
# formatting and lints, builds everything and runs every test against real peers.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/dev/env.sh
bash tools/dev/deps.sh test

cargo fmt --all --check
cargo build --locked --workspace --all-targets
cargo clippy --locked --workspace --all-targets -- -D warnings
# End-to-end tests run the binary built above; each test starts its own servers on free ports.
# Some open a thousand connections at once: raise the descriptor limit where allowed.
ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true
cargo test --locked --workspace --no-fail-fast
