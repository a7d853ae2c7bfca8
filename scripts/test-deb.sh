#!/usr/bin/env bash
# test-deb.sh -- install the built .deb on this machine (as root) and check it as
# an operator would: dpkg -i, `spiced --version`, `man spiced`, the files and
# the conffile where the package says, the alerting rules through promtool,
# and scripts/check-units.sh --installed
# (systemd-analyze verify and the sandbox score of the installed units).
# Run scripts/build-deb.sh first. CI runs both (.ci/run). The package stays
# installed: it is what the checks looked at.
set -euo pipefail

me=test-deb.sh
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "$me: must run as root (dpkg -i)" >&2; exit 1; }
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
deb=target/debian/spiced_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || { echo "$me: $deb missing: run scripts/build-deb.sh" >&2; exit 1; }

fail() { echo "$me: FAILED: $*" >&2; exit 1; }
echo "$me: $deb, $(du -k "$deb" | cut -f1) KiB"
dpkg-deb --contents "$deb" | awk '{print $1, $6}'
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' spiced | grep -qx 'install ok installed' || fail "spiced not installed"

got=$(/usr/bin/spiced --version)
[ "$got" = "spiced $version" ] || fail "spiced --version printed '$got', not 'spiced $version'"
echo "$me: $got"

# man finds the page by name, as an operator types it.
page=$(man -P cat spiced 2>/dev/null) || fail "man spiced found no page"
echo "$page" | head -n 12
for want in "--vv" "--config-if-exists" "report"; do
  echo "$page" | grep -q -- "$want" || fail "man spiced does not mention $want"
done
man -P cat spiced-report 2>/dev/null | grep -q -- --json || fail "man spiced-report found no page"

for f in /usr/lib/systemd/system/spiced.service /usr/lib/systemd/system/spiced@.service \
  /usr/lib/systemd/system/spiced@.path /usr/lib/systemd/system/spiced-reload@.service \
  /usr/lib/tmpfiles.d/spiced.conf /usr/share/doc/spiced/copyright \
  /usr/share/doc/spiced/docs/systemd.md /usr/share/man/man1/spiced.1.gz \
  /usr/share/man/man1/spiced-report.1.gz /usr/share/spiced/prometheus/spiced-alerts.yml \
  /usr/share/spiced/prometheus/spiced-alerts.test.yml; do
  [ -f "$f" ] || fail "$f not installed"
done
# The alerting rules as installed: they load and their unit tests pass there
# (the test file names the rules file beside it).
if command -v promtool >/dev/null; then
  (cd /usr/share/spiced/prometheus && promtool check rules spiced-alerts.yml &&
    promtool test rules spiced-alerts.test.yml) || fail "promtool rejects the installed alerting rules"
elif [ -n "${CI:-}" ]; then
  fail "promtool missing (scripts/install-deps.sh installs prometheus)"
fi
if [ -f systemd/spiced.catalog ]; then
  [ -f /usr/lib/systemd/catalog/spiced.catalog ] || fail "the journal catalog is not installed"
fi
dpkg-query -W -f='${Conffiles}\n' spiced | grep -q '^ /etc/spiced/spiced.toml ' ||
  fail "/etc/spiced/spiced.toml is not a conffile"
# Installed, not enabled: no unit is linked into a .wants directory.
if find /etc/systemd/system -name 'spiced*' 2>/dev/null | grep -q .; then
  fail "the package enabled a unit: $(find /etc/systemd/system -name 'spiced*')"
fi
# The shipped config is valid as the single-session unit uses it.
vv=$(mktemp)
trap 'rm -f "$vv"' EXIT
printf '[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=5900\n' > "$vv"
/usr/bin/spiced --vv "$vv" --config /etc/spiced/spiced.toml --check >/dev/null ||
  fail "spiced --check rejects /etc/spiced/spiced.toml"

bash scripts/check-units.sh --installed
echo "$me: ok"
