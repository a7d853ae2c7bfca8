#!/usr/bin/env bash
# scripts/fuzz-corpus.sh — (re)seeds fuzz/corpus/<target>/ from real peers, so the
# fuzzers start from bytes a real server, proxy and spiced itself produced:
#   - a real session: QEMU (no guest disk: the firmware draws its boot screen) and
#     spiced linked on all 11 channels; QEMU is then killed and
#     spiced writes its disconnect-cause zip. The zip seeds report_zip, its
#     disconnect-cause.json report_json, and its traffic.pcap (decoded with
#     tshark) gives each channel's server-to-client bytes: the link reply seeds
#     link_reply; what follows the link result seeds server_messages,
#     frame_decoder and channel_bytes (cut at 64 KiB, the fuzzers' max_len);
#   - tinyproxy's real answers to CONNECT (allowed and refused): proxy_answer;
#   - the .vv fixtures (Proxmox, oVirt) and config/spiced.toml: vv_parse, config_toml.
# Seeds are named by content (sha1), so a rerun adds only what is new. Commit the
# result; `bash scripts/fuzz.sh SECONDS` grows it further. Needs QEMU, tshark,
# tinyproxy, python3 (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
for p in qemu-system-x86_64 tshark tinyproxy python3; do
  command -v "$p" >/dev/null || { echo "fuzz-corpus.sh: $p missing (scripts/install-deps.sh)" >&2; exit 2; }
done

cargo build --quiet --bin spiced
bin=target/debug/spiced
corpus=fuzz/corpus
work=$(mktemp -d /tmp/spiced-corpus.XXXXXX)
qpid="" spid="" ppid_=""
cleanup() {
  local rc=$?
  set +e
  for p in $spid $qpid $ppid_; do kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# seed TARGET FILE: copies FILE into the target's corpus under its content hash.
seed() {
  mkdir -p "$corpus/$1"
  local h
  h=$(sha1sum "$2" | cut -c1-16)
  cp "$2" "$corpus/$1/real-$h"
}

. scripts/lab-qemu.sh
port=$(free_port)
start_lab_qemu spiced-corpus "$port" "$work/qemu.log" "$work/qmp.sock"
qpid=$LAB_QEMU_PID
printf '[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=%s\n' "$port" >"$work/console.vv"
printf '[report]\nspool_dir = "%s"\ncooldown_secs = 0\n[reconnect]\nmax_attempts = 1\n' \
  "$work/spool" >"$work/spiced.toml"
RUST_LOG=info "$bin" --vv "$work/console.vv" --config "$work/spiced.toml" 2>"$work/spiced.log" &
spid=$!
for _ in $(seq 300); do
  [ "$(lab_qemu_channels "$work/qmp.sock")" = 11 ] && break
  sleep 0.1
done
[ "$(lab_qemu_channels "$work/qmp.sock")" = 11 ] || { echo "spiced did not link 11 channels" >&2; cat "$work/spiced.log" >&2; exit 1; }
sleep 2 # the firmware draws its screen; the capture ring keeps every stream whole
kill -9 "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=""
# With max_attempts = 1 spiced gives up after one retry; the report comes first.
wait "$spid" 2>/dev/null || true; spid=""
zip=$(ls "$work"/spool/spiced-disconnect-*.zip | head -1)
echo "fuzz-corpus.sh: report $(basename "$zip") ($(stat -c %s "$zip") bytes)"
seed report_zip "$zip"
(cd "$work" && python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, "unz") for n in ("disconnect-cause.json", "traffic.pcap")]' "$zip")
seed report_json "$work/unz/disconnect-cause.json"

# Each TCP stream's server-to-client payload, concatenated. spiced's pcap has one
# stream per channel with made-up ports: the server's side is the one that did
# not speak first.
tshark -r "$work/unz/traffic.pcap" -T fields -e tcp.stream -e tcp.srcport -e tcp.payload \
  >"$work/payloads.tsv" 2>/dev/null
python3 -c '
import os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
first, data = {}, {}
for line in open(src):
    f = line.rstrip("\n").split("\t")
    if len(f) < 3 or not f[2]:
        continue
    first.setdefault(f[0], f[1])
    if f[1] != first[f[0]]:
        data.setdefault(f[0], bytearray()).extend(bytes.fromhex(f[2].replace(":", "")))
for stream, b in data.items():
    if b[:4] != b"REDQ" or len(b) < 16:
        continue
    reply_len = 16 + int.from_bytes(b[12:16], "little")
    open(f"{out}/{stream}.link", "wb").write(b[:reply_len])
    # After the reply: the 4-byte link result, then mini-header messages.
    rest = b[reply_len + 4:reply_len + 4 + 65536]
    if rest:
        open(f"{out}/{stream}.msgs", "wb").write(rest)
' "$work/payloads.tsv" "$work/streams"
n=0
for f in "$work"/streams/*.link; do seed link_reply "$f"; n=$((n + 1)); done
for f in "$work"/streams/*.msgs; do
  for t in server_messages frame_decoder channel_bytes; do seed "$t" "$f"; done
done
echo "fuzz-corpus.sh: $n channel streams from the capture"

# tinyproxy's own answers: a CONNECT it allows and one it refuses.
pport=$(free_port)
printf 'Port %s\nListen 127.0.0.1\nAllow 127.0.0.1\nConnectPort %s\n' "$pport" "$port" >"$work/tp.conf"
tinyproxy -d -c "$work/tp.conf" >"$work/tp.log" 2>&1 &
ppid_=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.05; done
start_lab_qemu spiced-corpus2 "$port" "$work/qemu2.log"
qpid=$LAB_QEMU_PID
for target in "127.0.0.1:$port" "127.0.0.1:1"; do
  python3 - "$pport" "$target" "$work/answer-${target##*:}" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(f"CONNECT {sys.argv[2]} HTTP/1.1\r\nHost: {sys.argv[2]}\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    c = s.recv(4096)
    if not c:
        break
    buf += c
open(sys.argv[3], "wb").write(buf)
PY
  seed proxy_answer "$work/answer-${target##*:}"
done

for f in tests/fixtures/*.vv; do seed vv_parse "$f"; done
seed config_toml config/spiced.toml
for t in $(ls "$corpus"); do echo "  $t: $(ls "$corpus/$t" | wc -l) seeds"; done
