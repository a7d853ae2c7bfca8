#!/usr/bin/env bash
# install-deps.sh -- install the Debian packages spiced's tests and demo need.
#
# Idempotent and noninteractive; run as root (CI runs it from .ci/run). apt is not
# touched at all when every package is already installed, so a re-run takes well
# under a second.
#   server side:      qemu-system-x86 (QEMU + spice-server), openssl (test certs),
#                     binutils (assembles the display-load guest, tests/guest/)
#   fault injection:  tinyproxy (HTTP CONNECT proxy), nftables + iproute2 (netns
#                     black hole), procps
#   traffic reading:  tshark (SPICE dissector)
#   reference client: python3-gi gir1.2-spiceclientglib-2.0 spice-client-gtk
#   a real X desktop: xserver-xspice (Xorg + spiceqxl), xterm, x11-apps
#                     (x11perf, xwd, xwud), x11-xserver-utils (xsetroot),
#                     xdotool (tests/xspice_display.rs)
#   packaging:        dpkg-dev (dpkg-shlibdeps), man-db (`man spiced` after
#                     dpkg -i), systemd (systemd-analyze: verify, security;
#                     journald + journalctl for scripts/journald-sandbox.sh)
#   metrics reader:   prometheus-node-exporter (its textfile collector parses
#                     spiced's metrics file in tests/qemu_control.rs)
#   alerting rules:   prometheus (promtool: check and unit-test
#                     contrib/prometheus/, tests/alert_rules.rs)
#   central journal:  systemd-journal-remote (systemd-journal-upload and
#                     -remote, tests/journal_upload.rs)
#   kiosk VM:         mmdebstrap (scripts/kiosk-vm.sh builds its Debian 12
#                     image from this machine's apt mirror; e2fsprogs'
#                     mkfs.ext4 -d makes the disk)
#   plus ca-certificates.
# --check: install nothing, list what is missing, exit 1 if anything is.
set -euo pipefail

me=install-deps.sh
pkgs=(qemu-system-x86 binutils openssl tshark tinyproxy nftables iproute2 ca-certificates procps
  python3-gi gir1.2-spiceclientglib-2.0 spice-client-gtk dpkg-dev man-db systemd
  prometheus-node-exporter prometheus systemd-journal-remote mmdebstrap e2fsprogs
  xserver-xspice xterm x11-apps x11-xserver-utils xdotool)
check=0
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$me: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The programs the tests run, in case a package is installed but broken or renamed.
for c in qemu-system-x86_64 openssl tshark tinyproxy nft ip systemd-analyze man dpkg-shlibdeps prometheus-node-exporter promtool mmdebstrap mkfs.ext4; do
  command -v "$c" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null ||
    echo "$me: note: $c not found on PATH" >&2
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$me: all ${#pkgs[@]} packages present"
  exit 0
fi
if [ "$check" = 1 ]; then echo "$me: missing: ${missing[*]}"; exit 1; fi
[ "$(id -u)" = 0 ] || { echo "$me: must run as root to install: ${missing[*]}" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture: answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
# Packages with daemons (tinyproxy, prometheus-node-exporter, prometheus, systemd-journal-remote) must not start them: the tests run their own.
# Only when the image has no policy of its own, and removed again afterwards.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
t0=$(date +%s)
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
echo "$me: installed ${missing[*]} in $(( $(date +%s) - t0 )) s"
