#!/usr/bin/env bash
# build-deb.sh -- build target/debian/spiced_<version>_<arch>.deb with dpkg-deb
# (no cargo-deb: nothing to install from the network, and every path is here).
#
#   scripts/build-deb.sh            cargo build --release, then package
#   scripts/build-deb.sh --debug    package the debug build (quicker; for tests)
#   scripts/build-deb.sh --no-build package target/<profile>/spiced as it is
#
# The package: /usr/bin/spiced (stripped); the units in /usr/lib/systemd/system
# (installed, not enabled: which sessions run is the site's choice);
# /usr/lib/tmpfiles.d/spiced.conf (/run/spiced); the journal catalog
# /usr/lib/systemd/catalog/spiced.catalog when systemd/spiced.catalog exists;
# /etc/spiced/spiced.toml as a conffile; README and docs in /usr/share/doc/spiced;
# the refresh commands for Proxmox VE, oVirt and Kerbside in /usr/share/spiced (python3);
# the Prometheus alerting rules and their unit tests in /usr/share/spiced/prometheus;
# the man pages spiced(1), spiced-report(1)..., generated from the command line
# definitions by `spiced manpage`. Needs dpkg-deb, dpkg-shlibdeps (dpkg-dev), gzip, strip.
# Runs lintian on the result when it is installed.
set -euo pipefail

me=build-deb.sh
cd "$(dirname "$0")/.."
profile=release
build=1
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$me: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

# The [package] version, the first `version =` line of Cargo.toml.
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "$me: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
if [ "$build" = 1 ]; then
  if [ "$profile" = release ]; then cargo build --locked --release; else cargo build --locked; fi
fi
bin=target/$profile/spiced
[ -x "$bin" ] || { echo "$me: $bin missing (build it, or drop --no-build)" >&2; exit 1; }

out=target/debian
stage=$out/spiced_${version}_$arch
deb=$out/spiced_${version}_$arch.deb
rm -rf "$stage" "$deb"
mkdir -p "$stage/DEBIAN"
# Every file root-owned 0644/0755 whatever the builder's umask.
umask 022

install -D -m 0755 "$bin" "$stage/usr/bin/spiced"
strip --strip-unneeded "$stage/usr/bin/spiced"

units=$stage/usr/lib/systemd/system
install -d "$units"
install -m 0644 systemd/spiced.service systemd/spiced@.service systemd/spiced@.path \
  systemd/spiced-reload@.service "$units/"
install -D -m 0644 systemd/spiced.tmpfiles "$stage/usr/lib/tmpfiles.d/spiced.conf"
# The journal catalog (MESSAGE_ID texts) comes with native journald logging;
# a tree without it still packages.
# postinst rebuilds journald's catalog index only when the package has one.
update_catalog="# (no journal catalog in this package)"
if [ -f systemd/spiced.catalog ]; then
  install -D -m 0644 systemd/spiced.catalog "$stage/usr/lib/systemd/catalog/spiced.catalog"
  update_catalog="journalctl --update-catalog || true"
else
  echo "$me: note: systemd/spiced.catalog absent: packaging without the journal catalog"
fi
install -D -m 0644 config/spiced.toml "$stage/etc/spiced/spiced.toml"
install -d "$stage/usr/share/spiced"
install -m 0755 scripts/spiced-refresh-proxmox scripts/spiced-refresh-ovirt scripts/spiced-refresh-kerbside \
  "$stage/usr/share/spiced/"
# The fleet's Prometheus alerting rules and their promtool unit tests
# (docs/metrics.md, "Alerting"), for the monitoring host to copy or include.
install -d "$stage/usr/share/spiced/prometheus"
install -m 0644 contrib/prometheus/spiced-alerts.yml contrib/prometheus/spiced-alerts.test.yml \
  "$stage/usr/share/spiced/prometheus/"

doc=$stage/usr/share/doc/spiced
install -d "$doc/docs"
# Uncompressed: the units' Documentation= and README's links point at these names.
install -m 0644 README.md "$doc/"
install -m 0644 docs/*.md "$doc/docs/"
# Debian wants the license in machine-readable copyright format.
{
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: spiced\n\nFiles: *\nCopyright: the spiced authors\nLicense: MIT\n'
  sed 's/^$/./; s/^/ /' LICENSE
} > "$doc/copyright"
date_r=$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
printf 'spiced (%s) unstable; urgency=medium\n\n  * Built from the spiced source tree.\n\n -- spiced maintainers <spiced@example.invalid>  %s\n' \
  "$version" "$date_r" | gzip -9n > "$doc/changelog.gz"

man=$stage/usr/share/man/man1
install -d "$man"
# spiced.1 and a page per subcommand (spiced-report.1, ...), which spiced.1 lists.
"$bin" manpage --out-dir "$man"
grep -q '^\.TH spiced 1' "$man/spiced.1" || { echo "$me: $bin manpage wrote no spiced.1" >&2; exit 1; }
chmod 0644 "$man"/*.1
gzip -9n "$man"/*.1

# Depends: the shared libraries the binary links, as dpkg-shlibdeps maps them
# (it insists on a debian/control, so it runs in a scratch directory).
shl=$(mktemp -d)
trap 'rm -rf "$shl"' EXIT
mkdir "$shl/debian"
printf 'Source: spiced\n\nPackage: spiced\nArchitecture: any\n' > "$shl/debian/control"
depends=$(cd "$shl" && dpkg-shlibdeps -O "$OLDPWD/$stage/usr/bin/spiced" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "$me: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

cat > "$stage/DEBIAN/control" <<EOF
Package: spiced
Version: $version
Architecture: $arch
Maintainer: spiced maintainers <spiced@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $depends
Recommends: systemd
Suggests: python3
Section: net
Priority: optional
Homepage: https://example.invalid/spiced
Description: headless SPICE session daemon for kiosks
 spiced keeps a kiosk's SPICE session (QEMU, Proxmox VE, oVirt) alive without
 a human: it links every channel from a virt-viewer .vv file, keeps idle
 channels alive, reconnects by one back-off policy, honours single-use tickets
 and writes a disconnect-cause report for every disconnect.
 .
 Units: spiced.service (one session, /run/console.vv), spiced@NAME.service
 and spiced@NAME.path (one instance per session, /run/spiced/NAME.vv).
 None is enabled on install.
EOF
echo /etc/spiced/spiced.toml > "$stage/DEBIAN/conffiles"

# Maintainer scripts act only when systemd is the running init: in a container
# or a chroot (CI) there is nothing to reload. Units are never enabled, and a
# running session is never restarted by an upgrade: a restart drops the kiosk's
# session and can burn a single-use ticket. `systemctl restart 'spiced@*'`
# picks up the new binary when the site chooses.
cat > "$stage/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  systemd-tmpfiles --create spiced.conf || true
  $update_catalog
fi
exit 0
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Removing the package stops what runs from it; an upgrade leaves it running.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop 'spiced@*.path' 'spiced-reload@*.service' 'spiced@*.service' spiced.service || true
fi
exit 0
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
# purge: the reports and the session files go too.
if [ "$1" = purge ]; then
  rm -rf /var/lib/spiced /var/lib/private/spiced /run/spiced
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
# lintian wants deb-systemd-invoke instead of systemctl; it takes unit names,
# not patterns, and the instances of a template are known only to the running
# systemd, so prerm stops them by pattern with systemctl.
install -d "$stage/usr/share/lintian/overrides"
printf '%s\n' '# prerm stops spiced@*.service by pattern; deb-systemd-invoke takes no patterns.' \
  'spiced: maintainer-script-calls-systemctl [prerm:*]' > "$stage/usr/share/lintian/overrides/spiced"
# md5sums lists every file but the conffile (dpkg tracks that one itself).
(cd "$stage" && find . \( -path ./DEBIAN -o -path ./etc \) -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$stage/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$me: $deb ($(du -k "$deb" | cut -f1) KiB): $(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')"
if command -v lintian >/dev/null; then
  # Informational: the maintainer address and upstream URL are placeholders.
  lintian --tag-display-limit 0 "$deb" || true
fi
