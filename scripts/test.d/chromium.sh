#!/usr/bin/env bash
# Best-effort: make Debian's headless Chromium available for the browser tests
# (tests/e2e/test_demo_browser.py). Never fails the test run: where the browser cannot be had,
# those tests skip and print why.
set -u
if [ -x /usr/bin/chromium ]; then
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: /usr/bin/chromium is missing and we are not root with apt-get;" \
    "install Debian's chromium package to run the browser tests"
  exit 0
fi
echo "chromium: installing Debian's chromium package (apt-get, at most 10 minutes)"
export DEBIAN_FRONTEND=noninteractive
if ! timeout 180 apt-get update -qq >/dev/null 2>&1; then
  echo "chromium: apt-get update failed or timed out; the browser tests will skip"
  exit 0
fi
if ! timeout 420 apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
  echo "chromium: apt-get install chromium failed or timed out; the browser tests will skip"
  exit 0
fi
if [ -x /usr/bin/chromium ]; then
  echo "chromium: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
  echo "chromium: the package installed but /usr/bin/chromium is missing; the browser tests will skip"
fi
exit 0
