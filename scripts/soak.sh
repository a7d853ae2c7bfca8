#!/usr/bin/env bash
# scripts/soak.sh [SECONDS] — a long idle run of spiced against a real QEMU (not in CI).
# Starts a private QEMU serving SPICE on 127.0.0.1 (no guest disk, 11 channels),
# runs spiced with the default config (only the report spool is moved to a temp
# dir) for SECONDS (default 600), asks QEMU how many channels are connected, then
# stops spiced with SIGTERM and prints: disconnects seen (expected 0), keepalives
# sent per channel (from the `channel CH totals:` lines), spiced's RSS and CPU,
# and any spice warning in QEMU's log. Exit 0 only if nothing was lost, every
# channel was still connected and spiced stopped cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing (scripts/install-deps.sh)" >&2; exit 2; }

cargo build --quiet --bin spiced
bin=target/debug/spiced

work=$(mktemp -d /tmp/spiced-soak.XXXXXX)
qpid=""
spid=""
cleanup() {
  local rc=$?
  set +e # a killed child's wait status must not become the script's
  [ -n "$spid" ] && kill -9 "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

. scripts/lab-qemu.sh
port=$(free_port)
qmp=$work/qmp.sock
start_lab_qemu spiced-soak "$port" "$work/qemu.log" "$qmp"
qpid=$LAB_QEMU_PID
qemu_channels() { lab_qemu_channels "$qmp"; }

cat > "$work/console.vv" <<VV
[virt-viewer]
type=spice
host=127.0.0.1
port=$port
VV
cat > "$work/spiced.toml" <<TOML
[report]
spool_dir = "$work/reports"
TOML

echo "== soak: QEMU pid $qpid on 127.0.0.1:$port; spiced for $secs s with the default config"
RUST_LOG=info "$bin" --vv "$work/console.vv" --config "$work/spiced.toml" 2>"$work/spiced.log" &
spid=$!
clk=$(getconf CLK_TCK)
sleep "$secs"
channels=$(qemu_channels)
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$spid/status" 2>/dev/null || echo "?")
ticks=$(awk '{print $14 + $15}' "/proc/$spid/stat" 2>/dev/null || echo 0)
kill -TERM "$spid" 2>/dev/null || true
set +e
wait "$spid"
rc=$?
set -e
spid=""

log=$work/spiced.log
lost=$(grep -c "session lost" "$log" || true)
attempts=$(grep -c "reconnect attempt" "$log" || true)
echo "== spiced exited with status $rc after SIGTERM"
echo "== QEMU saw $channels SPICE channels connected just before the stop (expected 11)"
echo "== disconnects (\"session lost\"): $lost (expected 0); reconnect attempts: $attempts"
grep "session lost" "$log" | sed 's/^/   /' || true
echo "== spiced RSS ${rss_kb} kB, CPU $(awk -v t="$ticks" -v c="$clk" -v s="$secs" 'BEGIN { printf "%.2f s (%.3f %% of a core)", t / c, 100 * t / c / s }')"
echo "== keepalives sent per channel (totals at each session end; replies in parentheses):"
grep " totals: " "$log" | sed -E 's/.*channel ([^ ]+) totals: .*pings ([0-9]+).*keepalives ([0-9]+) \(replies ([0-9]+)\).*/   \1: \3 (\4), server pings \2/'
warnings=$(grep -ciE "spice|ping|pong|parse|invalid" "$work/qemu.log" || true)
echo "== QEMU log lines mentioning spice/ping/pong/parse/invalid: $warnings (expected 0)"
grep -iE "spice|ping|pong|parse|invalid" "$work/qemu.log" | head -5 | sed 's/^/   /' || true
[ "$rc" = 0 ] && [ "$lost" = 0 ] && [ "$channels" = 11 ] && [ "$warnings" = 0 ]
