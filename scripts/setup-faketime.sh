#!/usr/bin/env bash
# Makes libfaketime available for Concord's clock-skew tests, which start one node with its
# wall clock moved (LD_PRELOAD, FAKETIME="+3s", monotonic time untouched). Installs Debian's
# package if it is missing, and proves the library moves a process's clock. Idempotent. Exit
# status 0 means ready; the library's path is printed on the last line.
set -euo pipefail

lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [ ! -e "$lib" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null
  fi
fi
[ -e "$lib" ] || { echo "setup-faketime: $lib is not installed (Debian package faketime)" >&2; exit 1; }
now=$(date +%s)
moved=$(LD_PRELOAD="$lib" FAKETIME="+100s" FAKETIME_DONT_FAKE_MONOTONIC=1 date +%s)
if [ $((moved - now)) -lt 90 ]; then
  echo "setup-faketime: $lib did not move the clock ($now vs $moved)" >&2
  exit 1
fi
echo "$lib"
