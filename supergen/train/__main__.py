"""`python -m supergen.train`: train, freeze and export the embedded world model.

    python -m supergen.train vae    --ckpt C/vae-a --minutes 4 --lr 2e-3 --device cuda:0
    python -m supergen.train freeze --candidates C/vae-a C/vae-b --out C/vae
    python -m supergen.train vae    --ckpt C/vae --decoder-only --minutes 5 --device cuda:0
    python -m supergen.train dit    --ckpt C/dit --vae C/vae --minutes 5 --device cuda:1
    python -m supergen.train export --vae C/vae --dit C/dit --out supergen/models/world
    python -m supergen.train dit    --ckpt C/dit-i2v --vae C/vae --i2v --init C/dit --text-from C/dit  # I2V
    python -m supergen.train dit    --ckpt C/dit-small --vae C/vae --layers 3 --init C/dit --text-from C/dit \
                                    --teacher C/dit   # SRDiffusion's render model, distilled
    python -m supergen.train resume-from supergen/models/world --ckpt C   # checkpoints from a shipped folder

Every command resumes what its folder holds and stops after --minutes; `infra/train_world.sh` runs the
whole recipe within one device call, as often as needed.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m supergen.train")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vae")
    v.add_argument("--ckpt", required=True)
    v.add_argument("--minutes", type=float, default=5)
    v.add_argument("--device", default="cuda")
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--batch", type=int, default=64)
    v.add_argument("--decoder-only", action="store_true")
    v.add_argument("--frames", type=int, default=17)
    v.add_argument("--init", help="warm start from this checkpoint folder's weights when --ckpt holds none")
    v.add_argument("--eval-clips", type=int, default=32)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--steps", type=int, help="stop after this many steps in all (as well as --minutes)")
    f = sub.add_parser("freeze")
    f.add_argument("--candidates", nargs="+", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--device", default="cuda")
    f.add_argument("--clips", type=int, default=2048)
    d = sub.add_parser("dit")
    d.add_argument("--ckpt", required=True)
    d.add_argument("--vae", required=True)
    d.add_argument("--minutes", type=float, default=5)
    d.add_argument("--device", default="cuda")
    d.add_argument("--lr", type=float, default=5e-4)
    d.add_argument("--batch", type=int, default=256)
    d.add_argument("--clips", type=int, default=100_000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, help="stop after this many steps in all (as well as --minutes)")
    d.add_argument("--layers", type=int, help="a transformer of this depth (SRDiffusion's render model)")
    d.add_argument("--text-from", metavar="DIT_CKPT",
                   help="use, frozen, the text encoder of this transformer checkpoint (the render model's pair, "
                        "the image-to-video variant)")
    d.add_argument("--i2v", action="store_true", help="the image-to-video variant (conditioned on the first frame)")
    d.add_argument("--init", metavar="DIT_CKPT", help="start from this trained transformer where --ckpt holds none")
    d.add_argument("--teacher", metavar="DIT_CKPT",
                   help="learn this trained transformer's predictions instead of the flow target (distillation)")
    d.add_argument("--teacher-guidance", type=float, metavar="G",
                   help="with --teacher: distil the guided prediction at scale G too (captioned and empty prompts)")
    e = sub.add_parser("export")
    e.add_argument("--vae", required=True)
    e.add_argument("--dit", required=True)
    e.add_argument("--out", required=True)
    r = sub.add_parser("resume-from")
    r.add_argument("folder")
    r.add_argument("--ckpt", required=True)
    a = ap.parse_args(argv)

    if a.cmd == "vae":
        from . import vae

        vae.train(a.ckpt, a.minutes, a.device, lr=a.lr, batch=a.batch, frames=a.frames,
                  decoder_only=a.decoder_only, seed=a.seed, eval_clips=a.eval_clips, max_steps=a.steps, init=a.init)
    elif a.cmd == "freeze":
        from . import vae

        vae.freeze(a.candidates, a.out, a.device, clips=a.clips)
    elif a.cmd == "dit":
        from . import dit

        dit.train(a.ckpt, a.vae, a.minutes, a.device, lr=a.lr, batch=a.batch, clips=a.clips, seed=a.seed,
                  max_steps=a.steps, layers=a.layers, text_from=a.text_from, i2v=a.i2v, init=a.init,
                  teacher=a.teacher, teacher_guidance=a.teacher_guidance)
    elif a.cmd == "export":
        from .export import export

        export(a.vae, a.dit, a.out)
    else:
        from .export import resume_from

        resume_from(a.folder, a.ckpt)


if __name__ == "__main__":
    main()
