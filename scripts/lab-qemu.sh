# scripts/lab-qemu.sh — sourced by demo.sh, soak.sh, kerbside.sh, benches/ and the
# Kerbside lab's spice-server.sh: one definition of
# the QEMU that serves SPICE on 127.0.0.1 for them (TCG, no guest disk, 11 SPICE
# channels: main, display, inputs, cursor, playback, record, smartcard, two
# usbredir, a port and webdav). The Rust tests have their own in tests/common/.

# free_port: prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# build_vga_noise DIR: assembles the display-load guest (tests/guest/vga-noise.S)
# into DIR/vga-noise.elf and prints its path.
build_vga_noise() {
  as --32 -o "$1/vga-noise.o" tests/guest/vga-noise.S
  ld -m elf_i386 -Ttext 0x100000 -o "$1/vga-noise.elf" "$1/vga-noise.o"
  echo "$1/vga-noise.elf"
}

# lab_spice_devices NAME: sets LAB_SPICE_DEVICES to the QEMU arguments of every
# device behind a SPICE channel but the display (audio, USB redirection, smart
# card, agent, webdav, and a port named org.spice-space.NAME.0). Shared with
# scripts/kerbside-lab/spice-server.sh.
lab_spice_devices() {
  LAB_SPICE_DEVICES=(
    -audiodev spice,id=snd0 -device intel-hda -device hda-duplex,audiodev=snd0
    -device qemu-xhci,id=xhci
    -chardev spicevmc,name=usbredir,id=usbredir0 -device usb-redir,chardev=usbredir0,bus=xhci.0
    -chardev spicevmc,name=usbredir,id=usbredir1 -device usb-redir,chardev=usbredir1,bus=xhci.0
    -device usb-ccid,bus=xhci.0
    -chardev spicevmc,name=smartcard,id=smartcard0 -device ccid-card-passthru,chardev=smartcard0
    -device virtio-serial-pci,id=vser0
    -chardev spicevmc,name=vdagent,id=vdagent0
    -device virtserialport,bus=vser0.0,chardev=vdagent0,name=com.redhat.spice.0
    -chardev spiceport,name=org.spice-space.webdav.0,id=webdav0
    -device virtserialport,bus=vser0.0,chardev=webdav0,name=org.spice-space.webdav.0
    -chardev spiceport,name="org.spice-space.$1.0",id=port0
    -device virtserialport,bus=vser0.0,chardev=port0,name="org.spice-space.$1.0")
}

# start_lab_qemu NAME PORT LOG [QMP_SOCKET [KERNEL]]: starts QEMU in the background
# (its pid in LAB_QEMU_PID) and returns once PORT accepts connections. With
# KERNEL (e.g. from build_vga_noise) the guest runs it.
start_lab_qemu() {
  local name=$1 port=$2 log=$3 qmp=${4:-} kernel=${5:-}
  lab_spice_devices "$name"
  local args=(-name "$name,process=$name-qemu" -machine pc -accel tcg -m 64
    -nodefaults -no-user-config -display none -serial none -monitor none
    -device qxl-vga,id=video0
    -spice "addr=127.0.0.1,port=$port,disable-ticketing=on"
    "${LAB_SPICE_DEVICES[@]}")
  [ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
  [ -n "$kernel" ] && args+=(-kernel "$kernel")
  qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1 &
  LAB_QEMU_PID=$!
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$LAB_QEMU_PID" 2>/dev/null || { echo "QEMU exited; its log:" >&2; cat "$log" >&2; return 1; }
    sleep 0.05
  done
  echo "QEMU did not listen on $port within 10 s" >&2
  return 1
}

# lab_qemu_channels QMP_SOCKET: connected SPICE channels as QEMU sees them
# (query-spice); "?" if QMP does not answer.
lab_qemu_channels() {
  python3 - "$1" <<'PY' 2>/dev/null || echo "?"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "query-spice"):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            break
print(len(r.get("return", {}).get("channels", [])))
PY
}
