#!/usr/bin/env bash
# Creates .venv and installs mgsd with its test tools.
# On a machine without an NVIDIA GPU torch comes from PyTorch's CPU index in the same pip command, so
# no dependency can pull PyPI's multi-GB CUDA build (pip prefers 2.13.0+cpu over 2.13.0, and a CPU
# wheel a machine offers through its own pip configuration is taken too). With a GPU: PyPI's build.
# MGSD_TORCH sets another torch spec; MGSD_TORCH_INDEX another (or, set empty, no) extra index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
GPU=0; command -v nvidia-smi >/dev/null 2>&1 && GPU=1
if [ -z "${MGSD_TORCH:-}" ]; then
  if [ "$GPU" = 1 ]; then MGSD_TORCH="torch>=2.4"; else MGSD_TORCH="torch==2.13.0"; fi
fi
INDEX=()
URL=${MGSD_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
# Only an index that answers: pip retries an unreachable one for ~10 s per package.
if [ "$GPU" = 0 ] && [ -n "$URL" ] && .venv/bin/python -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)" "$URL" 2>/dev/null; then
  INDEX=(--extra-index-url "$URL")
fi
.venv/bin/python -m pip install --quiet "${INDEX[@]}" "$MGSD_TORCH" -e ".[dev${MGSD_EXTRAS:+,$MGSD_EXTRAS}]"
echo "mgsd installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
