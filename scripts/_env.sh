# Sourced by scripts/test and scripts/demo: creates .venv (git-ignored) with python3 >= 3.11 and
# installs the project with the dependency groups named in $ASYNCBRIDGE_GROUPS from pyproject.toml.
# Re-installs only when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
"$py" - <<'PY' || { echo "asyncbridge needs Python >= 3.11 as python3 (or set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$py" --version)"
  "$py" -m venv .venv
fi
stamp=".venv/.asyncbridge-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) ${ASYNCBRIDGE_GROUPS}"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  echo "==> installing asyncbridge and groups: ${ASYNCBRIDGE_GROUPS}"
  _pip() {
    # The machine's pip config may name local mirrors that do not exist; hide only that noise.
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
    return "${PIPESTATUS[0]}"
  }
  args=(-e .)
  for g in ${ASYNCBRIDGE_GROUPS}; do args+=(--group "$g"); done
  # uv (from the package index, into .venv) installs the groups in seconds where pip takes a
  # minute or two; where uv cannot be had or fails, pip does it as before.
  if _pip "uv>=0.5" && .venv/bin/uv pip install -q --python .venv/bin/python "${args[@]}"; then
    :
  else
    echo "==> uv could not install the groups; pip installs them"
    _pip "pip>=25.1"  # pip >= 25.1 understands [dependency-groups]; the venv's may be older
    _pip "${args[@]}"
  fi
  echo "$want" >> "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
