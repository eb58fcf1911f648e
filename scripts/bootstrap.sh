#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) idempotently.
#
# torch is installed first, pinned to the CPU build that this machine keeps on disk
# (`pip install torch==2.13.0`); the package's own requirement is a range that admits it, so
# the later editable install pulls no multi-GB CUDA build. Re-running is cheap: a stamp file
# records the hash of pyproject.toml and this script, and the install is skipped when both
# are unchanged and the environment imports.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
VENV="${UNIALIGN_VENV:-.venv}"
TORCH_PIN="${UNIALIGN_TORCH:-torch==2.13.0}"
STAMP="$VENV/.unialign-stamp"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi

# The labelling app's browser test drives Debian's chromium (never a browser download), and the
# app draws MuJoCo segments offscreen with OSMesa (libosmesa6). Install what is missing when we
# are root; otherwise say why (the browser test then skips with the same reason, and MuJoCo
# segments are drawn as plots).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ldconfig -p 2>/dev/null | grep -q libOSMesa || need+=(libosmesa6)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian's ${need[*]} for the labelling app"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
      >/tmp/unialign-bootstrap-apt.log 2>&1; then
      echo "[bootstrap] warning: apt-get could not install ${need[*]} (log: /tmp/unialign-bootstrap-apt.log)"
    fi
  else
    echo "[bootstrap] ${need[*]} missing and this is not root: skipping the install; the browser" \
      "test will be skipped and MuJoCo segments plotted (as root: apt-get install ${need[*]})"
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
  && "$VENV/bin/python" -c "import torch, unialign, transformers, gymnasium" 2>/dev/null; then
  exit 0
fi

echo "[bootstrap] installing dependencies into $VENV (first run takes a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_PIN"
"$VENV/bin/python" -m pip install --quiet -e '.[envs,dev]'
echo "$want" > "$STAMP"
echo "[bootstrap] done"
