#!/usr/bin/env bash
# scripts/demo.sh [SECONDS] — the README's first command.
# Installs what is missing (Debian packages, as root), builds spiced, starts a real
# QEMU serving SPICE on 127.0.0.1 (no guest disk, 11 SPICE channels), writes a
# console.vv for it and runs spiced in the foreground, so every channel can be seen
# coming up. Kill the QEMU from another terminal (its pid is printed) to watch
# spiced notice, report and retry. Ctrl-C stops spiced cleanly. With SECONDS,
# spiced is stopped (SIGTERM) after that long. Everything is cleaned up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-}

bash scripts/install-deps.sh
cargo build --quiet --bin spiced
bin=target/debug/spiced

work=$(mktemp -d /tmp/spiced-demo.XXXXXX)
qpid=""
cleanup() {
  # Never fail here: the exit status is spiced's.
  if [ -n "$qpid" ]; then kill -9 "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/lab-qemu.sh
port=$(free_port)
start_lab_qemu spiced-demo "$port" "$work/qemu.log"
qpid=$LAB_QEMU_PID

cat > "$work/console.vv" <<VV
[virt-viewer]
type=spice
host=127.0.0.1
port=$port
title=spiced demo
VV
cat > "$work/spiced.toml" <<TOML
[report]
spool_dir = "$work/reports"
TOML

echo "== QEMU pid $qpid serves SPICE on 127.0.0.1:$port (kill $qpid to see spiced react)"
echo "== spiced --vv $work/console.vv --config $work/spiced.toml"
set +e
if [ -n "$secs" ]; then
  "$bin" --vv "$work/console.vv" --config "$work/spiced.toml" &
  spid=$!
  sleep "$secs"
  kill -TERM "$spid" 2>/dev/null
  wait "$spid"
else
  "$bin" --vv "$work/console.vv" --config "$work/spiced.toml"
fi
rc=$?
set -e
echo "== spiced exited with status $rc"
ls "$work/reports" 2>/dev/null | sed 's/^/== report: /' || true
exit "$rc"
