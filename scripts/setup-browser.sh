#!/usr/bin/env bash
# Makes a headless browser available for the console's browser tests: Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Installs them if they are missing
# and this runs as root with apt-get. Idempotent. Exit status 0 means ready.
set -euo pipefail

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
  fi
fi
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "setup-browser: $tool is not installed" >&2; exit 1; }
done
echo "setup-browser: $(chromedriver --version | head -c 60)"
