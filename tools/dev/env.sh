# Sourced by the Makefile, tests/run.sh and .ci/run: the build environment shared by CI and
# developers, so both reuse one warm target directory.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wmail-target}"
# Link Debian's RocksDB instead of compiling its C++ (17 minutes on 2 cores). Elsewhere the
# rocksdb crate builds it from source with the same crate version.
if [ -z "${ROCKSDB_LIB_DIR:-}" ] && [ -e /usr/lib/x86_64-linux-gnu/librocksdb.so ]; then
  export ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu
fi
# Test peers (SeaweedFS) live in a virtualenv here.
export WMAIL_PEERS_DIR="${WMAIL_PEERS_DIR:-$HOME/.cache/wmail-peers}"
export WMAIL_WEED="$WMAIL_PEERS_DIR/venv/bin/weed"
