#!/usr/bin/env bash
# Best-effort: make Debian's headless Chromium available for the browser tests
# (tests/e2e/test_demo_browser.py). Never fails the test run: where the browser cannot be had,
# those tests skip and print why.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/apt.bash"
have() { [ -x /usr/bin/chromium ]; }
version() { /usr/bin/chromium --version 2>/dev/null; }
tests="browser tests"
apt_present chromium && exit 0
apt_ready chromium chromium /usr/bin/chromium "$tests" || exit 0
apt_install chromium chromium "$tests" || exit 0
apt_report chromium /usr/bin/chromium "$tests"
exit 0
