#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the report's browser test (tests/report/test_report_browser.py opens the
# rendered report in headless Chromium through Selenium). Idempotent; needs root to install.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
