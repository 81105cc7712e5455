#!/usr/bin/env bash
# Best-effort: make Debian's redis-server binary available for the task-worker tests
# (tests/e2e/test_celery.py, test_rq.py, test_dramatiq.py). The tests start their own redis-server
# on a free 127.0.0.1 port without persistence (tests/e2e/redis.py); the system daemon the package
# may start is stopped and disabled again, so that no test ever talks to it. Never fails the test
# run: where redis-server cannot be had, those tests skip and print why.
set -u
stop_system_daemon() {
  # Debian's package starts redis on 127.0.0.1:6379 when an init system runs; tests do not use it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    timeout 30 systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then
    timeout 30 service redis-server stop >/dev/null 2>&1 || true
  fi
}
if command -v redis-server >/dev/null 2>&1; then
  echo "redis: $(redis-server --version 2>/dev/null || echo present)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "redis: redis-server is missing and we are not root with apt-get;" \
    "install Debian's redis-server package to run the task-worker tests"
  exit 0
fi
echo "redis: installing Debian's redis-server package (apt-get, at most 10 minutes)"
export DEBIAN_FRONTEND=noninteractive
if ! timeout 180 apt-get update -qq >/dev/null 2>&1; then
  echo "redis: apt-get update failed or timed out; the task-worker tests will skip"
  exit 0
fi
# policy-rc.d 101 keeps the package's maintainer scripts from starting the daemon at all.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
if ! timeout 420 apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; then
  echo "redis: apt-get install redis-server failed or timed out; the task-worker tests will skip"
  [ "$made_policy" = 1 ] && rm -f "$policy"
  exit 0
fi
[ "$made_policy" = 1 ] && rm -f "$policy"
stop_system_daemon
if command -v redis-server >/dev/null 2>&1; then
  echo "redis: installed $(redis-server --version 2>/dev/null)"
else
  echo "redis: the package installed but redis-server is missing; the task-worker tests will skip"
fi
exit 0
