#!/usr/bin/env bash
# Debian's Chromium (and its ChromeDriver) for the web UI's browser test, which drives /usr/bin/chromium with
# Playwright. Playwright's own browser download is never used (it needs a host this machine cannot reach).
# Idempotent and quiet: nothing is done when both are installed.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_browser.sh: installing chromium needs root (or sudo)" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# apt may be busy with another install on a shared machine: wait for its lock rather than fail
$SUDO apt-get -qq -o DPkg::Lock::Timeout=600 update >/dev/null
$SUDO apt-get -qq -y -o DPkg::Lock::Timeout=600 install --no-install-recommends chromium chromium-driver >/dev/null
/usr/bin/chromium --version >/dev/null 2>&1
