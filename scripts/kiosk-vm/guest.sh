#!/bin/bash
# scripts/kiosk-vm/guest.sh -- the kiosk scenario, run as root inside the VM of
# scripts/kiosk-vm.sh by kiosk-run.service after multi-user.target, on every
# boot (the reboot step continues it on the second). Every step asserts what it
# claims; a failed assertion ends that step (it runs in a subshell) and the
# next one starts from a known state.
#
# The share (/mnt/share): kiosk.env (ports, XFAIL and --only lists), the .deb,
# kiosk-host (asks the host to kill/start a SPICE server or count its
# channels). Results: out/results ("step|PASS|secs|note", one line a step, as
# it finishes), out/step-NAME.log (what each assertion saw), out/journal-*.txt,
# out/started, out/finished, out/scenario-secs.
#
# Test-only settings, so the scenario fits in minutes (each said where used):
# a drop-in with RestartSec=3s and WatchdogSec=8s for spiced@ (the shipped 30 s
# and 60 s would add minutes; the start limit, StartLimitBurst=10 per 10 min,
# is the shipped one), and kiosk TOMLs with a shorter back-off (1 s, x2, 3
# attempts: exit 69 after ~7 s instead of ~21 s) and connect_timeout 8 s.
set -u
S=/mnt/share
O=$S/out
STATE=/var/lib/kiosk-vm # on the guest's disk: survives the reboot
# shellcheck source=/dev/null
. "$S/kiosk.env"
export PATH=$S:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0 LC_ALL=C
mkdir -p "$STATE" "$O"

A=$PORT_A B=$PORT_B SILENT=$PORT_SILENT
MSG_ESTABLISHED=8c9e2c33f98b4ec9abd3b4fb967c4460
MSG_LOST=e400c9d5596d411e812fc88a2ad2600f
MSG_REPORT=1633e30ec1bc42eb9d0be63fcd830937
MSG_GAVE_UP=cbce9c442af64a538cb61803a1cec844
PROM=/var/lib/prometheus/node-exporter

# ---------------------------------------------------------------- helpers

us() { T=${EPOCHREALTIME/./}; }           # T = now in microseconds (no fork)
secs() { # secs FROM_US [TO_US]: seconds between, one decimal
  local to=${2:-${EPOCHREALTIME/./}} d
  d=$((to - $1))
  printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10))
}
ok() { echo "ok: $*"; }
note() { echo "NOTE: $*"; }
fail() {
  echo "FAIL: $*"
  {
    echo "--- at the failure:"
    for u in spiced@kiosk1.service spiced@kiosk1.path spiced-reload@kiosk1.service; do
      echo "$u: $(props "$u")"
    done
    echo "--- journal since the step began:"
    journalctl -q --no-pager --after-cursor="$STEP_CURSOR" -o short-monotonic | grep -v ' kernel: ' | tail -n 60
  } 2>&1
  exit 1
}
# expect DESC CMD...: CMD must succeed.
expect() { local d=$1; shift; "$@" || fail "$d"; ok "$d"; }
# expect_eq DESC GOT WANT
expect_eq() { [ "$2" = "$3" ] || fail "$1: '$2', expected '$3'"; ok "$1: $2"; }
# waitfor SECS DESC CMD...: CMD every 0.1 s until it succeeds (WAITED = the
# seconds it took), else the step fails.
waitfor() {
  local t=$1 d=$2 s=${EPOCHREALTIME/./}
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $((${EPOCHREALTIME/./} - s)) -lt $((t * 1000000)) ] || fail "$d: not within $t s"
    sleep 0.1
  done
  WAITED=$(secs "$s")
  ok "$d (${WAITED} s)"
}

prop() { systemctl show -p "$2" --value "$1"; }
props() { systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID,ExecMainStatus,StatusText "$1" | paste -sd' '; }
state_is() { [ "$(prop "$1" ActiveState)/$(prop "$1" SubState)" = "$2" ]; }
substate_in() { local s x; s=$(prop "$1" SubState); shift; for x; do [ "$s" = "$x" ] && return 0; done; return 1; }
main_pid_not() { local p; p=$(prop "$1" MainPID); [ "$p" != 0 ] && [ "$p" != "$2" ]; }
status_json() { spiced status "$1" --json 2>/dev/null; }
connected() { [ "$(status_json "$1" | jq -r .state)" = connected ]; }
# channels X: SPICE channels connected to server X, as the server sees them (QMP).
channels() { kiosk-host channels "$1"; }
channels_at_least() { [ "$(channels "$1")" -ge "$2" ]; }
channels_are() { [ "$(channels "$1")" = "$2" ]; }
# vv NAME PORT [LINE...]: a .vv for server PORT (on the host's loopback).
vv() { local port=$2; shift 2; printf '[virt-viewer]\ntype=spice\nhost=10.0.2.2\nport=%s\n' "$port"; [ $# -gt 0 ] && printf '%s\n' "$@"; }
# produce NAME PORT [LINE...]: what a producer does (docs/systemd.md): the
# instance's directory, a temp file in it, 0600, rename(2) over console.vv.
produce() {
  local name=$1 dir=/run/spiced/$1 tmp
  (
    umask 077
    mkdir -p "$dir"
    tmp=$(mktemp "$dir/.console.vv.XXXXXX")
    vv "$@" > "$tmp"
    mv -f "$tmp" "$dir/console.vv"
  )
}
cursor() { journalctl -q -n 1 -o cat --show-cursor | sed -n 's/^-- cursor: //p'; }
# Entries after a cursor, as JSON lines. Filtered here, not by journalctl:
# journalctl 252 with --after-cursor and a match skips the first match.
since() { journalctl -q --no-pager --after-cursor="$1" -o json; }
count_since() { since "$1" | grep -c -E -- "$2"; }
seen_since() { since "$1" | grep -q -E -- "$2"; }
established_since() { # CURSOR [INSTANCE]: a session established since
  since "$1" | jq -c --arg i "${2:-kiosk1}" "select(.MESSAGE_ID == \"$MSG_ESTABLISHED\" and .SPICED_INSTANCE == \$i)" | grep -q .
}
# the monotonic time (s) of the first entry after a cursor matching ERE
mono_of() { since "$1" | grep -m1 -E -- "$2" | jq -r '.__MONOTONIC_TIMESTAMP | tonumber / 1000000'; }
scrape() { curl -sf --max-time 5 http://127.0.0.1:9100/metrics; }
session_up_scraped() { scrape | grep -qx "spiced_session_up{spiced_instance=\"$1\"} ${2:-1}"; }

kiosk_toml() { # kiosk_toml NAME: its options (test-only timings: see the top)
  cat <<EOF
[reconnect]
initial_delay_secs = 1.0
factor = 2.0
max_attempts = 3

[keepalive]
connect_timeout_secs = 8.0

[metrics]
textfile = "$PROM/spiced-$1.prom"

[control]
socket = "/run/spiced/$1/control.sock"
EOF
}

# kiosk1 running and connected to A, whatever the previous step left.
kiosk1_up() {
  if state_is spiced@kiosk1.service active/running && connected kiosk1; then return 0; fi
  echo "(bringing kiosk1 up again: $(props spiced@kiosk1.service))"
  systemctl stop spiced@kiosk1.service
  systemctl reset-failed spiced@kiosk1.service spiced@kiosk1.path spiced-reload@kiosk1.service 2>/dev/null
  kiosk_toml kiosk1 > /etc/spiced/kiosk1.toml
  [ -n "$(kiosk-host pid A)" ] || kiosk-host start A > /dev/null
  systemctl start spiced@kiosk1.path
  produce kiosk1 "$A"
  waitfor 60 "kiosk1 up" connected kiosk1
}

# ---------------------------------------------------------------- the steps

step_install() {
  local deb
  deb=$(ls "$S"/spiced_*.deb)
  expect "dpkg -i $(basename "$deb")" dpkg -i "$deb"
  expect "spiced --version" spiced --version
  local files
  files=$(systemctl list-unit-files 'spiced*' --no-legend | awk '{print $1"="$2}' | sort | paste -sd' ')
  expect_eq "units installed, none enabled" "$files" \
    "spiced-reload@.service=static spiced.service=disabled spiced@.path=disabled spiced@.service=disabled"
  expect_eq "/run/spiced (tmpfiles, postinst)" "$(stat -c '%a %U' /run/spiced)" "700 root"
  expect_eq "/run/spiced/default (tmpfiles)" "$(stat -c '%a %U' /run/spiced/default)" "700 root"
  expect "the journal catalog (postinst)" sh -c "journalctl --list-catalog | grep -q $MSG_ESTABLISHED"
  local v
  v=$(systemd-analyze verify --man=no spiced@kiosk1.service spiced@kiosk1.path spiced-reload@kiosk1.service spiced.service 2>&1)
  expect_eq "systemd-analyze verify (systemd 252)" "$v" ""
  local u score
  for u in spiced@kiosk1.service spiced.service spiced-reload@kiosk1.service; do
    score=$(systemd-analyze security "$u" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    expect "$u exposure $score <= 2.0" awk -v s="$score" 'BEGIN{exit !(s != "" && s <= 2.0)}'
  done
  # Test-only: shorter restart and watchdog delays (the top of this file).
  mkdir -p /etc/systemd/system/spiced@.service.d
  printf '[Service]\nRestartSec=3s\nWatchdogSec=8s\n' > /etc/systemd/system/spiced@.service.d/kiosk-vm.conf
  systemctl daemon-reload
  expect_eq "shipped StartLimitBurst (not changed by the test)" "$(prop spiced@kiosk1.service StartLimitBurst)" 10
  expect_eq "shipped StartLimitIntervalSec" "$(prop spiced@kiosk1.service StartLimitIntervalUSec)" 10min
  expect_eq "spiced-reload@ has no start limit" "$(prop spiced-reload@kiosk1.service StartLimitIntervalUSec)" "0"
  expect_eq "the path unit has no trigger limit" "$(prop spiced@kiosk1.path TriggerLimitIntervalUSec)" "0"
  # The network: only the test's ports of the host are reachable.
  expect "10.0.2.2:A reachable" timeout 5 bash -c "exec 3<>/dev/tcp/10.0.2.2/$A"
  if timeout 3 bash -c "exec 3<>/dev/tcp/10.0.2.2/$PORT_UNFORWARDED" 2>/dev/null; then
    fail "10.0.2.2:$PORT_UNFORWARDED (listening on the host, not forwarded) is reachable"
  fi
  ok "a listening host port that is not forwarded is out of reach"
  note "exposure: $(for u in spiced@kiosk1.service spiced.service spiced-reload@kiosk1.service; do systemd-analyze security "$u" | sed -n 's/.*level for \([^:]*\): \([0-9.]*\).*/\1 \2/p'; done | paste -sd',')"
}

step_first_start() {
  mkdir -p /etc/spiced
  kiosk_toml kiosk1 > /etc/spiced/kiosk1.toml
  vv kiosk1 "$A" > /tmp/kiosk1.vv
  expect "spiced --check with kiosk1.toml" spiced --vv /tmp/kiosk1.vv --config /etc/spiced/kiosk1.toml --check
  expect "systemctl enable --now spiced@kiosk1.path" systemctl enable --now spiced@kiosk1.path
  expect "path unit watching" state_is spiced@kiosk1.path active/waiting
  [ ! -e /run/spiced/kiosk1 ] || fail "/run/spiced/kiosk1 exists before the producer made it"
  local c t0 pid
  c=$(cursor); us; t0=$T
  produce kiosk1 "$A"
  waitfor 60 "the renamed .vv starts spiced@kiosk1 (READY)" state_is spiced@kiosk1.service active/running
  local ready=$WAITED
  expect_eq "spiced-reload@ ran" "$(count_since "$c" '"MESSAGE":"Finished spiced-reload@kiosk1.service')" 1
  waitfor 20 "STATUS= says connected" sh -c "systemctl show -p StatusText --value spiced@kiosk1.service | grep -q '^connected: 11 channels'"
  waitfor 20 "the host's QMP sees 11 channels" channels_are A 11
  expect_eq ".vv kept (not single-use), 0600" "$(stat -c '%a' /run/spiced/kiosk1/console.vv)" 600
  expect_eq "instance directory" "$(stat -c '%a %U' /run/spiced/kiosk1)" "700 root"
  expect_eq "control socket" "$(stat -c '%a %F' /run/spiced/kiosk1/control.sock)" "600 socket"
  pid=$(prop spiced@kiosk1.service MainPID)
  echo "$pid" > "$STATE/kiosk1.pid"
  note "rename -> READY ${ready} s; $(prop spiced@kiosk1.service StatusText)"
}

step_node_exporter() {
  kiosk1_up
  local pid user
  expect "prometheus-node-exporter active" systemctl is-active -q prometheus-node-exporter
  pid=$(prop prometheus-node-exporter.service MainPID)
  user=$(ps -o user= -p "$pid")
  expect_eq "node_exporter runs as its own user (Debian's unit)" "$user" prometheus
  expect_eq "the textfile directory" "$(stat -c '%U %a' $PROM)" "root 755"
  waitfor 30 "spiced-kiosk1.prom written" test -s $PROM/spiced-kiosk1.prom
  expect_eq "its mode (node_exporter must read it)" "$(stat -c '%a' $PROM/spiced-kiosk1.prom)" 644
  waitfor 30 "scraped over HTTP: spiced_session_up{spiced_instance=\"kiosk1\"} 1" session_up_scraped kiosk1
  expect "node_textfile_scrape_error 0" sh -c "curl -sf http://127.0.0.1:9100/metrics | grep -qx 'node_textfile_scrape_error 0'"
  note "$(scrape | grep -c '^spiced_') spiced_ samples scraped"
}

step_status() {
  kiosk1_up
  local out rc
  out=$(spiced status kiosk1); rc=$?
  echo "$out"
  expect_eq "spiced status kiosk1: exit" "$rc" 0
  expect "spiced status kiosk1 says connected" sh -c "spiced status kiosk1 | grep -q connected"
  expect_eq "spiced status --json: state" "$(status_json kiosk1 | jq -r .state)" connected
  expect_eq "spiced status --json: instance" "$(status_json kiosk1 | jq -r .instance)" kiosk1
  note "$(echo "$out" | head -n1)"
}

step_legacy_path() {
  # A producer of the old layout (/run/spiced/NAME.vv) still reaches spiced.
  kiosk1_up
  local c pid tvu
  pid=$(prop spiced@kiosk1.service MainPID)
  tvu=$(( $(date +%s) + 86400 ))
  c=$(cursor)
  (umask 077; t=$(mktemp /run/spiced/.kiosk1.XXXXXX); vv kiosk1 "$A" "ticket-valid-until=$tvu" > "$t"; mv -f "$t" /run/spiced/kiosk1.vv)
  waitfor 30 "the old-place .vv is used (its ticket-valid-until)" sh -c "[ \"\$(spiced status kiosk1 --json | jq -r .ticket_valid_until)\" = $tvu ]"
  expect "moved into the instance's directory" test ! -e /run/spiced/kiosk1.vv
  expect "as console.vv" grep -q "ticket-valid-until=$tvu" /run/spiced/kiosk1/console.vv
  expect_eq "same process (a reload)" "$(prop spiced@kiosk1.service MainPID)" "$pid"
  waitfor 30 "connected again" connected kiosk1
}

step_server_restart() {
  kiosk1_up
  local c pid nr t0 tl te rep
  pid=$(prop spiced@kiosk1.service MainPID); nr=$(prop spiced@kiosk1.service NRestarts)
  c=$(cursor)
  expect "host: server A restarted" kiosk-host restart A
  waitfor 60 "session re-established" established_since "$c"
  tl=$(mono_of "$c" "\"MESSAGE_ID\":\"$MSG_LOST\""); te=$(mono_of "$c" "\"MESSAGE_ID\":\"$MSG_ESTABLISHED\"")
  expect_eq "same MainPID (reconnected in the process)" "$(prop spiced@kiosk1.service MainPID)" "$pid"
  expect_eq "NRestarts" "$(prop spiced@kiosk1.service NRestarts)" "$nr"
  waitfor 30 "the host's QMP sees 11 channels again" channels_are A 11
  waitfor 30 "a disconnect report" sh -c 'ls /var/lib/spiced/kiosk1/reports/*.zip'
  rep=$(ls -t /var/lib/spiced/kiosk1/reports/*.zip | head -n1)
  expect "spiced report reads it" sh -c "spiced report '$rep' > /dev/null"
  note "lost -> established $(awk -v a="$tl" -v b="$te" 'BEGIN{printf "%.1f", b-a}') s; report $(basename "$rep")"
}

step_server_gone() {
  kiosk1_up
  local c pid nr tx tr
  pid=$(prop spiced@kiosk1.service MainPID); nr=$(prop spiced@kiosk1.service NRestarts)
  c=$(cursor)
  expect "host: server A killed" kiosk-host kill A
  waitfor 60 "spiced gives up: exit 69" sh -c "systemctl show -p ExecMainStatus --value spiced@kiosk1.service | grep -qx 69"
  local gave=$WAITED
  waitfor 30 "systemd restarts it (69 is not in RestartPreventExitStatus=)" main_pid_not spiced@kiosk1.service "$pid"
  tx=$(mono_of "$c" '"MESSAGE":"spiced@kiosk1.service: Main process exited'); tr=$(mono_of "$c" '"MESSAGE":"spiced@kiosk1.service: Scheduled restart job')
  expect "restarted after RestartSec (3 s in the test drop-in)" awk -v a="$tx" -v b="$tr" 'BEGIN{d=b-a; exit !(d >= 2.9 && d < 6)}'
  expect_eq "NRestarts" "$(prop spiced@kiosk1.service NRestarts)" $((nr + 1))
  waitfor 30 "READY while the server is still down (not stuck activating)" state_is spiced@kiosk1.service active/running
  local pid2 c2
  pid2=$(prop spiced@kiosk1.service MainPID)
  c2=$(cursor)
  expect "host: server A started" kiosk-host start A
  waitfor 60 "the restarted spiced connects" established_since "$c2"
  expect_eq "no further restart" "$(prop spiced@kiosk1.service MainPID)" "$pid2"
  waitfor 30 "the host's QMP sees 11 channels" channels_are A 11
  note "kill -> exit 69 ${gave} s; exit -> restart $(awk -v a="$tx" -v b="$tr" 'BEGIN{printf "%.1f", b-a}') s"
}

step_single_use() {
  kiosk1_up
  local c nr pid
  c=$(cursor)
  produce kiosk1 "$A" delete-this-file=1
  waitfor 30 "the sandboxed spiced deleted the single-use .vv" test ! -e /run/spiced/kiosk1/console.vv
  waitfor 30 "and connected with it" established_since "$c"
  waitfor 30 "connected" connected kiosk1
  expect_eq "the deletion started no reload (ConditionPathExists=)" \
    "$(count_since "$c" '"MESSAGE":"Finished spiced-reload@kiosk1.service')" 1
  nr=$(prop spiced@kiosk1.service NRestarts); pid=$(prop spiced@kiosk1.service MainPID)
  c=$(cursor)
  expect "host: server A restarted" kiosk-host restart A
  waitfor 30 "the ticket is used up: exit 77" sh -c "systemctl show -p ExecMainStatus --value spiced@kiosk1.service | grep -qx 77"
  waitfor 10 "failed" state_is spiced@kiosk1.service failed/failed
  # Not restarted: RestartPreventExitStatus=77 (watched for RestartSec + 2 s).
  sleep 5
  expect "still failed after RestartSec + 2 s" state_is spiced@kiosk1.service failed/failed
  expect_eq "NRestarts" "$(prop spiced@kiosk1.service NRestarts)" "$nr"
  expect "a give-up line" seen_since "$c" "\"MESSAGE_ID\":\"$MSG_GAVE_UP\""
  c=$(cursor)
  produce kiosk1 "$A"
  waitfor 60 "a fresh .vv starts it again" connected kiosk1
  main_pid_not spiced@kiosk1.service "$pid" || fail "same MainPID"
}

step_bad_config() {
  kiosk1_up
  local c
  printf '\n[bogus]\nnot_an_option = 1\n' >> /etc/spiced/kiosk1.toml
  c=$(cursor)
  systemctl restart spiced@kiosk1.service
  waitfor 30 "exit 78" sh -c "systemctl show -p ExecMainStatus --value spiced@kiosk1.service | grep -qx 78"
  waitfor 10 "failed, no restart" state_is spiced@kiosk1.service failed/failed
  local line
  line=$(since "$c" | jq -c 'select(.SYSLOG_IDENTIFIER == "spiced" and (.PRIORITY | tonumber) <= 3)' | head -n1)
  echo "$line"
  [ -n "$line" ] || fail "no error-priority (<= 3) journal entry from spiced"
  echo "$line" | jq -r .MESSAGE | grep -q 'kiosk1.toml' || fail "the error line does not name kiosk1.toml"
  ok "an error-priority journal line naming kiosk1.toml: $(echo "$line" | jq -r .MESSAGE | cut -c1-120)"
  expect "journalctl -u spiced@kiosk1 -p err shows it" sh -c "journalctl -u spiced@kiosk1.service -p err -o cat | grep -q kiosk1.toml"
  kiosk_toml kiosk1 > /etc/spiced/kiosk1.toml
  produce kiosk1 "$A"
  waitfor 60 "fixed config + a fresh .vv: running again" connected kiosk1
}

step_watchdog() {
  kiosk1_up
  local c pid nr t0 tw
  pid=$(prop spiced@kiosk1.service MainPID); nr=$(prop spiced@kiosk1.service NRestarts)
  expect_eq "WatchdogUSec (test drop-in)" "$(prop spiced@kiosk1.service WatchdogUSec)" 8s
  c=$(cursor); t0=$(awk '{print $1}' /proc/uptime)
  kill -STOP "$pid"
  waitfor 40 "watchdog timeout" seen_since "$c" '"MESSAGE":"spiced@kiosk1.service: Watchdog timeout'
  tw=$(mono_of "$c" '"MESSAGE":"spiced@kiosk1.service: Watchdog timeout')
  waitfor 40 "restarted" main_pid_not spiced@kiosk1.service "$pid"
  waitfor 60 "connected again" connected kiosk1
  expect_eq "NRestarts" "$(prop spiced@kiosk1.service NRestarts)" $((nr + 1))
  note "SIGSTOP -> watchdog $(awk -v a="$t0" -v b="$tw" 'BEGIN{printf "%.1f", b-a}') s"
}

step_stop() {
  kiosk1_up
  local t0 rc
  us; t0=$T
  systemctl stop spiced@kiosk1.service; rc=$?
  local took
  took=$(secs "$t0")
  expect_eq "systemctl stop: exit" "$rc" 0
  expect "under 2 s (${took} s)" awk -v d="$took" 'BEGIN{exit !(d < 2)}'
  expect_eq "Result" "$(prop spiced@kiosk1.service Result)" success
  expect_eq "exit status" "$(prop spiced@kiosk1.service ExecMainStatus)" 0
  waitfor 10 "the server sees no channel" channels_are A 0
  note "stop ${took} s"
}

rereads_since() { count_since "$1" '"MESSAGE":"SIGHUP: re-reading'; }
rereads_at_least() { [ "$(rereads_since "$1")" -ge "$2" ]; }

step_reload_burst() {
  # Fresh tickets in quick succession (spiced-reload@'s start limit): every
  # one must reach spiced, the last one last, and the path unit keep watching.
  kiosk1_up
  local c pid base i last reads t0
  pid=$(prop spiced@kiosk1.service MainPID)
  # 8 files, each as soon as spiced re-read the one before: 8 runs of
  # spiced-reload@ as fast as they go (systemd's default limit, 5 in 10 s,
  # refused the sixth and failed the path unit for good).
  c=$(cursor); us; t0=$T
  for i in $(seq 1 8); do
    produce kiosk1 "$A" "# file $i"
    waitfor 30 "file $i re-read by spiced" rereads_at_least "$c" "$i"
  done
  ok "8 files, each re-read by spiced, in $(secs "$t0") s"
  expect_eq "spiced-reload@ runs" "$(count_since "$c" '"MESSAGE":"Finished spiced-reload@kiosk1.service')" 8
  base=$(( $(date +%s) + 86400 ))
  c=$(cursor)
  for i in $(seq 1 10); do
    last=$((base + i))
    produce kiosk1 "$A" "ticket-valid-until=$last"
    sleep 0.5
  done
  waitfor 30 "spiced uses the last of 10 .vv files written 0.5 s apart" \
    sh -c "[ \"\$(spiced status kiosk1 --json | jq -r .ticket_valid_until)\" = $last ]"
  waitfor 30 "path unit watching again" state_is spiced@kiosk1.path active/waiting
  expect_eq "path unit result" "$(prop spiced@kiosk1.path Result)" success
  expect_eq "spiced-reload@ result" "$(prop spiced-reload@kiosk1.service Result)" success
  [ "$(count_since "$c" 'repeated too quickly|start-limit-hit')" = 0 ] || fail "a start limit was hit"
  ok "no start limit hit"
  reads=$(count_since "$c" '"MESSAGE":"SIGHUP: new connection settings')
  expect_eq "one process throughout" "$(prop spiced@kiosk1.service MainPID)" "$pid"
  # Without any pause: the path unit may fold files written while
  # spiced-reload@ runs into one reload, but must keep watching.
  c=$(cursor)
  for i in $(seq 1 20); do produce kiosk1 "$A" "ticket-valid-until=$((base + 100 + i))"; done
  waitfor 30 "20 files without a pause: the path unit keeps watching" state_is spiced@kiosk1.path active/waiting
  [ "$(count_since "$c" 'repeated too quickly|start-limit-hit|trigger-limit-hit')" = 0 ] || fail "a start or trigger limit was hit"
  last=$((base + 1000))
  sleep 1
  produce kiosk1 "$A" "ticket-valid-until=$last"
  waitfor 30 "the next file is used" sh -c "[ \"\$(spiced status kiosk1 --json | jq -r .ticket_valid_until)\" = $last ]"
  waitfor 30 "connected" connected kiosk1
  note "10 files 0.5 s apart: $reads reads by spiced (files written while spiced-reload@ ran fold into the next)"
}

step_start_limit() {
  # Ten failed starts (bad .vv files, exit 78) within the 10-minute window
  # reach StartLimitBurst=10; an eleventh, good .vv must still start it.
  kiosk1_up
  systemctl stop spiced@kiosk1.service
  systemctl reset-failed spiced@kiosk1.service
  local c i ts
  c=$(cursor)
  for i in $(seq 1 10); do
    ts=$(prop spiced@kiosk1.service ExecMainStartTimestampMonotonic)
    (umask 077; t=$(mktemp /run/spiced/kiosk1/.console.vv.XXXXXX); printf '[virt-viewer]\ntype=spice\n' > "$t"; mv -f "$t" /run/spiced/kiosk1/console.vv)
    waitfor 30 "bad .vv $i: started and failed (78)" sh -c "[ \"\$(systemctl show -p ExecMainStartTimestampMonotonic --value spiced@kiosk1.service)\" != '$ts' ] && systemctl show -p SubState --value spiced@kiosk1.service | grep -qx failed"
  done
  expect_eq "10 starts, each exit 78" "$(count_since "$c" 'status=78/CONFIG')" 10
  produce kiosk1 "$A"
  waitfor 60 "the good 11th .vv starts it" connected kiosk1
  [ "$(count_since "$c" 'repeated too quickly')" = 0 ] || fail "Start request repeated too quickly"
  ok "no start-limit refusal"
}

step_restart_bound() {
  # ...while systemd's own restarts stay bounded: kiosk3 against a server that
  # is down gives up at once (max_attempts = 1) and is restarted at once
  # (RestartSec=100ms: its own drop-in) until the start limit stops it; a
  # fresh .vv starts it.
  expect "host: server B killed" kiosk-host kill B
  mkdir -p /etc/systemd/system/spiced@kiosk3.service.d
  printf '[Service]\nRestartSec=100ms\n' > /etc/systemd/system/spiced@kiosk3.service.d/kiosk-vm.conf
  systemctl daemon-reload
  { kiosk_toml kiosk3 | sed 's/^max_attempts = 3$/max_attempts = 1/'; } > /etc/spiced/kiosk3.toml
  local c
  c=$(cursor)
  systemctl enable --now spiced@kiosk3.path
  produce kiosk3 "$B"
  waitfor 120 "restarted until the start limit refuses" seen_since "$c" '"MESSAGE":"spiced@kiosk3.service: Start request repeated too quickly'
  local took=$WAITED starts
  waitfor 10 "and left failed" state_is spiced@kiosk3.service failed/failed
  starts=$(count_since "$c" '"MESSAGE":"Starting spiced@kiosk3.service')
  expect_eq "StartLimitBurst=10: starts" "$starts" 10
  expect "host: server B started" kiosk-host start B
  produce kiosk3 "$B"
  waitfor 60 "a fresh .vv starts it again" connected kiosk3
  systemctl disable --now spiced@kiosk3.path
  systemctl stop spiced@kiosk3.service
  note "$starts starts, then 'Start request repeated too quickly' (${took} s)"
}

step_reload_while_activating() {
  # A .vv rewritten while spiced@ is still in its start job (before READY):
  # systemd merges the reload into the start job, so spiced itself must notice.
  kiosk1_up
  systemctl stop spiced@kiosk1.service
  local c pid nr
  c=$(cursor)
  produce kiosk1 "$SILENT"
  waitfor 30 "spiced linking to the silent server" seen_since "$c" '"MESSAGE":"connecting to 10.0.2.2'
  expect "still activating (in its start job)" state_is spiced@kiosk1.service activating/start
  pid=$(prop spiced@kiosk1.service MainPID); nr=$(prop spiced@kiosk1.service NRestarts)
  produce kiosk1 "$A"
  expect "still activating when the new .vv is written" state_is spiced@kiosk1.service activating/start
  # connect_timeout 8 s: READY by then; 12 s more to link to A.
  waitfor 20 "the new .vv is used: connected to server A" connected kiosk1
  expect_eq "without a restart" "$(prop spiced@kiosk1.service MainPID)" "$pid"
  expect_eq "NRestarts" "$(prop spiced@kiosk1.service NRestarts)" "$nr"
  waitfor 20 "the host's QMP sees 11 channels" channels_are A 11
}

step_two_instances() {
  kiosk1_up
  mkdir -p /etc/spiced
  kiosk_toml kiosk2 > /etc/spiced/kiosk2.toml
  [ -n "$(kiosk-host pid B)" ] || kiosk-host start B > /dev/null
  expect "enable --now spiced@kiosk2.path" systemctl enable --now spiced@kiosk2.path
  produce kiosk2 "$B"
  waitfor 60 "kiosk2 connected" connected kiosk2
  expect "kiosk1 still connected" connected kiosk1
  waitfor 20 "server A sees kiosk1's 11 channels" channels_are A 11
  waitfor 20 "server B sees kiosk2's 11 channels" channels_are B 11
  waitfor 30 "both scraped: kiosk1" session_up_scraped kiosk1
  waitfor 30 "both scraped: kiosk2" session_up_scraped kiosk2
  expect "separate reports" test -d /var/lib/spiced/kiosk2
  # Each instance sees and writes only its own directory under /run.
  local me other pid
  for me in kiosk1 kiosk2; do
    other=kiosk1; [ "$me" = kiosk1 ] && other=kiosk2
    pid=$(prop "spiced@$me.service" MainPID)
    echo "$me's mounts under /run:"; awk '$5 ~ "^/run" {print "  " $5, $6, $9, $10, $11}' "/proc/$pid/mountinfo"
    expect_eq "$me: /run/spiced in its sandbox" "$(nsenter -t "$pid" -m ls -A /run/spiced | paste -sd' ')" "$me"
    expect "$me: its own directory is writable" nsenter -t "$pid" -m sh -c "touch /run/spiced/$me/.w && rm /run/spiced/$me/.w"
    if nsenter -t "$pid" -m sh -c "ls /run/spiced/$other" 2>/dev/null; then fail "$me sees $other's directory"; fi
    ok "$me: $other's .vv and socket are out of sight"
    for f in /run/spiced/x /run/systemd/x /run/x /etc/x; do
      if nsenter -t "$pid" -m sh -c "touch $f" 2>/dev/null; then fail "$me could write $f"; fi
    done
    ok "$me: /run, /run/systemd, /run/spiced, /etc read-only"
  done
  # The single-session unit: the old /run/console.vv moved into its own
  # directory, the same sandbox.
  (umask 077; vv x "$SILENT" > /run/console.vv)
  systemctl start --no-block spiced.service
  waitfor 30 "spiced.service running" sh -c "[ \"\$(systemctl show -p MainPID --value spiced.service)\" != 0 ]"
  expect "/run/console.vv moved to /run/spiced/default/console.vv" sh -c "test ! -e /run/console.vv && test -e /run/spiced/default/console.vv"
  pid=$(prop spiced.service MainPID)
  expect_eq "spiced.service: /run/spiced in its sandbox" "$(nsenter -t "$pid" -m ls -A /run/spiced | paste -sd' ')" default
  for f in /run/spiced/kiosk1/x /run/systemd/x /run/x; do
    if nsenter -t "$pid" -m sh -c "touch $f" 2>/dev/null; then fail "spiced.service could write $f"; fi
  done
  ok "spiced.service: /run, /run/systemd, other instances read-only or out of sight"
  systemctl stop spiced.service
  systemctl disable --now spiced@kiosk2.path
  systemctl stop spiced@kiosk2.service
}

step_journal() {
  # docs/systemd.md's queries, after the faults above.
  local n
  n=$(journalctl -u spiced@kiosk1 --since today -o cat | wc -l)
  expect "journalctl -u spiced@kiosk1 --since today ($n lines)" test "$n" -gt 20
  n=$(journalctl SPICED_INSTANCE=kiosk1 -p warning -o cat | wc -l)
  expect "journalctl SPICED_INSTANCE=kiosk1 -p warning ($n lines)" test "$n" -gt 0
  n=$(journalctl MESSAGE_ID=$MSG_LOST SPICED_INSTANCE=kiosk1 -o cat | wc -l)
  expect "sessions lost ($n)" test "$n" -ge 2
  local rep
  rep=$(journalctl MESSAGE_ID=$MSG_REPORT -o verbose | sed -n 's/^ *SPICED_REPORT=//p' | tail -n1)
  expect "reports written, SPICED_REPORT=$rep exists" test -f "$rep"
  n=$(journalctl MESSAGE_ID=$MSG_GAVE_UP -o cat | wc -l)
  expect "give-ups, every instance ($n: 69, 77, ...)" test "$n" -ge 2
  journalctl -x -u spiced@kiosk1 --no-pager > "$O/journal-x-kiosk1.txt" 2>&1
  expect "journalctl -x: the catalog explains spiced's entries" grep -q 'Defined-By: spiced' "$O/journal-x-kiosk1.txt"
  # spiced's own lines (native protocol; the config error before logging is
  # set up is a plain stderr line, bad-config checks its priority).
  local own with
  own=$(journalctl -u spiced@kiosk1 -o json | jq -c 'select(.SYSLOG_IDENTIFIER == "spiced" and ._TRANSPORT == "journal")' | wc -l)
  with=$(journalctl -u spiced@kiosk1 -o json | jq -c 'select(.SYSLOG_IDENTIFIER == "spiced" and ._TRANSPORT == "journal" and .SPICED_INSTANCE == "kiosk1")' | wc -l)
  expect_eq "SPICED_INSTANCE=kiosk1 on every line spiced logs natively ($own)" "$with" "$own"
  note "$own spiced lines, $(grep -c 'Defined-By: spiced' "$O/journal-x-kiosk1.txt") explained by the catalog"
}

step_reboot_prepare() {
  kiosk1_up
  expect "spiced@kiosk1.path enabled" systemctl is-enabled -q spiced@kiosk1.path
  date +%s%N > "$STATE/reboot-at"
}

step_reboot() {
  # After the reboot: the enabled path unit is back, /run/spiced is new and
  # empty, nothing started spiced without a .vv; the producer writes again.
  local t0 c
  t0=$(cat "$STATE/reboot-at")
  expect "spiced@kiosk1.path active (waiting)" state_is spiced@kiosk1.path active/waiting
  expect "spiced@kiosk1 not started without a .vv" state_is spiced@kiosk1.service inactive/dead
  expect_eq "/run/spiced after boot" "$(stat -c '%a %U' /run/spiced) $(ls -A /run/spiced | paste -sd' ')" "700 root default"
  expect "node_exporter back" systemctl is-active -q prometheus-node-exporter
  c=$(cursor)
  produce kiosk1 "$A"
  waitfor 60 "the producer writes again: connected" connected kiosk1
  waitfor 30 "the host's QMP sees 11 channels" channels_are A 11
  waitfor 30 "scraped: spiced_session_up 1" session_up_scraped kiosk1
  note "reboot -> scenario again $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}') s"
}

# ---------------------------------------------------------------- the runner

STEP_CURSOR=
# run NAME: step_NAME in a subshell, its log in out/step-NAME.log, its line in
# out/results.
run() {
  local name=$1 fn t0 rc res note xf=0
  fn=step_${name//-/_}
  if [ -n "$KIOSK_ONLY" ] && [[ ",$KIOSK_ONLY,install," != *",$name,"* ]]; then return 0; fi
  [[ " $KIOSK_XFAIL " == *" $name "* ]] && xf=1
  STEP_CURSOR=$(cursor)
  echo "kiosk-vm: step $name" > /dev/console
  t0=${EPOCHREALTIME/./}
  ( set +e; "$fn" ) > "$O/step-$name.log" 2>&1 < /dev/null
  rc=$?
  note=$(sed -n 's/^NOTE: //p' "$O/step-$name.log" | tail -n1)
  if [ "$rc" = 0 ]; then res=PASS; [ "$xf" = 1 ] && res=XPASS
  else
    res=FAIL; [ "$xf" = 1 ] && res=XFAIL
    note=$(sed -n 's/^FAIL: //p' "$O/step-$name.log" | tail -n1)
  fi
  printf '%s|%s|%s|%s\n' "$name" "$res" "$(secs "$t0")" "${note//|//}" >> "$O/results"
}

boots=$(( $(cat "$STATE/boots" 2>/dev/null || echo 0) + 1 ))
echo "$boots" > "$STATE/boots"
if [ "$boots" -gt 2 ]; then # a crash-reboot loop: stop here
  echo "boot|FAIL|0|unexpected boot $boots" >> "$O/results"
  systemctl poweroff
  exit 1
fi
if [ "$boots" = 1 ]; then
  cut -d' ' -f1 /proc/uptime > "$O/started"
  echo "${EPOCHREALTIME/./}" > "$STATE/t0"
  systemctl is-system-running --wait > /dev/null
  for s in install first-start node-exporter status legacy-path server-restart server-gone \
      single-use bad-config watchdog stop reload-burst start-limit restart-bound \
      reload-while-activating two-instances journal reboot-prepare; do
    run "$s"
  done
  journalctl -b --no-pager -o short-monotonic > "$O/journal-boot1.txt"
  systemd-analyze time > "$O/boot1.txt" 2>&1
  if [ -e "$STATE/reboot-at" ]; then
    systemctl reboot
    exit 0
  fi
else
  systemctl is-system-running --wait > /dev/null
  systemd-analyze time > "$O/boot2.txt" 2>&1
  run reboot
  journalctl -b --no-pager -o short-monotonic > "$O/journal-boot2.txt"
fi
secs "$(cat "$STATE/t0")" > "$O/scenario-secs"
touch "$O/finished"
systemctl poweroff
