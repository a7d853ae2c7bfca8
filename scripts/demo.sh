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

# A free port on loopback.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
qemu-system-x86_64 -name spiced-demo,process=spiced-demo-qemu -machine pc -accel tcg -m 64 \
  -nodefaults -no-user-config -display none -serial none -monitor none \
  -device qxl-vga,id=video0 \
  -spice "addr=127.0.0.1,port=$port,disable-ticketing=on" \
  -audiodev spice,id=snd0 -device intel-hda -device hda-duplex,audiodev=snd0 \
  -device qemu-xhci,id=xhci \
  -chardev spicevmc,name=usbredir,id=usbredir0 -device usb-redir,chardev=usbredir0,bus=xhci.0 \
  -chardev spicevmc,name=usbredir,id=usbredir1 -device usb-redir,chardev=usbredir1,bus=xhci.0 \
  -device usb-ccid,bus=xhci.0 \
  -chardev spicevmc,name=smartcard,id=smartcard0 -device ccid-card-passthru,chardev=smartcard0 \
  -device virtio-serial-pci,id=vser0 \
  -chardev spicevmc,name=vdagent,id=vdagent0 \
  -device virtserialport,bus=vser0.0,chardev=vdagent0,name=com.redhat.spice.0 \
  -chardev spiceport,name=org.spice-space.webdav.0,id=webdav0 \
  -device virtserialport,bus=vser0.0,chardev=webdav0,name=org.spice-space.webdav.0 \
  -chardev spiceport,name=org.spice-space.demo.0,id=port0 \
  -device virtserialport,bus=vser0.0,chardev=port0,name=org.spice-space.demo.0 \
  </dev/null >"$work/qemu.log" 2>&1 &
qpid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done

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
