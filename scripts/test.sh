#!/usr/bin/env bash
# scripts/test.sh — the README's test command: installs what the tests need
# (Debian packages: QEMU, tshark, tinyproxy, nftables...; root, idempotent, fast
# when present), then runs every test, the real-QEMU ones included.
# With CI set, tests whose tools are missing fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo test --all-targets "$@"
