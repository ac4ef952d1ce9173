#!/usr/bin/env bash
# Make sure the real Fashion-MNIST is on this machine before `make test`, whose unit tests and
# notebooks read it: usage `tools/ensure_data.sh [PYTHON]`.
#
# 1. Looks where d2lbn looks (d2lbn/data.py): $D2LBN_DATA, ~/.mxnet/datasets/fashion-mnist, and
#    Debian's /usr/share/datasets/fashion-mnist; a folder holding the four .gz files ends the search.
# 2. Otherwise installs Debian's `dataset-fashion-mnist` package, as root or through passwordless
#    sudo (as tools/ensure_chromium.sh does for Chromium; `apt-get update` first if the package is
#    not known yet). This is how an offline machine with a package mirror gets it.
# 3. Otherwise, given PYTHON (a Python with d2lbn installed), lets d2lbn download the files over
#    https into $D2LBN_DATA or ~/.mxnet/datasets/fashion-mnist, checking every SHA-256.
# 4. Otherwise exits 1 with a message saying how to get the data.
# ENSURE_DATA_DEBIAN_DIR replaces Debian's folder (the script's own tests point it elsewhere).
set -euo pipefail

PY=${1:-}
DEBIAN_DIR=${ENSURE_DATA_DEBIAN_DIR:-/usr/share/datasets/fashion-mnist}
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
       t10k-labels-idx1-ubyte.gz)

has_all() {
  local f
  [ -n "$1" ] || return 1
  for f in "${FILES[@]}"; do [ -f "$1/$f" ] || return 1; done
}

find_data() {
  local d
  for d in "${D2LBN_DATA:-}" "$HOME/.mxnet/datasets/fashion-mnist" "$DEBIAN_DIR"; do
    has_all "$d" && { echo "$d"; return 0; }
  done
  return 1
}

if dir=$(find_data); then
  echo "ensure_data: Fashion-MNIST found in $dir"
  exit 0
fi

reasons=()
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  SUDO=(none)
  reasons+=("no root and no passwordless sudo to install Debian's package")
fi
if [ "${SUDO[*]:-}" != none ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    reasons+=("no apt-get here")
  else
    export DEBIAN_FRONTEND=noninteractive
    echo "ensure_data: Fashion-MNIST not found; installing Debian's dataset-fashion-mnist"
    apt_log=$(mktemp)
    install() { "${SUDO[@]}" apt-get install -y -q dataset-fashion-mnist >"$apt_log" 2>&1; }
    if install || { "${SUDO[@]}" apt-get update -q >"$apt_log" 2>&1 && install; }; then
      rm -f "$apt_log"
      if dir=$(find_data); then
        echo "ensure_data: Fashion-MNIST installed in $dir"
        exit 0
      fi
      reasons+=("apt-get installed dataset-fashion-mnist, but $DEBIAN_DIR does not hold the files")
    else
      echo "ensure_data: apt-get could not install dataset-fashion-mnist:" >&2
      tail -n 5 "$apt_log" >&2
      rm -f "$apt_log"
      reasons+=("apt-get could not install dataset-fashion-mnist")
    fi
  fi
fi

if [ -n "$PY" ]; then
  echo "ensure_data: downloading Fashion-MNIST with d2lbn (every file's SHA-256 is checked)"
  if "$PY" - <<'EOF'
import os
import sys
from pathlib import Path

from d2lbn import data

target = Path(os.environ.get("D2LBN_DATA") or data.MXNET_CACHE).expanduser()
try:
    data.download_fashion_mnist(target)
except Exception as err:  # noqa: BLE001 -- any failure is reported in one line
    print(f"ensure_data: the download failed: {err}", file=sys.stderr)
    sys.exit(1)
print(f"ensure_data: Fashion-MNIST downloaded into {target}")
EOF
  then
    exit 0
  fi
  reasons+=("the download failed")
else
  reasons+=("no Python with d2lbn given to download it")
fi

why=$(printf '%s; ' "${reasons[@]}")
{
  echo "ensure_data: Fashion-MNIST is not on this machine, and it could not be installed or"
  echo "downloaded here (${why%; })."
  echo "Looked in: ${D2LBN_DATA:-\$D2LBN_DATA (not set)}, $HOME/.mxnet/datasets/fashion-mnist, $DEBIAN_DIR."
  echo "Get it in one of these ways, then run make test again:"
  echo "  * Debian/Ubuntu, also offline with a package mirror: sudo apt-get install dataset-fashion-mnist"
  echo "  * put the four .gz files in a folder and set D2LBN_DATA=/that/folder"
  echo "  * connect to the internet: make test downloads and verifies them"
} >&2
exit 1
