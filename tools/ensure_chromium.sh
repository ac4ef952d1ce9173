#!/usr/bin/env bash
# Make sure a headless Chromium is available for the browser test (tests/site/test_site_browser.py).
# Uses $CHROMIUM or chromium / chromium-browser / google-chrome on PATH; otherwise installs Debian's
# `chromium` package (and a small CJK font, so the Chinese terms in the screenshots are not boxes),
# as root or through passwordless sudo. Exits non-zero with a message when it cannot.
set -euo pipefail

find_browser() {
  for b in "${CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    [ -n "$b" ] && command -v "$b" >/dev/null 2>&1 && { command -v "$b"; return 0; }
  done
  return 1
}

packages=()
find_browser >/dev/null || packages+=(chromium)
if ! command -v fc-list >/dev/null 2>&1 || [ -z "$(fc-list :lang=zh family 2>/dev/null)" ]; then
  packages+=(fonts-wqy-microhei)
fi

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else SUDO=(none); fi
  if [ "${SUDO[*]}" = none ]; then
    if ! find_browser >/dev/null; then
      echo "ensure_chromium: no Chromium found and no root to install it. Install it with" >&2
      echo "  sudo apt-get install chromium    (or set CHROMIUM=/path/to/chrome)" >&2
      exit 1
    fi
    echo "ensure_chromium: no CJK font (fonts-wqy-microhei); screenshots will show boxes for Chinese" >&2
  else
    export DEBIAN_FRONTEND=noninteractive
    echo "ensure_chromium: installing ${packages[*]}"
    "${SUDO[@]}" apt-get install -y -q "${packages[@]}" >/dev/null \
      || { "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y -q "${packages[@]}" >/dev/null; }
  fi
fi

browser=$(find_browser) || { echo "ensure_chromium: Chromium is still missing" >&2; exit 1; }
echo "ensure_chromium: $("$browser" --version 2>/dev/null | head -1) ($browser)"
