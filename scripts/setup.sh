#!/usr/bin/env bash
# Installs everything RAVN needs on a fresh Debian 12 machine of this kind. Idempotent; run as root.
#   Debian packages: python3-bpfcc bpfcc-tools bpftool redis-server kernel headers
#   the headers link when none match the running kernel, tracefs if missing,
#   .venv with ravn-core, every plugin and the dev tools.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
log() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sudo make setup): it installs Debian packages and mounts tracefs" >&2
  exit 3
fi

# ---- Debian packages
pkgs=(python3-bpfcc bpfcc-tools bpftool redis-server redis-tools linux-headers-amd64 libcap2-bin util-linux)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a redis-server on 6379 under systemd where there is one; RAVN's tests start
# their own on free ports, so nothing here depends on it.

# ---- kernel headers: BCC compiles against /lib/modules/$(uname -r)/build
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include" ] && [ ! -e "$kdir/build/Makefile" ]; then
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=${arch%-amd64}-common
  if [ -z "$arch" ] || [ ! -d "$common" ]; then
    echo "setup: no kernel headers under /usr/src; install linux-headers-amd64" >&2
    exit 3
  fi
  log "no headers for $(uname -r): linking $arch (tracepoint programs only; see docs/EVENTS.md caveats)"
  mkdir -p "$kdir"
  ln -sfn "$arch" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
fi

# ---- tracefs
if [ ! -d /sys/kernel/tracing/events ]; then
  log "mounting tracefs on /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing
fi

# ---- venv
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# BCC's Python package comes from Debian; expose only that package to the venv.
mkdir -p .venv/bcc-only
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-only/bcc
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD/.venv/bcc-only" > "$site/ravn-bcc.pth"

stamp=.venv/.ravn-installed
projects=(. plugins/*/ plugins/analyzers/)
projects=($(for d in "${projects[@]}"; do if [ -f "$d/pyproject.toml" ]; then echo "${d%/}"; fi; done | sort -u))
inputs=$(for d in "${projects[@]}"; do cat "$d/pyproject.toml"; done | cat - requirements-dev.txt | sha1sum | cut -c1-40)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ]; then
  log "installing ravn-core, plugins and dev tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  args=()
  for d in "${projects[@]}"; do args+=(-e "$d"); done
  .venv/bin/python -m pip install -q "${args[@]}" -r requirements-dev.txt
  echo "$inputs" > "$stamp"
fi
.venv/bin/python -c 'import bcc, ravn_core' || { echo "setup: bcc or ravn_core does not import in .venv" >&2; exit 3; }
log "ready: .venv/bin/ravn"
