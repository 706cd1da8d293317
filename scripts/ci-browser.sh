#!/usr/bin/env bash
# What tests/e2e/test_browser.py needs from the system: Chromium at /usr/bin/chromium (Debian's
# package). Playwright, the Python package that drives it, comes from pip with the [dev] extra;
# it launches this Chromium, so `playwright install` (a browser download) is never needed.
# For .ci/run, before the tests: as root it installs what is missing, otherwise it says what to do.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ci-browser: /usr/bin/chromium is missing: sudo apt-get install -y chromium" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
