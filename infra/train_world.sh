#!/usr/bin/env bash
# Train the embedded world model on a GPU box, resuming from CKPT; each call ends inside MINUTES.
#   bash infra/train_world.sh CKPT [MINUTES] [PHASE]
# PHASE (default: vae while no VAE is frozen, else joint):
#   vae    two VAE candidates, one per GPU; the better one is frozen (`freeze`: its latent statistics fix
#          the latent space); then joint for the rest of the call
#   joint  the transformer (GPU 1) and the decoder (GPU 0) train side by side in the frozen latent space
#   refit  retrain the whole VAE from CKPT/vae's weights, two candidates (one per GPU), and freeze the
#          better: for a latent space that proved too weak (the transformer re-encodes its data every
#          call, so it carries over, fine-tuning into the new space)
#   variants  from the trained CKPT/dit, on its frozen text encoder: the image-to-video model (CKPT/dit-i2v,
#          GPU 0) and SRDiffusion's render model, 3 of the 6 blocks (CKPT/dit-small, GPU 1); the VAE stays
# One GPU works too (both processes share it). Then, on any machine:
#   python -m supergen.train export --vae CKPT/vae --dit CKPT/dit --out supergen/models/world
set -euo pipefail
CKPT=${1:?usage: train_world.sh CKPT [MINUTES] [PHASE]}; MINUTES=${2:-9}; PHASE=${3:-auto}
PY=${PYTHON:-python3}
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
G0=cuda:0; G1=cuda:$(( GPUS > 1 ? 1 : 0 ))
START=$(date +%s)
left() { "$PY" -c "print(max(0.5, $MINUTES - ($(date +%s) - $START) / 60 - ${1:-0}))"; }
train() { "$PY" -m supergen.train "$@"; }
dit() { train dit --vae "$CKPT/vae" --lr 6e-4 --batch 512 --clips 80000 --device $G1 "$@"; }
if [ "$PHASE" = auto ]; then
  if grep -q latent_stats "$CKPT/vae/state.json" 2>/dev/null; then PHASE=joint; else PHASE=vae; fi
fi
case $PHASE in
  vae)
    A=$("$PY" -c "print($MINUTES * 0.38)")
    train vae --ckpt "$CKPT/vae-a" --minutes "$A" --lr 1e-3 --batch 64 --device $G0 &
    train vae --ckpt "$CKPT/vae-b" --minutes "$A" --lr 2e-3 --batch 128 --device $G1 --seed 1 &
    wait
    train freeze --candidates "$CKPT/vae-a" "$CKPT/vae-b" --out "$CKPT/vae" --device $G0
    rm -f "$CKPT"/vae-?/model-*.safetensors ;;  # their logs stay: state.json
  refit)
    REST=$(left 1.2)
    train vae --ckpt "$CKPT/vae-c" --init "$CKPT/vae" --minutes "$REST" --lr 2e-3 --batch 256 --device $G0 &
    train vae --ckpt "$CKPT/vae-d" --init "$CKPT/vae" --minutes "$REST" --lr 3e-3 --batch 384 --device $G1 --seed 1 &
    wait
    train freeze --candidates "$CKPT/vae-c" "$CKPT/vae-d" --out "$CKPT/vae" --device $G0
    rm -f "$CKPT"/vae-?/model-*.safetensors
    exit 0 ;;
  variants)
    REST=$(left 0.4)
    dit --ckpt "$CKPT/dit-i2v" --i2v --init "$CKPT/dit" --text-from "$CKPT/dit" --lr 3e-4 --clips 40000 \
      --device $G0 --minutes "$REST" &
    dit --ckpt "$CKPT/dit-small" --layers 3 --init "$CKPT/dit" --text-from "$CKPT/dit" --minutes "$REST" &
    wait
    exit 0 ;;
esac
REST=$(left 0.6)  # leave time for the final evaluation and saves
train vae --ckpt "$CKPT/vae" --decoder-only --minutes "$REST" --lr 5e-4 --batch 256 --device $G0 &
dit --ckpt "$CKPT/dit" --minutes "$REST" &
wait
