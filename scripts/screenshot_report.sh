#!/usr/bin/env bash
# Render a pyquant HTML report in headless Chromium and save a full-page PNG screenshot, so the
# page can be checked as a person sees it (nothing overflows, every plot shows).
# Usage: scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTH] [HEIGHT]
# Needs Debian's chromium (`apt-get install -y chromium`); it is installed when missing and run
# as root. The page has no scripts and no network references; networking features are disabled.
set -euo pipefail
html=${1:?usage: $0 REPORT.html [OUT.png] [WIDTH] [HEIGHT]}
out=${2:-${html%.*}_screenshot.png}
width=${3:-1280}
height=${4:-2400}
[ -f "$html" ] || { echo "no such file: $html" >&2; exit 2; }
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y chromium >/dev/null; else
        echo "chromium is not installed: sudo apt-get install -y chromium" >&2; exit 2; fi
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --screenshot="$(realpath -m "$out")" \
    --window-size="${width},${height}" "file://$(realpath "$html")" 2>/dev/null
echo "screenshot: $out"
