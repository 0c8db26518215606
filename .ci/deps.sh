#!/usr/bin/env bash
# System packages the build and the tests need (Debian 12). Installs only what is missing,
# so a warm machine pays nothing; needs root when something is missing.
set -euo pipefail
packages=(
  ruby ruby-dev build-essential libffi-dev   # Chef, knife, ChefSpec, cookstyle (native gems)
  python3 python3-venv python3-dev           # the agent's venv; the cookbook's venv on this node
  postgresql mariadb-server mariadb-client   # real databases for the dump tests
  openssh-server                             # knife bootstrap over SSH on loopback
  debootstrap systemd-container              # Debian containers with systemd as PID 1 (tests/containers)
  time procps psmisc                         # /usr/bin/time -v, ps, fuser in tests and bench
  chromium                                   # headless screenshots of `report --html` (tests/report)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 2
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the servers it installs; the tests start their own instances on free ports.
for svc in postgresql mariadb ssh; do
  service "$svc" stop >/dev/null 2>&1 || true
done
