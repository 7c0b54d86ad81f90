#!/usr/bin/env bash
# The Debian package test: builds the package with cargo-deb (a release
# build), installs it with dpkg on this machine, and checks what it
# installed: the binary, the configuration (`mailwit check-config` must pass
# on it), the systemd unit and its hardening, the user, the state directory
# and the generated certificate; it starts the installed binary as the
# mailwit user on that configuration (moved to loopback port 0) and stops it
# with SIGTERM. Then it removes the package again (purge).
#
# It installs system-wide, so it needs root (./test runs it as root in CI).
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "package test FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root to install the package (run ./test as root)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo deb -p mailwit --output "$out/mailwit.deb" >/dev/null
deb="$out/mailwit.deb"
[ -s "$deb" ] || fail "cargo deb wrote no package"

# What the package holds, before it is installed.
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/mailwit ./etc/mailwit/mailwit.toml ./usr/lib/systemd/system/mailwit.service ./usr/share/doc/mailwit/README.md; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done
dpkg-deb --field "$deb" Depends | grep -q adduser || fail "the package does not depend on adduser"
dpkg-deb --info "$deb" conffiles 2>/dev/null | grep -qx /etc/mailwit/mailwit.toml ||
  fail "/etc/mailwit/mailwit.toml is not a conffile"

# A leftover from an earlier run would hide what this install does.
dpkg --purge mailwit >/dev/null 2>&1 || true
dpkg -i "$deb" >/dev/null || fail "dpkg -i failed"
trap 'dpkg --purge mailwit >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

[ -x /usr/bin/mailwit ] || fail "/usr/bin/mailwit is not installed"
/usr/bin/mailwit --version | grep -q '^mailwit ' || fail "mailwit --version"
getent passwd mailwit >/dev/null || fail "no mailwit user"
[ "$(stat -c %U:%G:%a /var/lib/mailwit)" = mailwit:mailwit:750 ] ||
  fail "/var/lib/mailwit is $(stat -c %U:%G:%a /var/lib/mailwit)"
[ "$(stat -c %G:%a /etc/mailwit/mailwit.toml)" = mailwit:640 ] ||
  fail "/etc/mailwit/mailwit.toml is $(stat -c %G:%a /etc/mailwit/mailwit.toml)"
[ "$(stat -c %G:%a /etc/mailwit/tls/key.pem)" = mailwit:640 ] ||
  fail "the generated key is $(stat -c %G:%a /etc/mailwit/tls/key.pem)"
openssl x509 -in /etc/mailwit/tls/fullchain.pem -noout >/dev/null ||
  fail "the generated certificate does not parse"

# The installed configuration passes, as the unit checks it before a start,
# and as the mailwit user (who must be able to read it and the key).
/usr/bin/mailwit check-config /etc/mailwit/mailwit.toml || fail "check-config as root"
runuser -u mailwit -- /usr/bin/mailwit check-config /etc/mailwit/mailwit.toml ||
  fail "check-config as the mailwit user"

# ...and fails, naming the key, on a broken certificate (a negative control).
cp /etc/mailwit/mailwit.toml "$out/broken.toml"
echo "not a certificate" >"$out/broken.pem"
sed -i "s|^cert = .*|cert = \"$out/broken.pem\"|" "$out/broken.toml"
if msg=$(/usr/bin/mailwit check-config "$out/broken.toml" 2>&1); then
  fail "check-config passed a broken certificate"
fi
grep -q "tls.cert" <<<"$msg" || fail "check-config did not name tls.cert: $msg"

# The installed files serve, as the unit runs them: the mailwit user, its
# configuration and key, /var/lib/mailwit (on loopback port 0 here, not on
# the machine's 25 and 587).
sed -e 's|addr = ".*"|addr = "127.0.0.1:0"|' /etc/mailwit/mailwit.toml >"$out/loopback.toml"
chgrp mailwit "$out" "$out/loopback.toml"
chmod 0750 "$out"
setpriv --reuid mailwit --regid mailwit --init-groups \
  /usr/bin/mailwit serve --config "$out/loopback.toml" 2>"$out/serve.log" &
serve=$!
for _ in $(seq 1 300); do
  grep -q 'event="ready"' "$out/serve.log" && break
  kill -0 $serve 2>/dev/null || break
  sleep 0.2
done
grep -q 'event="ready"' "$out/serve.log" || { cat "$out/serve.log" >&2; fail "the installed service did not start"; }
kill -TERM $serve
wait $serve || fail "the installed service did not stop cleanly on SIGTERM"
[ -s /var/lib/mailwit/admin.token ] || fail "no admin token under /var/lib/mailwit"

unit=/usr/lib/systemd/system/mailwit.service
for line in Type=notify User=mailwit AmbientCapabilities=CAP_NET_BIND_SERVICE \
  CapabilityBoundingSet=CAP_NET_BIND_SERVICE ProtectSystem=strict NoNewPrivileges=yes \
  ReadWritePaths=/var/lib/mailwit 'ExecReload=/bin/kill -HUP $MAINPID' \
  'ExecStart=/usr/bin/mailwit serve --config /etc/mailwit/mailwit.toml'; do
  grep -qxF "$line" "$unit" || fail "the unit lacks $line"
done
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
fi

dpkg --purge mailwit >/dev/null || fail "dpkg --purge failed"
! getent passwd mailwit >/dev/null || fail "the mailwit user outlived the purge"
[ ! -e /var/lib/mailwit ] || fail "/var/lib/mailwit outlived the purge"
echo "package test passed: $(basename "$deb") installs, check-config passes on /etc/mailwit/mailwit.toml"
