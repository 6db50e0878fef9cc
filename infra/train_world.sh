#!/usr/bin/env bash
# Train the embedded world model on a GPU box, resuming from CKPT; each call ends inside MINUTES.
#   bash infra/train_world.sh CKPT [MINUTES]
# First call: two VAE candidates (one per GPU), the better one's encoder frozen (`freeze`), then the
# transformer (GPU 1) and the decoder (GPU 0) train side by side in that fixed latent space. Later calls
# continue the second phase. One GPU works too (both processes share it). Then, on any machine:
#   python -m supergen.train export --vae CKPT/vae --dit CKPT/dit --out supergen/models/world
set -euo pipefail
CKPT=${1:?usage: train_world.sh CKPT [MINUTES]}; MINUTES=${2:-9}
PY=${PYTHON:-python3}
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
G0=cuda:0; G1=cuda:$(( GPUS > 1 ? 1 : 0 ))
START=$(date +%s)
left() { "$PY" -c "print(max(0.5, $MINUTES - ($(date +%s) - $START) / 60 - ${1:-0}))"; }
if ! grep -q latent_stats "$CKPT/vae/state.json" 2>/dev/null; then
  A=$("$PY" -c "print($MINUTES * 0.38)")
  "$PY" -m supergen.train vae --ckpt "$CKPT/vae-a" --minutes "$A" --lr 1e-3 --batch 64 --device $G0 &
  "$PY" -m supergen.train vae --ckpt "$CKPT/vae-b" --minutes "$A" --lr 2e-3 --batch 128 --device $G1 --seed 1 &
  wait
  "$PY" -m supergen.train freeze --candidates "$CKPT/vae-a" "$CKPT/vae-b" --out "$CKPT/vae" --device $G0
  rm -f "$CKPT"/vae-?/model-*.safetensors  # their logs stay: state.json
fi
REST=$(left 0.6)  # leave time for the final evaluation and saves
"$PY" -m supergen.train vae --ckpt "$CKPT/vae" --decoder-only --minutes "$REST" --lr 5e-4 --batch 96 --device $G0 &
"$PY" -m supergen.train dit --ckpt "$CKPT/dit" --vae "$CKPT/vae" --minutes "$REST" --lr 6e-4 --batch 256 \
  --clips 80000 --device $G1 &
wait
