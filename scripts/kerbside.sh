#!/usr/bin/env bash
# scripts/kerbside.sh [MINUTES] — spiced through a real Kerbside 0.8.0 (a
# SPICE-native proxy with a protocol firewall) in front of a real QEMU, all on
# 127.0.0.1 (scripts/kerbside-lab/kerbside-lab.sh: MariaDB, Kerbside's daemon,
# its Rust proxy and REST API, QEMU with TLS and a password). Not in the test
# run (the first start pip-installs Kerbside, ~1 min); CI runs `kerbside.sh 1`.
#
# 1. A console.vv minted by Kerbside's API (one-time password living 60 s,
#    delete-this-file=1, ca, host-subject) links every channel Kerbside's
#    DEFAULT firewall lets through (it ends port and webdav after their first
#    message: the session goes on degraded, without them).
# 2. The session holds for MINUTES (default 10): no loss, the same channels on
#    the QEMU behind Kerbside all along.
# 3. The QEMU behind Kerbside is SIGKILLed and started again on the same ports.
#    The ticket is single-use and long expired, the .vv long deleted: spiced
#    runs its refresh command (scripts/spiced-refresh-kerbside: a fresh .vv from
#    Kerbside's API) and the session comes back by itself.
# 4. SIGTERM: exit 0; no password in anything spiced wrote.
# Prints the figures (times from which event to which) and exits 0 only if all
# of it held. Needs root (apt, MariaDB), network for the first pip install.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
case $minutes in '' | *[!0-9.]*) echo "usage: $0 [MINUTES]" >&2; exit 2 ;; esac
root=$PWD
if [ -z "${KERBSIDE_LAB_DIR:-}" ]; then
  # Outer call: build spiced, stand the lab up, run this script inside it.
  cargo build --quiet --bin spiced
  work=$(mktemp -d /tmp/spiced-kerbside.XXXXXX)
  cache=${SPICED_KERBSIDE_CACHE:-$HOME/.cache/spiced-kerbside}
  mkdir -p "$cache"
  echo "kerbside.sh: $minutes min; lab in $work (Kerbside venv cached in $cache)"
  rc=0
  bash scripts/kerbside-lab/kerbside-lab.sh --dir "$work/lab" --cache "$cache" \
    --vv-out "$work/console.vv" -- bash "$0" "$minutes" || rc=$?
  [ "$rc" = 0 ] && rm -rf "$work" || echo "kerbside.sh: FAILED (exit $rc); logs kept in $work" >&2
  exit "$rc"
fi

# ---- inside the lab -----------------------------------------------------------
set -a; . "$KERBSIDE_LAB_DIR/lab.env"; set +a
. scripts/lab-qemu.sh # lab_qemu_channels
spiced=$root/target/debug/spiced
t=$KERBSIDE_LAB_DIR/spiced
mkdir -p "$t/spool"
vv=$t/console.vv
cp "$KERBSIDE_LAB_VV" "$vv"
pw=$(sed -n 's/^password=//p' "$vv")
[ -n "$pw" ] || { echo "kerbside.sh: the minted .vv has no password" >&2; exit 1; }
# The lab's API speaks plain HTTP on loopback: --allow-http is the lab opt-in.
cat > "$t/spiced.toml" <<EOF
[report]
spool_dir = "$t/spool"
[reconnect]
refresh_command = ["$root/scripts/spiced-refresh-kerbside", "--url", "http://127.0.0.1:$API_PORT", "--allow-http", "--source", "lab", "--uuid", "$CONSOLE_UUID", "--token-file", "$KERBSIDE_LAB_DIR/api-token.txt"]
EOF
log=$t/spiced.log
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
wait_log() { # wait_log PATTERN COUNT SECS: the log has COUNT lines matching PATTERN
  local end=$(( $(date +%s) + $3 ))
  while [ "$(grep -cE "$1" "$log" || true)" -lt "$2" ]; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    kill -0 "$spid" 2>/dev/null || return 1
    sleep 0.1
  done
}
fail() {
  echo "kerbside.sh: FAILED: $*" >&2
  echo "--- spiced log (last 40 lines):" >&2
  tail -n 40 "$log" | sed "s/$pw/<password>/g" >&2
  kill "$spid" 2>/dev/null || true
  bash "$root/scripts/kerbside-lab/spice-server.sh" --stop "$KERBSIDE_LAB_DIR/run/qemu.pid" 2>/dev/null || true
  exit 1
}
linked='session (fully linked|linked degraded)'

t0=$(now)
RUST_LOG=info "$spiced" --vv "$vv" --config "$t/spiced.toml" 2> "$log" > /dev/null &
spid=$!
wait_log "$linked" 1 30 || fail "no linked session within 30 s"
up1=$(since "$t0")
sleep 2 # scenario time: Kerbside's firewall ends port and webdav after their first message
[ ! -e "$vv" ] || fail "delete-this-file=1: the .vv is still there"
n=$(lab_qemu_channels "$QMP")
echo "kerbside.sh: linked through Kerbside $up1 s after start; QEMU behind it has $n channels"
grep -E "session (fully linked|linked degraded)|stays down" "$log" | sed 's/^[^ ]* *//' | cut -c1-160
[ "$n" -ge 3 ] || fail "QEMU has $n channels (main, display, inputs at least)"

# 2. hold
end=$(( $(date +%s) + ${minutes%.*} * 60 ))
checks=0
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 5 # scenario time: the hold
  kill -0 "$spid" 2>/dev/null || fail "spiced exited during the hold"
  grep -q "session lost" "$log" && fail "the session was lost during the hold"
  m=$(lab_qemu_channels "$QMP")
  [ "$m" = "$n" ] || fail "QEMU had $n channels, now $m"
  checks=$((checks + 1))
done
echo "kerbside.sh: held $minutes min ($checks checks, $n channels on QEMU each time, no loss)"

# 3. the QEMU behind Kerbside crashes and comes back on the same ports
before=$(grep -cE "$linked" "$log" || true)
kill -9 "$(head -n 1 "$KERBSIDE_LAB_DIR/run/qemu.pid")"
sleep 2 # scenario time: the hypervisor is down
bash "$root/scripts/kerbside-lab/spice-server.sh" --password "$QEMU_PASSWORD" --tls "$KERBSIDE_LAB_DIR/certs" \
  --port "$QEMU_PORT" --tls-port "$QEMU_TLS_PORT" --qmp "$QMP" --pidfile "$KERBSIDE_LAB_DIR/run/qemu.pid" \
  --log "$KERBSIDE_LAB_DIR/logs/qemu-restarted.log" > /dev/null 2>&1 || fail "QEMU did not start again"
t1=$(now)
wait_log "$linked" $((before + 1)) 120 || fail "the session did not come back within 120 s of QEMU listening"
back=$(since "$t1")
grep -q "refresh" "$log" || fail "no refresh command run"
echo "kerbside.sh: QEMU restarted; session back $back s after it listened (fresh .vv from Kerbside's API)"
grep -E "refresh|reconnect:" "$log" | tail -n 6 | sed 's/^[^ ]* *//' | cut -c1-160

# 4. stop; no secret anywhere
kill -TERM "$spid"
rc=0
wait "$spid" || rc=$?
bash "$root/scripts/kerbside-lab/spice-server.sh" --stop "$KERBSIDE_LAB_DIR/run/qemu.pid" > /dev/null 2>&1 || true
[ "$rc" = 0 ] || fail "spiced exited $rc on SIGTERM"
if grep -rqaF -- "$pw" "$log" "$t/spool" 2>/dev/null; then fail "the password reached spiced's log or spool"; fi
echo "kerbside.sh: ok"
