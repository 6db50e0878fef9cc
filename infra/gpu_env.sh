# Sourced by the GPU scripts: unpack the bundle (infra/build_bundle.sh) into /tmp/site once per
# machine and set the environment every benchmark runs in.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -f /tmp/site/.supergen-bundle ] || [ .whl -nt /tmp/site/.supergen-bundle ]; then
  if [ -f .whl/site.tar.xz ]; then
    mkdir -p /tmp/site && tar xJf .whl/site.tar.xz -C /tmp/site
  else  # a bundle of bare wheels (an older infra/build_bundle.sh, or one made by hand)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  touch /tmp/site/.supergen-bundle
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
       PREFECT_HOME=$(mktemp -d) PREFECT_LOGGING_LEVEL=WARNING HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
