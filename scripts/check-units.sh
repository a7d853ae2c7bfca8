#!/usr/bin/env bash
# check-units.sh -- `systemd-analyze verify` and the sandbox score of every spiced
# unit; fails if a unit does not verify or a service scores above 2.0.
#
#   scripts/check-units.sh              the units in systemd/ of this checkout
#   scripts/check-units.sh --installed  the units the .deb installed in
#                                       /usr/lib/systemd/system (CI, after dpkg -i)
#
# verify insists that every Exec*= binary exists. The repository's units name
# /usr/bin/spiced; when that is not installed they are checked as a copy whose
# /usr/bin/spiced is $SPICED_BIN (default target/debug/spiced; build it first).
# verify also runs `man` for every man: Documentation= link, so the man page is
# checked only with --installed (or when `man -w spiced` finds one).
# Only .service units are scored: a .path unit runs no process (what it starts
# is a service and is scored), and systemd-analyze would score it as one.
set -euo pipefail

me=check-units.sh
max=2.0
# --threshold counts in tenths of the printed exposure (0..100).
threshold=20
cd "$(dirname "$0")/.."

installed=0
for a in "$@"; do
  case "$a" in
    --installed) installed=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$me: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
analyze=$(PATH="$PATH:/usr/bin:/bin" command -v systemd-analyze) ||
  { echo "$me: systemd-analyze not found (Debian package systemd)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$installed" = 1 ]; then
  dir=/usr/lib/systemd/system
  man=yes
else
  dir=$tmp
  cp systemd/*.service systemd/*.path "$dir"/
  if [ ! -x /usr/bin/spiced ]; then
    bin=$(realpath -m "${SPICED_BIN:-target/debug/spiced}")
    [ -x "$bin" ] || { echo "$me: $bin missing: cargo build (or set SPICED_BIN)" >&2; exit 1; }
    sed -i "s#/usr/bin/spiced #$bin #" "$dir"/*.service
  fi
  if man -w spiced >/dev/null 2>&1; then man=yes; else man=no; fi
fi

# Templates are checked as an instance; "kiosk1" as in docs/systemd.md.
units=()
for f in "$dir"/spiced*.service "$dir"/spiced*.path; do
  [ -e "$f" ] || continue
  units+=("$(basename "$f" | sed 's/@\./@kiosk1./')")
done
[ ${#units[@]} -ge 4 ] || { echo "$me: expected 4 units in $dir, found: ${units[*]:-none}" >&2; exit 1; }

fail=0
for u in "${units[@]}"; do
  if out=$("$analyze" verify --man="$man" "$dir/$u" 2>&1) && [ -z "$out" ]; then
    echo "verify   $u: ok"
  else
    # verify exits 0 on some warnings; any output is a finding.
    echo "verify   $u: FAILED"; echo "$out" | sed 's/^/    /'
    fail=1
  fi
done
for u in "${units[@]}"; do
  case "$u" in *.service) ;; *) echo "security $u: not scored (runs no process)"; continue ;; esac
  set +e
  out=$("$analyze" security --offline=true --threshold="$threshold" "$dir/$u" 2>&1)
  rc=$?
  set -e
  line=$(echo "$out" | grep 'Overall exposure level' || true)
  echo "security $u: ${line:-no score}"
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "$out" | grep -E '✗' | sed 's/^/    /'
    echo "security $u: FAILED: exposure above $max (or no score)"
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "$me: ${#units[@]} units verified, every service at or below $max"
exit "$fail"
