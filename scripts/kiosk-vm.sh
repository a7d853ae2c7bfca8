#!/usr/bin/env bash
# kiosk-vm.sh -- spiced's .deb and units as a kiosk lives them: a Debian 12 VM
# with systemd as PID 1 installs the package and runs scripts/kiosk-vm/guest.sh
# (every step asserted) against real SPICE servers (QEMU) on this host's
# loopback. CI runs it after scripts/build-deb.sh (.ci/run, step kiosk-vm).
#
#   scripts/kiosk-vm.sh [--deb FILE] [--timeout S] [--accel auto|kvm|tcg]
#                       [--keep DIR] [--only STEP,...]
#       Build the image if the cache lacks it, start the SPICE servers, boot the
#       VM, run the scenario, print one line per step (PASS/FAIL/XFAIL, its
#       time), exit 0 only when every step passed (an XFAIL step, listed in
#       KIOSK_VM_XFAIL, may fail; if it passes the run fails, so the list is
#       kept honest). --deb: default target/debian/spiced_<version>_<arch>.deb
#       (scripts/build-deb.sh [--debug]). --timeout: the whole VM run (default
#       1200 s; exit 124 when it expires). --keep DIR: the share (results,
#       journals, console log) is copied there. --only: run these steps only
#       (development; the install step always runs).
#   scripts/kiosk-vm.sh build [--force]
#       Only build (or find cached) the image.
#
# The image (cached in target/kiosk-vm/image, keyed on the package list and
# this script's image recipe): mmdebstrap of bookworm minbase + systemd,
# linux-image-amd64, prometheus-node-exporter, curl, nftables..., from the
# mirror in this machine's apt configuration (the mirror's name is never
# written into the image or the logs); the root filesystem made by
# `mkfs.ext4 -d` (no mount, no loop device); booted with -kernel/-initrd,
# snapshot=on (the cached image is never written; a guest reboot keeps the
# overlay, so the reboot step sees what was installed). KVM is used when
# /dev/kvm boots the image's stock kernel (probed once and cached: a nested
# kvm_pvm /dev/kvm hangs it), TCG otherwise.
#
# The guest's network: QEMU user networking, where 10.0.2.2:PORT is this
# host's 127.0.0.1:PORT; an nftables rule in the guest lets out only TCP to
# 10.0.2.2 on the test's ports (the SPICE servers, the silent listener), and
# the scenario checks that another listening host port is out of reach.
# The guest asks the host for faults through files on the 9p share (req/):
# `kiosk-host kill A` etc., answered by the loop in cmd_run.
#
# Needs (root): qemu-system-x86_64, mmdebstrap, e2fsprogs (mkfs.ext4 -d),
# python3 (free ports, the silent listener, QMP); scripts/install-deps.sh
# installs them.
set -euo pipefail

me=kiosk-vm.sh
self=$(readlink -f "$0")
root_dir=$(cd "$(dirname "$self")/.." && pwd)
cache=${KIOSK_VM_CACHE:-$root_dir/target/kiosk-vm}
# Steps that are known to fail on this tree, allowed to (XFAIL), listed with
# what fixes them. A listed step that passes fails the run: take it off.
# None today.
KIOSK_VM_XFAIL=${KIOSK_VM_XFAIL-}
die() { local rc=$1; shift; echo "$me: $*" >&2; exit "$rc"; }
now() { echo "$EPOCHREALTIME"; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
# need_space DIR MIB WHAT: fail up front, saying so, when DIR's filesystem has
# less than MIB free, instead of an ENOSPC from deep inside mmdebstrap or mkfs.
need_space() {
  local avail
  avail=$(df -Pm "$1" 2>/dev/null | awk 'NR==2 {print $4}')
  [ -n "$avail" ] || return 0
  [ "$avail" -ge "$2" ] || die 1 "$3 needs $2 MiB free on $(df -P "$1" | awk 'NR==2 {print $6}') ($1), only $avail MiB are"
}

# ---------------------------------------------------------------- the image

# Packages on top of minbase. udev loads the virtio modules; dbus for
# systemctl's bus API; nftables, iproute2 for the guest's own checks;
# prometheus-node-exporter as Debian runs it (its unit, user prometheus);
# curl scrapes it; jq reads spiced's and the journal's JSON.
IMAGE_PKGS="systemd systemd-sysv udev dbus linux-image-amd64 initramfs-tools kmod
  iproute2 procps nftables prometheus-node-exporter curl jq"
sources=/etc/apt/sources.list.d/debian.sources
[ -r "$sources" ] || sources=/etc/apt/sources.list

# The mirror host names from the apt configuration: scrubbed from the build log.
mirror_scrub() {
  local h prog=""
  while read -r h; do
    [ -n "$h" ] && prog="${prog}s/$(printf '%s' "$h" | sed 's/[.[\*^$/]/\\&/g')/<mirror>/g;"
  done < <(grep -hoE '[a-z0-9+]+://[^/ ]+' "$sources" 2>/dev/null | sed 's#.*://##; s#:.*##' | sort -u)
  printf '%s' "$prog"
}

# mmdebstrap --essential-hook: before the kernel is installed, an initramfs
# that mounts /dev/vda (virtio, ext4) and nothing else (small, quick to build).
image_essential() {
  local r=$1
  mkdir -p "$r/etc/initramfs-tools/conf.d" "$r/etc/initramfs-tools/hooks"
  printf 'MODULES=list\nCOMPRESS=gzip\n' > "$r/etc/initramfs-tools/conf.d/kiosk-vm.conf"
  printf 'virtio_pci\nvirtio_blk\next4\n' >> "$r/etc/initramfs-tools/modules"
}

# mmdebstrap --customize-hook: what makes it a test kiosk. Runs after every
# package is installed.
image_customize() {
  local r=$1 u=$1/etc/systemd/system m
  # what dpkg -i installs later gets its docs and man pages
  rm -f "$r/etc/dpkg/dpkg.cfg.d/99mmdebstrap" "$r/etc/apt/apt.conf.d/99mmdebstrap"
  rm -f "$r/etc/apt/sources.list" "$r"/etc/apt/sources.list.d/*
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
  printf '/dev/vda / ext4 rw,noatime 0 1\n' > "$r/etc/fstab"
  echo kiosk > "$r/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 kiosk\n' > "$r/etc/hosts"
  : > "$r/etc/resolv.conf"
  tr -d '-' < /proc/sys/kernel/random/uuid > "$r/etc/machine-id"
  # nothing that waits on a console or reaches out on its own
  for m in apt-daily.timer apt-daily-upgrade.timer man-db.timer logrotate.timer \
      e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
      systemd-timesyncd.service systemd-firstboot.service getty.target \
      serial-getty@ttyS0.service; do
    ln -sf /dev/null "$u/$m"
  done
  # the journal in memory: the guest copies what it needs to the share
  mkdir -p "$r/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' > "$r/etc/systemd/journald.conf.d/kiosk-vm.conf"
  rm -rf "$r/var/log/journal"
  mkdir -p "$r/mnt/share" "$r/usr/local/sbin"

  # The host share: 9p over virtio (the device may still be probing).
  cat > "$r/usr/local/sbin/kiosk-share" <<'EOF'
#!/bin/sh
modprobe -q 9pnet_virtio; modprobe -q 9p
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none share /mnt/share; do
  i=$((i+1)); [ "$i" -lt 100 ] || exit 1; sleep 0.1
done
EOF
  # eth0 10.0.2.15/24 and no route beyond; only TCP to 10.0.2.2 (in QEMU's
  # user networking: the host's 127.0.0.1) on the test's ports (kiosk.ports=
  # on the kernel command line) may leave.
  cat > "$r/usr/local/sbin/kiosk-net" <<'EOF'
#!/bin/sh
set -e
ports=$(sed -n 's/.*kiosk\.ports=\([0-9,]*\).*/\1/p' /proc/cmdline)
i=0
until [ -e /sys/class/net/eth0 ]; do i=$((i+1)); [ "$i" -lt 100 ] || exit 1; sleep 0.1; done
sysctl -q -w net.ipv6.conf.all.disable_ipv6=1
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
nft -f - <<NFT
table inet kiosk_egress {
  chain out {
    type filter hook output priority 0; policy accept;
    oifname "eth0" ip daddr 10.0.2.2 tcp dport { $(echo "$ports" | sed 's/,/, /g') } accept
    oifname "eth0" counter drop
  }
}
NFT
EOF
  chmod 0755 "$r/usr/local/sbin/kiosk-share" "$r/usr/local/sbin/kiosk-net"
  cat > "$u/kiosk-share.service" <<'EOF'
[Unit]
Description=kiosk-vm: the host's share on /mnt/share (9p)
DefaultDependencies=no
After=systemd-udevd.service local-fs.target
Before=sysinit.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/kiosk-share
EOF
  cat > "$u/kiosk-net.service" <<'EOF'
[Unit]
Description=kiosk-vm: eth0 static, the host's forwarded ports only
DefaultDependencies=no
After=systemd-udevd.service
Before=network.target network-online.target
Wants=network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/kiosk-net
EOF
  # The scenario, after multi-user.target, on every boot (the reboot step
  # continues it); the script comes from the share, so the image does not
  # change with it.
  cat > "$u/kiosk-run.service" <<'EOF'
[Unit]
Description=kiosk-vm: run the scenario from the share
After=multi-user.target kiosk-share.service kiosk-net.service
Requires=kiosk-share.service
[Service]
Type=exec
ExecStart=/bin/bash /mnt/share/guest.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$u/multi-user.target.wants" "$u/sysinit.target.wants" "$u/network-online.target.wants"
  ln -sf ../kiosk-share.service "$u/sysinit.target.wants/kiosk-share.service"
  ln -sf ../kiosk-net.service "$u/network-online.target.wants/kiosk-net.service"
  ln -sf ../kiosk-net.service "$u/multi-user.target.wants/kiosk-net.service"
  ln -sf ../kiosk-run.service "$u/multi-user.target.wants/kiosk-run.service"
}

image_key() {
  { echo "$IMAGE_PKGS" | tr -s ' \n' '\n\n' | sort; declare -f image_essential image_customize; } |
    sha256sum | cut -c1-16
}

cmd_build() {
  local force=0 img=$cache/image key t0 t1 t2
  for a in "$@"; do
    case "$a" in
      --force) force=1 ;;
      *) die 2 "build: unknown option $a" ;;
    esac
  done
  key=$(image_key)
  if [ "$force" = 0 ] && [ "$(cat "$img/key" 2>/dev/null)" = "$key" ] &&
     [ -s "$img/rootfs.img" ] && [ -s "$img/vmlinuz" ] && [ -s "$img/initrd.img" ]; then
    echo "$me: image: cached ($img, key $key)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die 1 "building the image needs root (mmdebstrap --mode=root)"
  command -v mmdebstrap >/dev/null || die 1 "mmdebstrap missing (scripts/install-deps.sh installs it)"
  [ -r "$sources" ] || die 1 "no apt sources ($sources) to take the mirror from"
  mkdir -p "$img"
  rm -f "$img/key"
  # the root tree (~350 MiB) and the ext4 image made of it exist at once
  need_space "$img" 1536 "building the VM image"
  local rootfs=$img/root.tmp scrub excl=() p
  rm -rf "$rootfs"
  scrub=$(mirror_scrub)
  # No docs, man pages or locales in the base (dpkg -i later gets them:
  # image_customize drops these excludes); no kernel modules a QEMU guest
  # never loads (three quarters of linux-image).
  for p in /usr/share/man/ /usr/share/locale/ /usr/share/doc/ /usr/share/info/; do
    excl+=(--dpkgopt="path-exclude=$p*")
  done
  excl+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')
  for p in drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/infiniband \
      drivers/staging drivers/iio drivers/bluetooth drivers/usb drivers/scsi drivers/ata drivers/isdn \
      drivers/mtd drivers/hwmon drivers/input drivers/nfc drivers/thunderbolt drivers/platform \
      drivers/md drivers/hid sound net/wireless net/mac80211 net/bluetooth fs/ocfs2 fs/btrfs \
      fs/xfs fs/nfs fs/nfsd fs/ceph fs/smb fs/gfs2 fs/f2fs; do
    excl+=(--dpkgopt="path-exclude=/lib/modules/*/kernel/$p/*")
  done
  echo "$me: image: mmdebstrap bookworm into $rootfs (log: $img/build.log)"
  t0=$(now)
  if ! mmdebstrap --mode=root --variant=minbase --include="$(echo $IMAGE_PKGS | tr ' ' ',')" \
      "${excl[@]}" \
      --essential-hook="'$self' _image-essential \"\$1\"" \
      --customize-hook="'$self' _image-customize \"\$1\"" \
      bookworm "$rootfs" "$sources" 2>&1 | sed -u "$scrub" > "$img/build.log"; then
    tail -n 30 "$img/build.log" >&2
    die 1 "mmdebstrap failed (log: $img/build.log)"
  fi
  t1=$(now)
  local vmlinuz initrd kib
  vmlinuz=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n1)
  initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n1)
  cp "$vmlinuz" "$img/vmlinuz"
  cp "$initrd" "$img/initrd.img"
  rm -f "$rootfs"/boot/vmlinuz-* "$rootfs"/boot/initrd.img-* "$rootfs"/boot/System.map-*
  # the mirror's name stays out of the image too
  if [ -n "$scrub" ]; then
    grep -rlIE "$(grep -hoE '[a-z0-9+]+://[^/ ]+' "$sources" | sed 's#.*://##; s#:.*##' | sort -u | paste -sd'|')" \
      "$rootfs/etc" "$rootfs/var" 2>/dev/null | while read -r p; do sed -i "$scrub" "$p"; done || true
  fi
  # room for the .deb, the journal and the test's files
  kib=$(du -sk "$rootfs" | cut -f1)
  rm -f "$img/rootfs.img"
  mkfs.ext4 -q -F -L kiosk -m 0 -E root_owner=0:0 -d "$rootfs" "$img/rootfs.img" "$(( kib / 1024 + 512 ))M" >/dev/null
  t2=$(now)
  rm -rf "$rootfs"
  rm -f "$img/accel"
  echo "$key" > "$img/key"
  echo "$me: image: built in $(dt "$t0" "$t2") s (mmdebstrap $(dt "$t0" "$t1") s, kernel copy + mkfs.ext4 -d $(dt "$t1" "$t2") s); root $(( kib / 1024 )) MiB, kernel ${vmlinuz##*/vmlinuz-}"
}

# ---------------------------------------------------------------- KVM or TCG

# pick_accel IMG: kvm when /dev/kvm boots the image's kernel as far as its
# banner on the serial port within 10 s, else tcg. Some hosts' /dev/kvm runs
# only specially built guest kernels (a nested kvm_pvm hangs Debian's right
# after its decompressor). Cached per host kernel, guest kernel and QEMU.
pick_accel() {
  local img=$1 key log pid res=tcg _
  if ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then echo tcg; return; fi
  key="$(uname -r) $(cksum < "$img/vmlinuz" | cut -d' ' -f1) $(qemu-system-x86_64 --version | head -n1)"
  if [ "$(sed -n 1p "$img/accel" 2>/dev/null)" = "$key" ]; then sed -n 2p "$img/accel"; return; fi
  log=$(mktemp)
  qemu-system-x86_64 -machine q35,accel=kvm -cpu host -m 256 -nodefaults -no-user-config \
    -display none -no-reboot -kernel "$img/vmlinuz" -append "console=ttyS0 panic=-1" \
    -serial "file:$log" -monitor none </dev/null >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if grep -q 'Linux version' "$log" 2>/dev/null; then res=kvm; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  printf '%s\n%s\n' "$key" "$res" > "$img/accel"
  [ "$res" = kvm ] || echo "$me: /dev/kvm does not boot the image's kernel: TCG (cached in $img/accel)" >&2
  echo "$res"
}

# ---------------------------------------------------------------- the host side

# The SPICE servers the guest's spiced instances reach (A: kiosk1, B: kiosk2),
# QEMUs from scripts/lab-qemu.sh, children of this script.
declare -A srv_pid srv_port srv_qmp
server_start() { # NAME
  local n=$1
  start_lab_qemu "kiosk-$n" "${srv_port[$n]}" "$work/qemu-$n.log" "${srv_qmp[$n]}" >&2 || return 1
  srv_pid[$n]=$LAB_QEMU_PID
  echo "host: server $n listening on 127.0.0.1:${srv_port[$n]} (pid ${srv_pid[$n]})"
}
server_kill() { # NAME: SIGKILL, then wait until the port is free
  local n=$1 pid=${srv_pid[$1]:-} _
  [ -n "$pid" ] || { echo "host: server $n not running"; return 0; }
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  srv_pid[$n]=
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/${srv_port[$n]}") 2>/dev/null || break
    sleep 0.05
  done
  echo "host: server $n killed"
}

# host_request ARG...: what `kiosk-host ARG...` in the guest asks for.
host_request() {
  local n=${2:-}
  case "$1" in
    kill) server_kill "$n" ;;
    start) server_start "$n" ;;
    restart) server_kill "$n" && server_start "$n" ;;
    pid) echo "${srv_pid[$n]:-}" ;;
    channels) # connected SPICE channels as the server sees them (QMP query-spice)
      if [ -n "${srv_pid[$n]:-}" ]; then lab_qemu_channels "${srv_qmp[$n]}"; else echo 0; fi ;;
    *) echo "host: unknown request: $*"; return 2 ;;
  esac
}

# Serves the guest's requests: share/req/ID.req (one argument a line) ->
# ID.out and ID.rc (written last).
serve_requests() {
  local f id args
  for f in "$share"/req/*.req; do
    [ -e "$f" ] || return 0
    id=${f%.req}
    mapfile -t args < "$f"
    rm -f "$f"
    set +e
    host_request "${args[@]}" > "$id.out" 2>&1
    echo $? > "$id.rc.tmp"
    set -e
    mv "$id.rc.tmp" "$id.rc"
  done
}

# print_results: the steps finished since the last call (out/results, one
# line each, appended by the guest), as a table row each.
print_results() {
  local lines i s res secs note
  [ -e "$share/out/results" ] || return 0
  mapfile -t lines < "$share/out/results"
  for ((i = seen; i < ${#lines[@]}; i++)); do
    IFS='|' read -r s res secs note <<< "${lines[$i]}"
    printf '%-24s %-5s %6s s  %s\n' "$s" "$res" "$secs" "$note"
  done
  seen=${#lines[@]}
}

free_ports() { # N: N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

cmd_run() {
  local deb="" timeout=1200 accel=auto keep="" only="" version arch
  while [ $# -gt 0 ]; do
    case "$1" in
      --deb) deb=${2:?}; shift 2 ;;
      --timeout) timeout=${2:?}; shift 2 ;;
      --accel) accel=${2:?}; shift 2 ;;
      --keep) keep=${2:?}; shift 2 ;;
      --only) only=${2:?}; shift 2 ;;
      *) die 2 "unknown option $1 (see --help)" ;;
    esac
  done
  version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root_dir/Cargo.toml" | head -n1)
  arch=$(dpkg --print-architecture)
  deb=${deb:-$root_dir/target/debian/spiced_${version}_$arch.deb}
  [ -f "$deb" ] || die 1 "$deb missing: run scripts/build-deb.sh --debug first"
  local t_all t_img t_boot="" t_end="" img=$cache/image
  t_all=$(now)
  cmd_build
  t_img=$(now)
  # the guest's writes (snapshot=on overlay), its journal and the test's files
  need_space "$cache" 512 "the VM run"
  case "$accel" in
    auto) accel=$(pick_accel "$img") ;;
    kvm|tcg) ;;
    *) die 2 "--accel auto, kvm or tcg" ;;
  esac

  # shellcheck source=scripts/lab-qemu.sh
  . "$root_dir/scripts/lab-qemu.sh"
  work=$cache/run
  share=$work/share
  rm -rf "$work"
  mkdir -p "$share/req" "$share/out"
  local ports pa pb ps pu
  read -r pa pb ps pu <<< "$(free_ports 4)"
  srv_port=([A]=$pa [B]=$pb)
  srv_qmp=([A]=$work/qmp-A.sock [B]=$work/qmp-B.sock)
  qpid="" lpid=""
  # shellcheck disable=SC2317 # called by trap
  cleanup() {
    [ -n "$qpid" ] && kill -KILL "$qpid" 2>/dev/null
    [ -n "$lpid" ] && kill "$lpid" 2>/dev/null
    for n in A B; do [ -n "${srv_pid[$n]:-}" ] && kill -KILL "${srv_pid[$n]}" 2>/dev/null; done
    wait 2>/dev/null
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  server_start A
  server_start B
  # S: accepts connections (the kernel's backlog) and never answers, so a
  # spiced linking to it stays in its start job. U: listens too, but the
  # guest must not reach it (not forwarded).
  python3 -c '
import socket, sys, time
ls = []
for p in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(p))); s.listen(64); ls.append(s)
time.sleep(86400)' "$ps" "$pu" &
  lpid=$!

  cp "$deb" "$share/"
  cp "$root_dir/scripts/kiosk-vm/guest.sh" "$share/guest.sh"
  cat > "$share/kiosk.env" <<EOF
PORT_A=$pa
PORT_B=$pb
PORT_SILENT=$ps
PORT_UNFORWARDED=$pu
KIOSK_XFAIL="$KIOSK_VM_XFAIL"
KIOSK_ONLY="$only"
EOF
  cat > "$share/kiosk-host" <<'EOF'
#!/bin/sh
# kiosk-host ARG...: asks the host (scripts/kiosk-vm.sh) to act; prints its
# answer and exits with its status (125: no answer in 120 s).
d=/mnt/share/req id=$(date +%s%N)-$$
printf '%s\n' "$@" > "$d/$id.tmp" && mv "$d/$id.tmp" "$d/$id.req"
i=0
until [ -e "$d/$id.rc" ]; do
  i=$((i+1)); [ "$i" -lt 2400 ] || { echo "kiosk-host: no answer" >&2; exit 125; }
  sleep 0.05
done
cat "$d/$id.out"; rc=$(cat "$d/$id.rc"); rm -f "$d/$id.out" "$d/$id.rc"
exit "$rc"
EOF
  chmod 0755 "$share/kiosk-host" "$share/guest.sh"

  local cpu=max append
  [ "$accel" = kvm ] && cpu=host
  append="root=/dev/vda rw console=ttyS0 net.ifnames=0 fsck.mode=skip panic=-1 kiosk.ports=$pa,$pb,$ps"
  echo "$me: servers A 127.0.0.1:$pa, B :$pb, silent :$ps, unforwarded :$pu; booting ($accel)"
  local t0 deadline rc
  seen=0
  t0=$(now)
  deadline=$(awk -v a="$t0" -v t="$timeout" 'BEGIN{printf "%d", a+t}')
  # No -no-reboot: the reboot step reboots the guest inside this QEMU, and
  # snapshot=on keeps its writes until QEMU exits.
  TMPDIR=$work qemu-system-x86_64 -name kiosk-vm,process=kiosk-vm -machine "q35,accel=$accel" \
    -cpu "$cpu" -smp 2 -m 1024 -nodefaults -no-user-config -display none -vga none \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$append" \
    -drive "file=$img/rootfs.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
    -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" \
    -device virtio-rng-pci \
    -netdev user,id=n0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2 -device virtio-net-pci,netdev=n0 \
    -serial "file:$share/console.log" -monitor none </dev/null >"$work/vm-qemu.log" 2>&1 &
  qpid=$!
  while kill -0 "$qpid" 2>/dev/null; do
    serve_requests
    if [ -z "$t_boot" ] && [ -e "$share/out/started" ]; then
      t_boot=$(now)
      echo "$me: boot: $(dt "$t0" "$t_boot") s (QEMU start -> scenario start)"
    fi
    print_results
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$me: timeout ${timeout}s: VM killed (console: $share/console.log)" >&2
      kill -KILL "$qpid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$qpid" 2>/dev/null || true
  qpid=""
  t_end=$(now)
  serve_requests
  print_results
  if [ -s "$work/vm-qemu.log" ]; then sed 's/^/qemu: /' "$work/vm-qemu.log" >&2; fi
  [ -n "$keep" ] && { rm -rf "$keep"; mkdir -p "$keep"; cp -r "$share/." "$keep/"; }

  # The verdict: every step PASS (or XFAIL), and the scenario said it finished.
  local n_pass n_fail n_xfail n_xpass
  n_pass=$(grep -c '|PASS|' "$share/out/results" 2>/dev/null || true)
  n_fail=$(grep -c '|FAIL|' "$share/out/results" 2>/dev/null || true)
  n_xfail=$(grep -c '|XFAIL|' "$share/out/results" 2>/dev/null || true)
  n_xpass=$(grep -c '|XPASS|' "$share/out/results" 2>/dev/null || true)
  rc=0
  if [ "$(date +%s)" -ge "$deadline" ]; then rc=124
  elif [ ! -e "$share/out/finished" ]; then rc=125; echo "$me: the scenario did not finish (console: $share/console.log)" >&2
  elif [ "$n_fail" != 0 ] || [ "$n_xpass" != 0 ] || [ "$n_pass" = 0 ]; then rc=1
  fi
  echo "$me: $n_pass passed, $n_fail failed, $n_xfail expected failures, $n_xpass unexpected passes (KIOSK_VM_XFAIL: ${KIOSK_VM_XFAIL:-none})"
  echo "$me: image $(dt "$t_all" "$t_img") s, boot ${t_boot:+$(dt "$t0" "$t_boot")} s, scenario $(cat "$share/out/scenario-secs" 2>/dev/null || echo ?) s, VM total $(dt "$t0" "$t_end") s, all $(dt "$t_all" "$t_end") s ($accel); logs: $share${keep:+ and $keep}"
  return "$rc"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  _image-essential) image_essential "$2" ;;
  _image-customize) image_customize "$2" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//' ;;
  *) cmd_run "$@" ;;
esac
