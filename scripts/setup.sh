#!/usr/bin/env bash
# Creates .venv and installs mgsd with its test tools.
# On a machine without an NVIDIA GPU torch is pinned to a CPU build in the same pip command, so no
# other dependency can pull a multi-GB CUDA build; set MGSD_TORCH to choose another torch spec.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ -z "${MGSD_TORCH:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then MGSD_TORCH="torch>=2.4"; else MGSD_TORCH="torch==2.13.0"; fi
fi
.venv/bin/python -m pip install --quiet "$MGSD_TORCH" -e ".[dev${MGSD_EXTRAS:+,$MGSD_EXTRAS}]"
echo "mgsd installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
