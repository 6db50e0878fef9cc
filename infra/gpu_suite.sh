#!/usr/bin/env bash
# The GPU benchmark suite, writing JSON into OUTDIR; each part fits one 10-minute device call.
#   bash infra/gpu_suite.sh OUTDIR [tiles|stage2|stage2-4k|stage2-2k|all]
#   tiles      native tile-step cost and MFU of the four architectures under torch's and cuDNN-first
#              attention order, each fused attention kernel alone on the architecture's attention shape, one per GPU in parallel (round-robin when there are fewer GPUs, the slowest apart),
#              plus CogVideoX-1.5-5B untiled at 2K and 4K (time, peak memory)
#   profile    one profiled forward per architecture (device time by operator), torch's attention order
#   hunyuan-mask  HunyuanVideo-13B's native tile forward with its text mask and without (supergen's unpadded
#              prompts drop it), time, MFU and the difference; HunyuanVideo-1.5-8.3B's native tile forward
#   stage2     CogVideoX-1.5-5B refinement at 3840x2160 then 2560x1440, 41 frames: in-process vs flow on
#              1/2/4/8 GPUs (as many as there are), per-worker memory, stage times at 4K
#   stage2-4k, stage2-2k   one size alone
# EXPORT=none (env) skips the decode/export stage timing [default: at the first size]
set -euo pipefail
OUT=${1:?output directory}
PART=${2:-all}
source "$(dirname "$0")/gpu_env.sh"
mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | wc -l)

tiles() {  # tiles [extra gpu_tile.py args]: all four architectures, spread over the GPUs
  local archs=(hunyuanvideo-t2v-13b wan2.1-t2v-14b wan2.1-t2v-1.3b cogvideox1.5-t2v-5b) pids=() args=("$@")
  for ((g = 0; g < NGPU && g < ${#archs[@]}; g++)); do
    (
      for ((a = g; a < ${#archs[@]}; a += NGPU)); do
        extra=()
        if ((${#args[@]} == 0)); then
          extra=(--forwards 3)
          [ "${archs[a]}" = cogvideox1.5-t2v-5b ] && extra+=(--untiled 2560x1440x41 3840x2160x41)
        else
          extra=("${args[@]}")
        fi
        CUDA_VISIBLE_DEVICES=$g python3 bench/gpu_tile.py --arch "${archs[a]}" "${extra[@]}" \
          --out "$OUT/tile_${archs[a]}.json" > "$OUT/tile_${archs[a]}.log" 2>&1 || echo "FAILED ${archs[a]}"
        tail -n 2 "$OUT/tile_${archs[a]}.log"
      done
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
}

CONFIGS=1:locality
((NGPU >= 2)) && CONFIGS+=,2:tiles,2:branches
((NGPU >= 4)) && CONFIGS+=,4:tiles,4:branches
((NGPU >= 8)) && CONFIGS+=,8:tiles,8:branches
stage2() {
  python3 bench/gpu_stage2.py --size "$@" --configs "$CONFIGS" --export "${EXPORT:-$1}" \
    --out "$OUT/stage2_{size}.json"
}

case "$PART" in
  tiles) tiles ;;
  profile) tiles --forwards 1 --attention torch --profile ;;
  hunyuan-mask) python3 bench/gpu_tile.py --arch hunyuanvideo-t2v-13b --forwards 3 --attention cudnn --unmasked \
                  --out "$OUT/tile_hunyuan_mask.json"
                CUDA_VISIBLE_DEVICES=$((NGPU - 1)) python3 bench/gpu_tile.py --arch hunyuanvideo1.5-t2v-8b \
                  --forwards 3 --unmasked --out "$OUT/tile_hunyuanvideo1.5.json" ;;
  stage2) stage2 3840x2160 2560x1440 ;;  # one cluster and one model build for both sizes
  stage2-4k) stage2 3840x2160 ;;
  stage2-2k) stage2 2560x1440 ;;
  all) tiles; stage2 3840x2160 2560x1440 ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
