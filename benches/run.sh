#!/usr/bin/env bash
# benches/run.sh [--quick] — spiced against the reference clients (spice-gtk as
# spicy-stats, through Python gi, and remote-viewer under Xvfb), measured in the same run against real
# QEMUs on 127.0.0.1: memory, CPU and wakeups (VM paused and live screen), start
# to all channels up, server restarts, a black hole, 50 sessions on one host,
# an idle-cutting proxy, display drain, 500 sessions (multi-client QEMUs).
# Prints one markdown table and writes it to docs/benchmarks.md with the machine
# and the command. Not part of the test run; --quick (one short run per row)
# only proves the script works. --only display: just the display mirror's rows
# (mirror off and on, vga-noise and an Xspice X desktop, against spicy-stats),
# printed, docs/benchmarks.md left alone. Needs scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in qemu-system-x86_64 spicy-stats tinyproxy as ld; do
  command -v "$p" >/dev/null || { echo "benches/run.sh: $p missing (bash scripts/install-deps.sh)" >&2; exit 2; }
done
/usr/bin/python3 -c 'import gi; gi.require_version("SpiceClientGLib", "2.0")' 2>/dev/null \
  || { echo "benches/run.sh: python3-gi / gir1.2-spiceclientglib-2.0 missing (bash scripts/install-deps.sh)" >&2; exit 2; }
# remote-viewer (under Xvfb) is the third reference, haproxy the load balancer
# of one row; installed here when we can.
if ! command -v remote-viewer >/dev/null || ! command -v Xvfb >/dev/null || ! command -v haproxy >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xvfb virt-viewer haproxy >/dev/null \
      || echo "benches/run.sh: could not install xvfb virt-viewer haproxy; remote-viewer or the haproxy row is left out" >&2
  else
    echo "benches/run.sh: remote-viewer or Xvfb missing; remote-viewer is left out" >&2
  fi
fi
cargo build --release --quiet --bin spiced
exec python3 benches/run.py "$@"
