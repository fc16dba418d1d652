#!/usr/bin/env bash
# Makes the local NATS server ready for Concord's outbox and choreography tests: running on
# 127.0.0.1:4222 with JetStream (started if stopped). Idempotent. Exit status 0 means ready.
set -euo pipefail

up() { (exec 3<>/dev/tcp/127.0.0.1/4222 && head -c 4 <&3 | grep -q INFO) 2>/dev/null; }

if ! up; then
  server=$(command -v nats-server || true)
  [ -n "$server" ] || { echo "setup-nats: nats-server is not installed" >&2; exit 1; }
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$server" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
  for _ in $(seq 1 60); do up && break; sleep 0.5; done
  up || { echo "setup-nats: NATS did not come up in 30 s" >&2; exit 1; }
fi
echo "setup-nats: NATS with JetStream ready on 127.0.0.1:4222"
