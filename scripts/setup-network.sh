#!/usr/bin/env bash
# Makes network namespaces available for Concord's partition tests, which put each coordinator
# replica on a host of its own (a namespace joined to a bridge by a veth pair) and cut links
# with nftables rules that drop packets. Needs root, iproute2 (ip) and nftables (nft); installs
# Debian's packages if they are missing. Proves it works by making a namespace, loading a rule
# in it and removing it. Idempotent. Exit status 0 means ready.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "setup-network: network namespaces need root" >&2; exit 1; }
if ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 nftables >/dev/null
  fi
fi
for tool in ip nft; do
  command -v "$tool" >/dev/null || { echo "setup-network: $tool is not installed" >&2; exit 1; }
done
probe="concord-probe-$$"
ip netns add "$probe" || { echo "setup-network: cannot make a network namespace" >&2; exit 1; }
ip netns exec "$probe" ip link set lo up
if ! ip netns exec "$probe" nft add table inet concord_probe; then
  ip netns del "$probe"
  echo "setup-network: nftables cannot load a table (no nf_tables in this kernel?)" >&2
  exit 1
fi
ip netns del "$probe"
echo "setup-network: $(ip -V), $(nft --version)"
