#!/usr/bin/env bash
# Installs migsafe's systemd units and an example configuration (README: "Running as a service").
#
#   scripts/install-systemd.sh [--root DIR] [--bin "COMMAND"] [--no-user] [--no-verify]
#
#   --root DIR      install under DIR instead of / (packaging, tests): no user, no daemon-reload
#   --bin COMMAND   how the units start migsafe (default: `command -v migsafe`, else
#                   "<node> <this checkout>/dist/src/cli/main.js")
#   --no-user       do not create the `migsafe` system user
#   --no-verify     do not run `systemd-analyze verify` on the installed units
#
# Copies packaging/systemd/*.service to <root>/etc/systemd/system/ (ExecStart pointed at the
# binary), packaging/migsafe.example.toml to <root>/etc/migsafe/example.toml (an existing one is
# kept), creates the `migsafe` user (in group kvm when that exists), checks the example with
# `migsafe config check`, and verifies the units with systemd-analyze when it is installed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=/
bin=
user=1
verify=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --no-user) user=0; shift ;;
    --no-verify) verify=0; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-systemd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$root" != / ] && user=0

if [ -z "$bin" ]; then
  if command -v migsafe >/dev/null 2>&1; then
    bin=$(command -v migsafe)
  else
    [ -f "$here/dist/src/cli/main.js" ] || { echo "install-systemd.sh: no migsafe on PATH and no $here/dist: run npm run build, or give --bin" >&2; exit 1; }
    bin="$(command -v node) $here/dist/src/cli/main.js"
  fi
fi

units="$root/etc/systemd/system"
conf="$root/etc/migsafe"
install -d -m 0755 "$units"
install -d -m 0750 "$conf"
for u in "$here"/packaging/systemd/*.service; do
  sed "s|/usr/local/bin/migsafe|$bin|" "$u" > "$units/$(basename "$u")"
  chmod 0644 "$units/$(basename "$u")"
  echo "installed $units/$(basename "$u")"
done
if [ -e "$conf/example.toml" ]; then
  echo "kept $conf/example.toml (exists)"
else
  install -m 0640 "$here/packaging/migsafe.example.toml" "$conf/example.toml"
  echo "installed $conf/example.toml"
fi

# The example must pass the same check as every config file.
# shellcheck disable=SC2086
env -u MIGSAFE_CONFIG $bin config check --config "$conf/example.toml" >/dev/null

if [ "$user" = 1 ]; then
  if ! id migsafe >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/migsafe --shell /usr/sbin/nologin migsafe
    echo "created the system user migsafe"
  fi
  getent group kvm >/dev/null && usermod -aG kvm migsafe
  chgrp -R migsafe "$conf"
fi

if [ "$verify" = 1 ]; then
  if command -v systemd-analyze >/dev/null 2>&1; then
    # Templates are verified as an instance, next to their template.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    for u in "$units"/migsafe-agent@.service "$units"/migsafe@.service; do
      cp "$u" "$tmp/"
      inst="$tmp/$(basename "$u" | sed 's/@\.service$/@example.service/')"
      # A misspelt directive is only a warning (exit 0) to systemd-analyze: any output fails here.
      if ! out=$(cd "$tmp" && systemd-analyze verify --man=no "$inst" 2>&1) || [ -n "$out" ]; then
        echo "systemd-analyze verify $(basename "$u"):" >&2
        echo "$out" >&2
        exit 1
      fi
    done
    echo "systemd-analyze verify: OK"
  else
    echo "systemd-analyze not found: units not verified"
  fi
fi

if [ "$root" = / ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<MSG
Next: write /etc/migsafe/<host>.toml (from example.toml; check it with
  $bin config check --config /etc/migsafe/<host>.toml --command agent)
then: systemctl enable --now migsafe-agent@<host>
MSG
