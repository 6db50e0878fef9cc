#!/usr/bin/env bash
# Create .venv with the CPU torch the machine provides, then supergen with every extra the tests exercise
# (s3: the moto S3 stores; cluster: the Prefect + Dask path; test). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[s3,cluster,test]'
.venv/bin/python -c "import supergen, torch, diffusers; print('supergen', supergen.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__)"
