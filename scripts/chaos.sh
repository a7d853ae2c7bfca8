#!/usr/bin/env bash
# scripts/chaos.sh [MINUTES [SEED]] — the chaos soak (tests/chaos.rs; not in the
# test run, CI runs `scripts/chaos.sh 3`): one spiced against a real QEMU while
# faults are injected at random (server kill + restart, SIGSTOP, black hole,
# idle-cutting proxy, expired password + fresh .vv, display burst, SIGHUP, full
# spool), checking invariants after each and at the end, then a secrets sweep
# over everything spiced wrote. Prints the seed (pass it as SEED to replay the
# same faults), a table of faults injected and recovered with recovery times,
# and any invariant broken. Exit status: 0 only if none broke.
#
# Runs in a private network namespace (the black hole is an nft rule there) and
# mount namespace (the spool is a 64 MiB tmpfs that the full-spool fault fills),
# under scripts/journald-sandbox.sh (a real journald, read with journalctl).
# Needs root, QEMU, nft, unshare, systemd-journald, binutils
# (scripts/install-deps.sh). The run's log: target/chaos-<seed>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-3}
seed=${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
case $minutes in '' | *[!0-9.]*) echo "usage: $0 [MINUTES [SEED]]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network and mount namespaces)" >&2; exit 2; }
for p in qemu-system-x86_64 nft unshare ip journalctl as ld; do
  command -v "$p" >/dev/null || { echo "chaos.sh: $p missing (scripts/install-deps.sh)" >&2; exit 2; }
done

# Build outside the namespaces (cargo may need the network); run the binary inside.
exe=$(cargo test --no-run --test chaos 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "chaos.sh: could not build tests/chaos.rs" >&2; exit 1; }
mkdir -p target
log=target/chaos-$seed.log
echo "chaos.sh: $minutes min, seed $seed; log in $log"
set +e
SPICED_CHAOS_MINUTES=$minutes SPICED_CHAOS_SEED=$seed unshare --net --mount bash -c '
  set -e
  ip link set lo up
  spool=$(mktemp -d /tmp/spiced-chaos-spool.XXXXXX)
  mount -t tmpfs -o size=64m,mode=0700 tmpfs "$spool"
  export SPICED_CHAOS_SPOOL=$spool
  exec bash scripts/journald-sandbox.sh -- "$1" --ignored --exact chaos_soak --nocapture
' chaos "$exe" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
