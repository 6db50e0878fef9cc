#!/usr/bin/env bash
# Build .whl/: the packages a GPU box without a package index needs to run supergen's flows
# (CPython 3.12, x86_64). Resolves the full closure for that platform, drops every package the device
# image already has (infra/box_packages.txt, the image's installed packages), installs the rest into a
# site folder and packs it as one xz tarball: 33 MiB against 51 MiB of wheels, which with the source
# (the embedded model alone is 17 MiB) would pass a device call's 64 MiB.
#   infra/build_bundle.sh            # -> .whl/site.tar.xz and .whl/MANIFEST.txt
# Install there (infra/gpu_env.sh does) with:
#   mkdir -p /tmp/site && tar xJf .whl/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl; TMP=$(mktemp -d)
PY=${PYTHON:-python3}
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# What supergen adds on top of the box: its flows stack and the packages the box lacks.
REQS=("diffusers==0.42.1" "prefect==3.8.8" "prefect-dask==0.3.7" "fastapi<0.151" "sqlalchemy[asyncio]<2.1"
      "dask[distributed]==2026.7.1" "distributed==2026.7.1" "dask-cuda==26.10.0" "zarr==3.1.6"
      "numcodecs==0.16.6" "ftfy")
"$PY" -m pip download -q --dest "$TMP" --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" "${REQS[@]}"
rm -rf "$OUT"; mkdir -p "$OUT"
norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
declare -A BOX=()
while read -r p; do [ -n "$p" ] && BOX[$(norm "$p")]=1; done < infra/box_packages.txt
for w in "$TMP"/*.whl; do
  name=$(norm "$(basename "$w" | cut -d- -f1)")
  [ -n "${BOX[$name]:-}" ] || cp "$w" "$OUT/"
done
# Prefect declares these but imports them lazily; the flows never need them.
rm -f "$OUT"/apprise-* "$OUT"/docker-* "$OUT"/oauthlib-* "$OUT"/requests_oauthlib-* "$OUT"/bokeh-* "$OUT"/xyzservices-*
(cd "$OUT" && ls -l *.whl | awk '{printf "%8d KiB  %s\n", $5/1024, $9}' > MANIFEST.txt)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$TMP/site" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${PLAT[@]}" "$OUT"/*.whl
tar cJf "$OUT/site.tar.xz" -C "$TMP/site" .
rm -f "$OUT"/*.whl
SIZE=$(du -sm "$OUT" | cut -f1)
echo "$(wc -l < "$OUT/MANIFEST.txt") packages, ${SIZE} MiB in $OUT"
[ "$SIZE" -lt 40 ] || { echo "bundle too large for a device call (64 MiB with the source)" >&2; exit 1; }
rm -rf "$TMP"
