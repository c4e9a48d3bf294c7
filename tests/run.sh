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
cargo test --locked --workspace --no-fail-fast
