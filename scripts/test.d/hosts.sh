#!/usr/bin/env bash
# Best-effort: make the web hosts of tests/e2e/test_{passenger,mod_wsgi}.py available.
#
# - Phusion Passenger from Debian (`passenger`) and Apache (`apache2`, `apache2-dev` for apxs).
# - A virtualenv of Debian's own /usr/bin/python3 (3.11 on bookworm), .artifacts/hosts-venv in
#   the checkout (git-ignored), with mod_wsgi built from source against it, aiohttp, and the
#   project (editable). Both hosts run the apps with it: Passenger 6.0.17's loader imports `imp`
#   (gone in 3.12), and mod_wsgi's daemons run as www-data, which can read this path but not a
#   venv under /root. A mod_wsgi wheel that pip cached from a build against another Python fails
#   inside Apache (`No module named '_socket'`), hence --no-cache-dir --no-binary mod_wsgi.
#
# Never fails the test run: where a host cannot be had, its tests skip and print why.
# Granian and Waitress come from the package index (the `hosts` dependency group).
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.artifacts/hosts-venv"

say() { echo "hosts: $*"; }

have_all() {
  command -v passenger >/dev/null 2>&1 && command -v passenger-config >/dev/null 2>&1 \
    && [ -x /usr/sbin/apache2 ] && command -v apxs >/dev/null 2>&1 \
    && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
    && [ -f /usr/include/python3.11/Python.h ]
}

if ! have_all; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "passenger, apache2 or python3-dev missing and we are not root with apt-get;" \
      "the Passenger and mod_wsgi tests will skip"
  else
    say "installing Debian's passenger apache2 apache2-dev python3-venv python3-dev" \
      "(apt-get, at most 10 minutes)"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 180 apt-get update -qq >/dev/null 2>&1; then
      say "apt-get update failed or timed out"
    fi
    # One package at a time, so that one that cannot be had does not take the others with it.
    for pkg in python3-venv python3-dev apache2 apache2-dev passenger; do
      if ! timeout 300 apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
        say "apt-get install $pkg failed or timed out"
      fi
    done
  fi
fi
# Debian starts apache2 when it installs it; the tests run their own instances.
if command -v service >/dev/null 2>&1 && pgrep -x apache2 >/dev/null 2>&1; then
  timeout 20 service apache2 stop >/dev/null 2>&1 || true
fi

if command -v passenger >/dev/null 2>&1; then
  say "passenger: $(passenger --version 2>/dev/null | head -1)"
else
  say "passenger: not installed; tests/e2e/test_passenger.py will skip"
fi

# The virtualenv of Debian's python3: mod_wsgi, aiohttp and the project.
if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
  say "hosts-venv: Debian's python3-venv is missing; the Passenger and mod_wsgi tests will skip"
  exit 0
fi
if ! [ -x /usr/sbin/apache2 ] || ! command -v apxs >/dev/null 2>&1; then
  say "mod_wsgi: apache2 or apxs (apache2-dev) missing; tests/e2e/test_mod_wsgi.py will skip"
  with_mod_wsgi=0
else
  with_mod_wsgi=1
fi
versions() {
  "$venv/bin/python" -c 'import importlib.metadata as m, sys
print(f"Python {sys.version.split()[0]}", *(f"{n} {m.version(n)}" for n in sys.argv[1:]))' "$@" \
    2>/dev/null
}
stamp="$venv/.asyncbridge-hosts"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16) mod_wsgi=$with_mod_wsgi"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
  if [ -x "$venv/bin/mod_wsgi-express" ]; then
    say "hosts-venv: $venv ($(versions aiohttp asyncbridge-loop mod_wsgi))"
  else
    say "hosts-venv: $venv ($(versions aiohttp asyncbridge-loop))"
  fi
  exit 0
fi
say "hosts-venv: building $venv (pip, at most 10 minutes)"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if ! timeout 120 /usr/bin/python3 -m venv "$venv" >/dev/null 2>&1; then
  say "hosts-venv: creating the virtualenv failed; the Passenger and mod_wsgi tests will skip"
  exit 0
fi
pip_() {
  # The machine's pip config may name local mirrors that do not exist; hide only that noise.
  timeout 480 "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir "$@" \
    2>&1 | { grep -v -e '^WARNING: Location' -e 'DEPRECATION' -e 'pip 23.1 will enforce' || true; }
  return "${PIPESTATUS[0]}"
}
# aiohttp's wheel and the project's editable one do not depend on how Python was built: uv (which
# scripts/_env.sh put in .venv) installs them from its cache in seconds, else pip does.
uv="$root/.venv/bin/uv"
if ! { [ -x "$uv" ] \
  && timeout 480 "$uv" pip install -q --python "$venv/bin/python" "aiohttp>=3.9" -e "$root"; } \
  && { ! pip_ "aiohttp>=3.9" || ! pip_ -e "$root"; }; then
  say "hosts-venv: pip install failed or timed out; the Passenger and mod_wsgi tests will skip"
  exit 0
fi
chmod -R a+rX "$(dirname "$venv")"
# mod_wsgi's wheel does: it is built here against Debian's python3 and Apache, and kept in a
# folder named after both, so that the next checkout on this machine installs it without the
# build (about half a minute). Never pip's or uv's cache (see the top of this file).
mod_wsgi_wheel() {
  local key dir
  key="$({ /usr/bin/python3 -VV; apxs -q HTTPD_VERSION; apxs -q LIBEXECDIR; } 2>&1 | sha256sum | cut -c1-16)"
  dir="/var/cache/asyncbridge/mod_wsgi-$key"
  if ! ls "$dir"/mod_wsgi-*.whl >/dev/null 2>&1; then
    # Debian's pip builds mod_wsgi with its setup.py, which needs the wheel package for a wheel.
    { [ -x "$uv" ] && timeout 120 "$uv" pip install -q --python "$venv/bin/python" wheel; } \
      || pip_ wheel || return 1
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp" \
      && timeout 480 "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-cache-dir \
        --no-deps --no-build-isolation --no-binary mod_wsgi -w "$dir.tmp" "mod_wsgi>=5" \
        >/dev/null 2>&1 \
      && rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
  fi
  timeout 120 "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-index \
    --no-deps "$dir"/mod_wsgi-*.whl >/dev/null 2>&1
}
if [ "$with_mod_wsgi" = 1 ] && ! mod_wsgi_wheel && ! pip_ --no-binary mod_wsgi "mod_wsgi>=5"; then
  say "mod_wsgi: building it failed or timed out; tests/e2e/test_mod_wsgi.py will skip"
else
  echo "$want" > "$stamp"  # not after a failed build: the next run tries again
fi
chmod -R a+rX "$(dirname "$venv")"
say "hosts-venv: $venv ($(versions aiohttp asyncbridge-loop mod_wsgi))"
exit 0
