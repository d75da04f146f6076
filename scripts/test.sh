#!/usr/bin/env bash
# The README's test command: installs the servers the ship tests start (PostgreSQL,
# nats-server) when missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --workspace --all-features "$@"
