#!/usr/bin/env bash
# Makes redis-server available for Concord's Redis participant tests, which start their own
# servers (AOF on, a spare port, a temporary directory). Installs Debian's package if it is
# missing. Idempotent. Exit status 0 means ready.
set -euo pipefail

if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
  fi
fi
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "setup-redis: $tool is not installed" >&2; exit 1; }
done
echo "setup-redis: $(redis-server --version | head -c 60)"
