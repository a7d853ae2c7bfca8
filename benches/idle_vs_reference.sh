#!/usr/bin/env bash
# benches/idle_vs_reference.sh [SECONDS] [load] — cost of spiced vs spice-gtk.
# Starts two identical QEMUs (scripts/lab-qemu.sh: SPICE on 127.0.0.1, 11 channels), links spiced
# (release build) to one and the reference client spicy-stats (spice-gtk, no X) to
# the other, waits SECONDS (default 60) after a 10 s settle, and prints each
# client's RSS and CPU time over the window, the channels QEMU saw, and the ratio
# spiced / reference. With `load`, both guests run tests/guest/vga-noise.S (a few
# MB/s of display traffic each) and the display bytes each client drained are
# printed too. Not a test: it prints numbers. Needs scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
load=${2:-}
command -v spicy-stats >/dev/null || { echo "spicy-stats missing: bash scripts/install-deps.sh" >&2; exit 1; }
cargo build --release --quiet --bin spiced
work=$(mktemp -d /tmp/spiced-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

. scripts/lab-qemu.sh
stat() { # stat PID -> "rss_kb cpu_ticks"
  awk '/VmRSS/ {print $2}' "/proc/$1/status" | tr '\n' ' '
  awk '{print $14 + $15}' "/proc/$1/stat"
}
p1=$(free_port); p2=$(free_port)
kernel=""
[ "$load" = load ] && kernel=$(build_vga_noise "$work")
start_lab_qemu spiced-bench1 "$p1" "$work/q1.log" "$work/q1.qmp" "$kernel"; pids+=("$LAB_QEMU_PID")
start_lab_qemu spiced-bench2 "$p2" "$work/q2.log" "$work/q2.qmp" "$kernel"; pids+=("$LAB_QEMU_PID")
printf '[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=%s\n' "$p1" > "$work/c.vv"
printf '[report]\nspool_dir = "%s/rep"\n' "$work" > "$work/c.toml"
target/release/spiced --vv "$work/c.vv" --config "$work/c.toml" 2>"$work/spiced.log" & sp=$!; pids+=($sp)
spicy-stats -h 127.0.0.1 -p "$p2" >"$work/ref.out" 2>&1 & rp=$!; pids+=($rp)
sleep 10
read -r s_rss0 s_cpu0 < <(stat $sp); read -r r_rss0 r_cpu0 < <(stat $rp)
sleep "$secs"
read -r s_rss s_cpu < <(stat $sp); read -r r_rss r_cpu < <(stat $rp)
c1=$(lab_qemu_channels "$work/q1.qmp"); c2=$(lab_qemu_channels "$work/q2.qmp")
hz=$(getconf CLK_TCK)
printf '%s %ss after 10s settle, CPU in ticks of 1/%s s\n' "$([ -n "$kernel" ] && echo "display load" || echo idle)" "$secs" "$hz"
printf '%-22s %8s %10s %10s\n' client channels RSS_kB cpu_ticks
printf '%-22s %8s %10s %10s\n' spiced "$c1" "$s_rss" $((s_cpu - s_cpu0))
printf '%-22s %8s %10s %10s\n' "spicy-stats (spice-gtk)" "$c2" "$r_rss" $((r_cpu - r_cpu0))
awk -v a="$s_rss" -v b="$r_rss" -v c=$((s_cpu - s_cpu0)) -v d=$((r_cpu - r_cpu0)) \
  'BEGIN { printf "ratio spiced/reference: RSS %.2f, CPU %s\n", a/b, (d > 0 ? sprintf("%.2f", c/d) : "n/a (reference used 0 ticks)") }'
if [ -n "$kernel" ]; then
  # Display bytes each client drained over the whole run (settle included).
  kill -INT "$rp" 2>/dev/null || true; kill -TERM "$sp" 2>/dev/null || true
  wait "$rp" "$sp" 2>/dev/null || true
  sd=$(sed -n 's/.*channel display totals: in \([0-9]*\) B.*/\1/p' "$work/spiced.log" | tail -1)
  rd=$(sed -n 's/^display: \([0-9]*\).*/\1/p' "$work/ref.out" | tail -1)
  awk -v a="${sd:-0}" -v b="${rd:-0}" 'BEGIN { printf "display drained: spiced %.1f MB, reference %.1f MB (ratio %.2f)\n", a/1e6, b/1e6, (b > 0 ? a/b : 0) }'
fi
