#!/usr/bin/env bash
# Issue 14's end-to-end GPU benchmark, one part per 10-minute device call, JSON into OUTDIR:
#   bash infra/gpu_e2e.sh OUTDIR cog-2k|cog-4k|queue|wan14b|cp|tile14b ...
#   cog-2k   CogVideoX-1.5-5B at 2560x1440x41: before, after, after on one GPU (bench/gpu_e2e.py)
#   cog-4k   the same at 3840x2160x41: before, after
#   cog-after  `after` alone at both sizes (one warm-up; 4 sketch and 4 refinement steps timed)
#   cog-2k-after  2560x1440x41: after, after on one GPU (6 sketch and 4 refinement steps timed)
#   cog-4k-after  3840x2160x41: after (4 and 4 steps timed)
#   queue    four CogVideoX-1.5-5B renders at 2560x1440x41 queued on one cluster, compiled (bench/render_queue.py)
#   wan14b   Wan2.1-14B at 2560x1440x81: before, after (VAE tiles of 512 px); wan14b-after: after alone;
#            wan14b-eager: after without --compile (no warm-up render: fits a call beside cp)
#   cp       the peer: diffusers' context-parallel direct forward of Wan2.1-14B at 2560x1440x81 (bench/cp_direct.py)
#   split14b SRDiffusion: Wan2.1-14B sketching, 1.3B rendering (switched at step 2 of 4; extrapolated to full
#            switch steps 5-30 of 50), against 14B alone, eager, one run (issue 17)
#   tile14b  the compiled native tile forward of Wan2.1-14B and its MFU (bench/gpu_tile.py --compile)
# Models are built once per machine under /tmp/supergen-bench; the compile cache lives in /tmp/supergen-compile.
set -euo pipefail
OUT=${1:?output directory}
shift
source "$(dirname "$0")/gpu_env.sh"
export SUPERGEN_COMPILE_CACHE=/tmp/supergen-compile
mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
for part in "$@"; do
  echo "== $part $(date +%T)"
  case "$part" in
    cog-2k) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 2560x1440 --out "$OUT/e2e_{arch}_{size}.json" ;;
    cog-4k) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 3840x2160 --modes before after \
              --out "$OUT/e2e_{arch}_{size}.json" ;;
    cog-after) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 2560x1440 3840x2160 --modes after \
                 --steps 4 --refine-steps 4 --out "$OUT/e2e_{arch}_{size}.json" ;;
    cog-2k-after) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 2560x1440 --modes after after-1gpu \
                    --steps 6 --refine-steps 4 --out "$OUT/e2e_{arch}_{size}.json" ;;
    cog-4k-after) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 3840x2160 --modes after \
                    --steps 4 --refine-steps 4 --out "$OUT/e2e_{arch}_{size}.json" ;;  # 4 steps: a stall weighs less
    queue) python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --build-only
           python3 bench/render_queue.py --model /tmp/supergen-bench/cogvideox1.5-t2v-5b-full --device cuda \
             --dtype bfloat16 --width 2560 --height 1440 --frames 41 --steps 3 --refine-steps 2 --compile \
             --out "$OUT/render_queue_cogvideox_2k.json" ;;
    wan14b) python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --size 2560x1440 --frames 81 --steps 2 --refine-steps 1 \
              --full-refine 45 --vae-tile 512 --modes before after --out "$OUT/e2e_{arch}_{size}.json" ;;
    wan14b-after) python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --size 2560x1440 --frames 81 --steps 2 \
                    --refine-steps 1 --full-refine 45 --vae-tile 512 --modes after --out "$OUT/e2e_{arch}_{size}.json" ;;
    wan14b-eager) python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --size 2560x1440 --frames 81 --steps 2 \
                    --refine-steps 1 --full-refine 45 --vae-tile 512 --modes after-eager --out "$OUT/e2e_{arch}_{size}.json" ;;
    split14b) python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --render-arch wan2.1-t2v-1.3b --size 2560x1440 \
                --frames 81 --steps 4 --switch-step 2 --refine-steps 2 --full-refine 45 --vae-tile 512 \
                --modes split-eager after-eager --out "$OUT/e2e_{arch}_{size}_split.json" ;;
    cp) torchrun --nproc-per-node "$NGPU" bench/cp_direct.py --arch wan2.1-t2v-14b --size 2560x1440x81 \
          --out "$OUT/cp_direct_wan2.1-t2v-14b.json" ;;
    tile14b) python3 bench/gpu_tile.py --arch wan2.1-t2v-14b --compile --forwards 2 --attention torch \
               --out "$OUT/tile_compile_wan2.1-t2v-14b.json" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
