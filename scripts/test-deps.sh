#!/usr/bin/env bash
# Installs what the map-wrapper-ship tests need and is missing: PostgreSQL (14 or later,
# binaries under /usr/lib/postgresql/N/bin) and nats-server (with JetStream), both Debian
# packages. Harmless when they are there: it only calls apt-get when a binary is absent.
# Needs root (or sudo) on Debian/Ubuntu when something is missing.
set -euo pipefail

missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then missing+=(nats-server); fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "test-deps: postgresql and nats-server present"
    exit 0
fi
echo "test-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends "${missing[@]}"
# The Debian package starts a cluster as a service; the tests start their own servers.
