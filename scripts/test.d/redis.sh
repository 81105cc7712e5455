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
source "$(dirname "${BASH_SOURCE[0]}")/apt.bash"
have() { command -v redis-server >/dev/null 2>&1; }
version() { redis-server --version 2>/dev/null; }
tests="task-worker tests"
apt_present redis && exit 0
apt_ready redis redis-server redis-server "$tests" || exit 0
# policy-rc.d 101 keeps the package's maintainer scripts from starting the daemon at all.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
if ! apt_install redis redis-server "$tests"; then
  [ "$made_policy" = 1 ] && rm -f "$policy"
  exit 0
fi
[ "$made_policy" = 1 ] && rm -f "$policy"
stop_system_daemon
apt_report redis redis-server "$tests"
exit 0
