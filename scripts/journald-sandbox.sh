#!/usr/bin/env bash
# journald-sandbox.sh: run a command against a real systemd-journald that lives
# only in a private mount namespace, so tests can check what spiced writes to
# the journal with journalctl, on a host (or container) without systemd as PID 1
# and without touching the host's journal.
#
#   scripts/journald-sandbox.sh [--keep DIR] [--catalog FILE] [--no-journald] -- CMD [ARG...]
#
#   --keep DIR      copy the journal files to DIR when CMD is done; read them
#                   with `journalctl --directory DIR`
#   --catalog FILE  install FILE as a message catalog inside the namespace and
#                   run `journalctl --update-catalog`: CMD's `journalctl -x`
#                   and `--dump-catalog` see it
#   --no-journald   the same namespace with an empty /run/systemd: the journal
#                   socket is absent (what a client must survive)
#
# Inside (new mount and PID namespaces): tmpfs on /run/systemd and /run/log
# (and the catalog database), a journald storing in /run/log/journal that
# neither reads the kernel log nor forwards anywhere, CMD with JOURNAL_SANDBOX=1. Afterwards journald is stopped
# (it flushes and closes its files on SIGTERM) before the files are copied.
# Killing this script's process kills CMD and journald with it. Needs root.
# Exit status: CMD's; 2 for a sandbox failure.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "journald-sandbox.sh: $*" >&2; exit 2; }

keep="" catalog="" journald=1
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) [ $# -ge 2 ] || die "--keep needs a directory"; keep=$(realpath -m -- "$2"); shift 2 ;;
    --catalog) [ $# -ge 2 ] || die "--catalog needs a file"; catalog=$(realpath -e -- "$2"); shift 2 ;;
    --no-journald) journald=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no command given (see --help)"

if [ -z "${JOURNAL_SANDBOX_INSIDE:-}" ]; then
  [ "$(id -u)" = 0 ] || die "needs root (it mounts in a private namespace)"
  JOURNALD=""
  for p in /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald; do
    [ -x "$p" ] && { JOURNALD=$p; break; }
  done
  [ -n "$JOURNALD" ] || [ "$journald" = 0 ] || die "systemd-journald not found (install systemd)"
  command -v unshare >/dev/null || die "unshare not found (install util-linux)"
  # Re-run this script in fresh mount and PID namespaces: the mounts vanish
  # with them, and when unshare dies (killed by a test that gave up on CMD) the
  # namespace's first process gets SIGKILL, which ends every process in it,
  # journald included. /proc is remounted so journald reads its clients'
  # metadata (_COMM, _EXE) by the pids it is given.
  export JOURNAL_SANDBOX_INSIDE=1 SANDBOX_KEEP="$keep" SANDBOX_CATALOG="$catalog" \
    SANDBOX_JOURNALD="$journald" SANDBOX_BIN="$JOURNALD"
  exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child \
    -- "$BASH" "$0" -- "$@"
fi

# ---- inside the namespace ----
unset JOURNAL_SANDBOX_INSIDE
mkdir -p /run/systemd /run/log
mount -t tmpfs -o mode=0755 sandbox-systemd /run/systemd
mount -t tmpfs -o mode=0755 sandbox-log /run/log
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d /run/log/journal
# The last drop-in wins: volatile storage, no kernel log, no forwarding.
cat >/run/systemd/journald.conf.d/zz-sandbox.conf <<'EOF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
EOF

if [ -n "$SANDBOX_CATALOG" ]; then
  # journalctl reads catalogs from /usr/lib/systemd/catalog (and /usr/local);
  # here that directory holds FILE alone, and the database is the namespace's.
  [ -d /usr/lib/systemd/catalog ] && [ -d /var/lib/systemd/catalog ] ||
    die "no /usr/lib/systemd/catalog or /var/lib/systemd/catalog to mount over"
  mkdir -p /run/systemd/catalog /run/systemd/catalog-db
  cp -- "$SANDBOX_CATALOG" /run/systemd/catalog/
  mount --bind /run/systemd/catalog /usr/lib/systemd/catalog
  mount --bind /run/systemd/catalog-db /var/lib/systemd/catalog
  journalctl --update-catalog || die "journalctl --update-catalog failed"
fi

jd=""
if [ "$SANDBOX_JOURNALD" = 1 ]; then
  # Not CMD's supervisor: journald must not answer CMD's NOTIFY_SOCKET.
  env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID "$SANDBOX_BIN" </dev/null >/dev/null 2>&1 &
  jd=$!
  # journald binds its sockets before it serves; 5 s is ample on a busy CI box.
  if ! timeout 5 bash -c 'until [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/stdout ]; do
          kill -0 '"$jd"' 2>/dev/null || exit 1; sleep 0.02; done'; then
    kill "$jd" 2>/dev/null || true
    die "systemd-journald did not come up"
  fi
fi

set +e
JOURNAL_SANDBOX=1 "$@"
rc=$?
set -e

if [ -n "$jd" ]; then
  kill -TERM "$jd" 2>/dev/null || true
  wait "$jd" 2>/dev/null || true
fi
if [ -n "$SANDBOX_KEEP" ]; then
  mkdir -p -- "$SANDBOX_KEEP"
  find /run/log/journal -name '*.journal' -exec cp -- {} "$SANDBOX_KEEP"/ \;
fi
exit "$rc"
